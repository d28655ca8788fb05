"""The federated methods the harness compares, as flags over one local step.

Every method trains with :func:`fedfr.train.local.local_round` and aggregates with
:mod:`fedfr.fl`; a method only chooses which terms of the local objective are on, whether the
server aggregates at all, and what the personalized recognizer is. One code path, no copies.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedfr.errors import lookup
from fedfr.train.local import LocalConfig


@dataclass(frozen=True)
class MethodSpec:
    """A method: what it trains and sends.

    Attributes:
        name: registry name.
        description: one line for tables and ``--help``.
        trains: False for ``pretrained`` (evaluation only).
        federated: the server aggregates the devices' updates (False: ``local``, whose devices
            keep fine-tuning their own copy and the generic model never changes).
        public: the public pack kind it mines (``None``, ``"images"``, ``"embeddings"``).
        dfc: trains the DFC converter (the personalized recognizer is backbone -> converter).
        contrastive: the contrastive regularizer is on.
        prox: FedProx's proximal term is on (weight from the harness, ``prox_mu``).
    """

    name: str
    description: str
    trains: bool = True
    federated: bool = True
    public: str | None = None
    dfc: bool = False
    contrastive: bool = False
    prox: bool = False

    def local_config(self, base: LocalConfig, *, prox_mu: float = 0.01) -> LocalConfig:
        """``base`` with this method's terms switched on or off (weights kept from ``base``).

        Weights of terms the method uses come from ``base`` (the paper's defaults unless the
        caller changed them); terms it does not use get weight 0.
        """
        return base.with_(
            public=self.public,
            dfc_weight=base.dfc_weight if self.dfc else 0.0,
            contrastive_mu=base.contrastive_mu if self.contrastive else 0.0,
            prox_mu=prox_mu if self.prox else 0.0,
        )


METHODS: dict[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("pretrained", "the generic model, no training", trains=False, federated=False),
    MethodSpec("local", "fine-tune on the device's own data only, no FL", federated=False),
    MethodSpec("fedavg", "FedAvg, CosFace on local classes"),
    MethodSpec("fedavg_public", "FedAvg + public hard negatives (FedFace-like)",
               public="images"),
    MethodSpec("fedprox", "FedProx: FedAvg + proximal term", prox=True),
    MethodSpec("fedfr", "FedFR: public hard negatives + DFC + contrastive regularizer",
               public="images", dfc=True, contrastive=True),
    MethodSpec("fedfr_emb", "FedFR with public class embeddings only (no public image)",
               public="embeddings", dfc=True, contrastive=True),
)}


def get_method(name: str) -> MethodSpec:
    """The method registered as ``name``.

    Raises:
        UnknownNameError: listing the methods.
    """
    return lookup(METHODS, name, "method")
