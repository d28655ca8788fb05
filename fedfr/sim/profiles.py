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

``fair`` is the fair protocol at CPU scale (docs/RESULTS.md): every public image is a
candidate hard negative (the pack holds all 15 images of each public identity), cross-device
impostors, and per-method selection of lr and the BatchNorm policy on a validation data set
(``--select``). Two scalings to fit 2 CPU cores in an hour, both the same for every method:
local epochs 3, 2, 2 (the paper's schedule 10, 8, 6, 4 shortened) with batch 32 (a device
holds 200 images: batch 256 would be one step per epoch); and at most 200 hard negatives per
device — as many as its own images, the most similar ones — because at cosine 0.4 this
128-d model would mine 4,300-4,600 of the 6,000 public images per device (measured on seed 0),
16 times the device's data. The centralized control's cap is the devices' caps together.
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
        grid: ``{LocalConfig field: values}`` searched per method by ``--select`` on the
            validation data set (:mod:`fedfr.sim.protocol`).
        selection_seed: the seed of the validation data set (never a test seed).
        selection_rounds: rounds per grid point (``None``: the run's rounds).
        cross_device_impostors: personalized evaluation against every federated identity
            (each device's test images are impostors on every other device).
        personalized_every_round: evaluate the devices' recognizers after every round
            (``False``: after the last round only; the generic model is evaluated every
            round either way).
    """

    name: str
    arch: str
    pretrain_epochs: int
    rounds: int
    pack_per_class: int | None
    local: LocalConfig = field(default_factory=LocalConfig)
    prox_mu: float = 0.01
    grid: dict = field(default_factory=dict)
    selection_seed: int = 1000
    selection_rounds: int | None = None
    cross_device_impostors: bool = False
    personalized_every_round: bool = True


SIM_PROFILES: dict[str, SimProfile] = {p.name: p for p in (
    SimProfile("tiny", "mbf_tiny", pretrain_epochs=10, rounds=2, pack_per_class=4,
               local=LocalConfig(batch_size=32, lr=0.01, max_hard_negatives=64),
               grid={"lr": (0.003, 0.01)}, selection_rounds=1, cross_device_impostors=True),
    SimProfile("small", "mbf_tiny", pretrain_epochs=10, rounds=3, pack_per_class=4,
               local=LocalConfig(batch_size=32, lr=0.01, max_hard_negatives=200)),
    SimProfile("paper", "mbf", pretrain_epochs=20, rounds=10, pack_per_class=5,
               local=LocalConfig(max_hard_negatives=2000),
               grid={"lr": (0.001, 0.01), "bn_policy": ("train", "frozen")},
               selection_rounds=3, cross_device_impostors=True),
    SimProfile("fair", "mbf_tiny", pretrain_epochs=20, rounds=3, pack_per_class=None,
               local=LocalConfig(batch_size=32, lr=0.01, epochs_start=3, epochs_step=1,
                                 epochs_min=2, max_hard_negatives=200),
               grid={"lr": (0.001, 0.01), "bn_policy": ("train", "frozen")},
               selection_rounds=1, cross_device_impostors=True,
               personalized_every_round=False),
)}


def get_sim_profile(name: str) -> SimProfile:
    """The harness settings of a data profile.

    Raises:
        UnknownNameError: listing the profiles.
    """
    return lookup(SIM_PROFILES, name, "profile")
