"""Harness settings per data profile: backbone, pretraining, rounds, and the local step's
scale adaptations.

The local step's defaults (:class:`~fedfr.train.local.LocalConfig`) are the paper's: batch
256, lr 0.001, on clients holding thousands of images. The CPU profiles' devices hold 30
(``tiny``) or 200 (``small``) images, where batch 256 would be one or two SGD steps per epoch
and lr 0.001 would leave the model where it started; they use batch 32 and lr 0.01, which
gives ~60-100 steps per round. These were fixed before any result was seen and are the same
for every method. ``paper`` keeps the paper's optimizer values (a GPU profile); its public
pack holds 5 images of each of the 6,000 public identities (30,000 images, embedded by every
device every round) and at most 2,000 hard negatives per device (as many as its own images).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedfr.errors import lookup
from fedfr.train.local import LocalConfig


@dataclass(frozen=True)
class SimProfile:
    """How the harness runs on one data profile.

    Attributes:
        name: the data profile (:data:`fedfr.data.synthetic.PROFILES`).
        arch: backbone pretrained on the public split and federated.
        pretrain_epochs: pretraining epochs (batch 128, lr 0.1, CosFace s=64 m=0.4).
        rounds: default number of rounds.
        pack_per_class: public images per class in the public pack (``None``: all).
        local: the local step's configuration before a method's flags are applied.
        prox_mu: FedProx's proximal weight.
    """

    name: str
    arch: str
    pretrain_epochs: int
    rounds: int
    pack_per_class: int | None
    local: LocalConfig = field(default_factory=LocalConfig)
    prox_mu: float = 0.01


SIM_PROFILES: dict[str, SimProfile] = {p.name: p for p in (
    SimProfile("tiny", "mbf_tiny", pretrain_epochs=10, rounds=2, pack_per_class=4,
               local=LocalConfig(batch_size=32, lr=0.01, max_hard_negatives=64)),
    SimProfile("small", "mbf_tiny", pretrain_epochs=10, rounds=3, pack_per_class=4,
               local=LocalConfig(batch_size=32, lr=0.01, max_hard_negatives=200)),
    SimProfile("paper", "mbf", pretrain_epochs=20, rounds=10, pack_per_class=5,
               local=LocalConfig(max_hard_negatives=2000)),
)}


def get_sim_profile(name: str) -> SimProfile:
    """The harness settings of a data profile.

    Raises:
        UnknownNameError: listing the profiles.
    """
    return lookup(SIM_PROFILES, name, "profile")
