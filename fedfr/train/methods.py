"""The federated methods the harness compares, as flags over one local step.

Every method trains with :func:`fedfr.train.local.local_round` and aggregates with
:mod:`fedfr.fl`; a method only chooses which terms of the local objective are on, whether the
server aggregates at all, and what the personalized recognizer is. One code path, no copies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

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
        control: a harness control, not a federated method: ``"public"`` (the generic model
            trained further on public images, as many as the devices hold together, for the
            same rounds and epochs: does FL beat just training longer?) or ``"pooled"`` (one
            learner on the pooled device data with public negatives: the centralized upper
            bound). Controls run the same local step on one pseudo-device whose update is
            the new generic model; they have no personalized recognizer.
    """

    name: str
    description: str
    trains: bool = True
    federated: bool = True
    public: str | None = None
    dfc: bool = False
    contrastive: bool = False
    prox: bool = False
    control: str | None = None

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
    MethodSpec("public_more", "control: pretraining continued on public images, same steps",
               control="public"),
    MethodSpec("centralized", "control: the pooled device data + public negatives, one learner",
               public="images", control="pooled"),
)}

#: The federated methods (what a round of the aggregator may run).
FEDERATED_METHODS = tuple(m for m, s in METHODS.items()
                          if s.trains and s.federated and s.control is None)


def get_method(name: str) -> MethodSpec:
    """The method registered as ``name``.

    Raises:
        UnknownNameError: listing the methods.
    """
    return lookup(METHODS, name, "method")


#: The product's default round: the federated method and local settings with the best score
#: on the fair protocol's validation data set (docs/RESULTS.md, "The fair protocol": FedAvg with
#: public hard negatives at lr 0.01 with BatchNorm statistics trained, 0.442, ahead of FedFR's
#: best 0.433); the demo starts its rounds with it. Fields it does not name come from the data
#: profile's local configuration (epochs, batch, hard-negative cap).
PRODUCT_ROUND = {"method": "fedavg_public", "local": {"lr": 0.01, "bn_policy": "train"}}

#: Per-architecture changes to :data:`PRODUCT_ROUND`. ``dlib_r34`` (pretrained elsewhere, no
#: BatchNorm): one local round of the fair profile's first device (docs/RESULTS.md, "A real
#: pretrained recognizer") collapses every embedding to one point at lr 1e-2 and 1e-3 (all
#: scores 1.0), and trains at 1e-4 (the device's test AUC 0.996).
PRODUCT_ROUND_BY_ARCH = {"dlib_r34": {"lr": 1e-4}}


def product_round_config(base: LocalConfig, arch: str | None = None) -> dict:
    """The round ``config`` JSON of :data:`PRODUCT_ROUND` over ``base``'s settable fields (with
    :data:`PRODUCT_ROUND_BY_ARCH`'s changes for the model's ``arch``)."""
    from dataclasses import asdict

    d = {**{k: v for k, v in asdict(base).items() if k in ROUND_SETTABLE},
         **PRODUCT_ROUND["local"], **PRODUCT_ROUND_BY_ARCH.get(arch or "", {})}
    return {"method": PRODUCT_ROUND["method"], "local": d}


#: LocalConfig fields a round's config may set: the scalars, except ``device`` and ``seed``
#: (each device's own) and ``public``/``prox_mu`` (set by the method and ``prox_mu``).
ROUND_SETTABLE = tuple(f.name for f in fields(LocalConfig)
                       if f.name not in ("device", "seed", "margin", "dfc", "public", "prox_mu"))
ROUND_CONFIG_KEYS = ("method", "local", "prox_mu")


def round_config(config: Mapping, *, base: LocalConfig | None = None) -> LocalConfig:
    """The local step's configuration of a federated round from the round's JSON ``config``.

    ``config`` (what ``aggregator admin start-round --config`` sends to every device)::

        {"method": "fedfr",                  # a federated method of METHODS (default fedfr)
         "local": {"lr": 0.01, "batch_size": 32, ...},   # LocalConfig fields (ROUND_SETTABLE)
         "prox_mu": 0.01}                    # FedProx's weight (fedprox only)

    Every device of the round derives the same :class:`LocalConfig` from it, so the simulator
    (:mod:`fedfr.sim`) and the device SDK train with the same objective.

    Raises:
        ValueError: an unknown key, a non-federated or unknown method, a value of the wrong
            type or out of range (the message names it).
    """
    from fedfr.errors import UnknownNameError

    if not isinstance(config, Mapping):
        raise ValueError(f"a round config must be a JSON object, got {type(config).__name__}")
    extra = sorted(set(config) - set(ROUND_CONFIG_KEYS))
    if extra:
        raise ValueError(f"unknown round config key(s) {extra}; allowed: {list(ROUND_CONFIG_KEYS)}")
    name = config.get("method", "fedfr")
    try:
        method = get_method(name) if isinstance(name, str) else None
    except UnknownNameError as e:
        raise ValueError(str(e)) from None
    if method is None or method.name not in FEDERATED_METHODS:
        raise ValueError(f"round config 'method' must be a federated method "
                         f"({list(FEDERATED_METHODS)}), got {name!r}")
    local = config.get("local", {})
    if not isinstance(local, Mapping):
        raise ValueError("round config 'local' must be an object of LocalConfig fields")
    base = base or LocalConfig()
    changes: dict = {}
    types = {f.name: f.type for f in fields(LocalConfig)}
    for k, v in local.items():
        if k not in ROUND_SETTABLE:
            raise ValueError(f"round config 'local.{k}' is not settable; allowed: "
                             f"{list(ROUND_SETTABLE)}")
        want = str(types[k])
        ok = (isinstance(v, bool) if want == "bool" else
              (isinstance(v, int) and not isinstance(v, bool)) if want == "int" else
              (v is None or (isinstance(v, int) and not isinstance(v, bool)))
              if want == "int | None" else
              (isinstance(v, int | float) and not isinstance(v, bool)) if want == "float" else
              isinstance(v, str))
        if not ok:
            raise ValueError(f"round config 'local.{k}' must be {want}, got {v!r}")
        changes[k] = float(v) if want == "float" else v
    prox = config.get("prox_mu", 0.01)
    if isinstance(prox, bool) or not isinstance(prox, int | float) or not prox >= 0:
        raise ValueError(f"round config 'prox_mu' must be a number >= 0, got {prox!r}")
    try:
        return method.local_config(base.with_(**changes), prox_mu=float(prox))
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid round config: {e}") from None
