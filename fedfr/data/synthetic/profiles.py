"""Dataset profiles (sizes), identity pools and the evaluation protocols.

Identity pools are disjoint: public (server pretraining), devices (registered users, each on one
device), strangers (per device, unregistered), eval (nobody's) and eval_devices (nobody's,
rendered in device domains). Look-alike families span the public and device pools, so public
data holds hard negatives of device users; eval and eval_devices take whole families (up to 4
members), so their impostor pairs include hard, same-family ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from fedfr.errors import FedFRError, UnknownNameError

from . import _rng
from .config import GeneratorConfig


@dataclass(frozen=True)
class Profile:
    """Sizes of a synthetic dataset (see :data:`PROFILES` for the built-in ones).

    Built-in sizes (identities x images per identity):

    ========  ==========  ===========================  =========  =========  =============
    profile   public      devices (train + test)       strangers  eval       eval_devices
    ========  ==========  ===========================  =========  =========  =============
    tiny      100 x 8     4 devices x 5 ids x (6+4)    5 x 3      60 x 5     40 x 5
    small     1000 x 20   10 devices x 20 ids x (10+6) 20 x 4     300 x 8    200 x 8
    paper     6000 x 30   40 devices x 100 ids x (20+10) 50 x 4   2000 x 10  1000 x 10
    fair      400 x 15    10 devices x 20 ids x (10+5) 10 x 3     200 x 8    100 x 8
    ========  ==========  ===========================  =========  =========  =============

    ``fair`` renders every device in the public domain (``domain_strength`` 0).

    Images: tiny 1,560; small 28,000; paper 338,000. Impostor pairs per eval split: tiny
    6,000 (eval_devices: all same-domain impostors, ~4,000), small 150,000, paper 1,200,000;
    genuine pairs are all within-identity pairs.

    Attributes:
        name: profile name.
        public_identities, public_images: the public (pretraining) split.
        devices, device_identities: number of devices and registered identities per device.
        device_train, device_test: images per registered identity (train / held-out test).
        strangers, stranger_images: unregistered identities per device and their images.
        eval_identities, eval_images: generic evaluation split (public domain).
        eval_device_identities, eval_device_images: evaluation in device domains.
        impostor_pairs: impostor pairs per evaluation split (fewer if not that many exist).
        hard_impostor_share: at most this share of impostors are same-family pairs.
        gallery_share: share of evaluation identities enrolled in the 1:N gallery.
        gallery_images: gallery images per enrolled identity (their first ones).
        image_size: side of the square images written.
        generator: difficulty knobs (:class:`GeneratorConfig`).
    """

    name: str
    public_identities: int
    public_images: int
    devices: int
    device_identities: int
    device_train: int
    device_test: int
    strangers: int
    stranger_images: int
    eval_identities: int
    eval_images: int
    eval_device_identities: int
    eval_device_images: int
    impostor_pairs: int
    hard_impostor_share: float = 0.3
    gallery_share: float = 0.5
    gallery_images: int = 1
    image_size: int = 112
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, int) and not isinstance(v, bool) and v < 0:
                raise FedFRError(f"profile {self.name!r}: {f.name} must be >= 0, got {v}")
        if self.public_identities < 1 or self.public_images < 1:
            raise FedFRError(f"profile {self.name!r}: the public split cannot be empty")
        if self.eval_images < 2 or self.eval_device_images < 2:
            raise FedFRError(f"profile {self.name!r}: evaluation needs >= 2 images per identity")
        if not 1 <= self.gallery_images < min(self.eval_images, self.eval_device_images):
            raise FedFRError(f"profile {self.name!r}: gallery_images must leave probe images")
        if self.eval_device_identities and not self.devices:
            raise FedFRError(f"profile {self.name!r}: eval_devices needs devices (domains)")
        if self.image_size < 16:
            raise FedFRError(f"profile {self.name!r}: image_size must be >= 16")

    @property
    def total_images(self) -> int:
        """Number of images the profile writes."""
        dev = self.device_identities * (self.device_train + self.device_test)
        dev += self.strangers * self.stranger_images
        return (
            self.public_identities * self.public_images
            + self.devices * dev
            + self.eval_identities * self.eval_images
            + self.eval_device_identities * self.eval_device_images
        )

    def with_(self, **changes: object) -> Profile:
        """A copy with some attributes changed."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        """JSON-serializable form."""
        d = asdict(self)
        d["generator"] = self.generator.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Profile:
        """Inverse of :meth:`to_dict`."""
        kw = dict(d)
        kw["generator"] = GeneratorConfig.from_dict(dict(kw.get("generator", {})))  # type: ignore[arg-type]
        return cls(**kw)  # type: ignore[arg-type]


PROFILES: dict[str, Profile] = {
    "tiny": Profile("tiny", 100, 8, 4, 5, 6, 4, 5, 3, 60, 5, 40, 5, impostor_pairs=6_000),
    "small": Profile(
        "small", 1000, 20, 10, 20, 10, 6, 20, 4, 300, 8, 200, 8, impostor_pairs=150_000
    ),
    "paper": Profile(
        "paper", 6000, 30, 40, 100, 20, 10, 50, 4, 2000, 10, 1000, 10, impostor_pairs=1_200_000
    ),
    # The fair protocol at CPU scale (docs/RESULTS.md): the paper's ratios — more federated
    # identities per public one than `small`, more images per federated identity, every
    # device in the public domain (domain_strength 0, as the paper's data; `fedfr simulate
    # --domain-strength 1` renders the device-domain variant).
    "fair": Profile(
        "fair", 400, 15, 10, 20, 10, 5, 10, 3, 200, 8, 100, 8, impostor_pairs=100_000,
        generator=GeneratorConfig(domain_strength=0.0),
    ),
}


def available_profiles() -> tuple[str, ...]:
    """Names of the built-in profiles."""
    return tuple(PROFILES)


def get_profile(name: str | Profile) -> Profile:
    """The built-in profile ``name`` (a :class:`Profile` is returned as is)."""
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise UnknownNameError(
            f"unknown synthetic profile {name!r}; choices: {', '.join(available_profiles())}"
        ) from None


@dataclass(frozen=True)
class Pools:
    """Global identity ids of each split (sorted within each group)."""

    public: np.ndarray
    devices: np.ndarray  # (D, K)
    strangers: np.ndarray  # (D, S)
    eval: np.ndarray
    eval_devices: np.ndarray
    eval_devices_domain: np.ndarray  # device index whose domain renders each identity


def allocate(profile: Profile, seed: int) -> Pools:
    """Assign disjoint identity ids to the splits (deterministic from ``seed``)."""
    fs = int(profile.generator.family_size)
    m = min(fs, 4)
    e, ed = profile.eval_identities, profile.eval_device_identities
    d, k, s = profile.devices, profile.device_identities, profile.strangers
    general = profile.public_identities + d * k + d * s
    fe, fd = -(-e // m), -(-ed // m)
    n_fam = max(fe + fd, -(-(e + ed + general) // fs))
    while n_fam * fs - (e + ed) < general:
        n_fam += 1
    fam = _rng.permutation(seed, _rng.TAG_SPLITS, n_fam)
    members = np.arange(m)

    def whole(families: np.ndarray, count: int) -> np.ndarray:
        return (families[:, None] * fs + members[None, :]).reshape(-1)[:count]

    ev = whole(fam[:fe], e)
    evd = whole(fam[fe : fe + fd], ed)
    evd_dom = (np.arange(len(evd)) // m) % max(d, 1)
    used = np.zeros(n_fam * fs, bool)
    used[ev] = used[evd] = True
    rest = np.nonzero(~used)[0]
    rest = rest[_rng.permutation(seed, _rng.TAG_SPLITS + 100, len(rest))][:general]
    p = profile.public_identities
    pub = np.sort(rest[:p])
    dev = np.sort(rest[p : p + d * k].reshape(d, k), axis=1)
    strg = np.sort(rest[p + d * k :].reshape(d, s), axis=1)
    return Pools(pub, dev, strg, np.sort(ev), evd, evd_dom)


def genuine_pairs(labels: np.ndarray) -> np.ndarray:
    """All within-identity pairs ``(i, j)``, ``i < j``; ``labels`` grouped (contiguous runs)."""
    out = []
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    ends = np.r_[starts[1:], len(labels)]
    for n in np.unique(ends - starts):
        a, b = np.triu_indices(int(n), 1)
        base = starts[(ends - starts) == n][:, None]
        out.append(np.stack([(base + a).reshape(-1), (base + b).reshape(-1)], 1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def impostor_pairs(
    labels: np.ndarray,
    families: np.ndarray,
    domains: np.ndarray,
    target: int,
    hard_share: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """Impostor pairs within the same domain: same-family ("hard") ones first, up to
    ``hard_share * target``, then other ones at random (all of them if there are few).

    Returns ``(pairs (M, 2) with i < j, number of hard pairs)``.
    """
    n = len(labels)
    hard_list, pools = [], []
    for dom in np.unique(domains):
        idx = np.flatnonzero(domains == dom)
        pools.append(idx)
        for f in np.unique(families[idx]):
            g = idx[families[idx] == f]
            a, b = np.triu_indices(len(g), 1)
            keep = labels[g[a]] != labels[g[b]]
            hard_list.append(np.stack([g[a][keep], g[b][keep]], 1))
    hard = np.concatenate(hard_list) if hard_list else np.zeros((0, 2), np.int64)
    cap = int(hard_share * target)
    if len(hard) > cap:
        hard = hard[np.sort(rng.choice(len(hard), cap, replace=False))]
    want = target - len(hard)
    sizes = np.array([len(p) for p in pools], np.int64)
    available = int((sizes * (sizes - 1) // 2).sum())
    if available <= 4 * want:  # enumerate all and subsample
        cand = []
        for g in pools:
            a, b = np.triu_indices(len(g), 1)
            keep = families[g[a]] != families[g[b]]
            cand.append(np.stack([g[a][keep], g[b][keep]], 1))
        rand = np.concatenate(cand)
        if len(rand) > want:
            rand = rand[np.sort(rng.choice(len(rand), want, replace=False))]
    else:  # rejection sampling within domains, deduplicated
        weights = (sizes * (sizes - 1)).astype(np.float64)
        weights /= weights.sum()
        flat = np.concatenate(pools)
        offs = np.r_[0, np.cumsum(sizes)[:-1]]
        got = np.zeros(0, np.int64)
        while len(got) < want:
            m = int((want - len(got)) * 1.3) + 64
            g = rng.choice(len(pools), m, p=weights)
            i = flat[offs[g] + (rng.random(m) * sizes[g]).astype(np.int64)]
            j = flat[offs[g] + (rng.random(m) * sizes[g]).astype(np.int64)]
            ok = families[i] != families[j]
            lo, hi = np.minimum(i, j)[ok], np.maximum(i, j)[ok]
            got = np.unique(np.concatenate([got, lo * n + hi]))
            if len(got) > want:
                got = np.sort(rng.choice(got, want, replace=False))
        rand = np.stack([got // n, got % n], 1)
    pairs = np.concatenate([hard, rand]).astype(np.int64)
    return pairs, len(hard)


def eval_protocol(
    labels: np.ndarray,
    families: np.ndarray,
    domains: np.ndarray,
    profile: Profile,
    rng: np.random.Generator,
) -> dict[str, np.ndarray | int]:
    """Verification pairs and the 1:N gallery/probe split of one evaluation set.

    Images must be grouped by identity (label), in image-index order within an identity.
    """
    gen = genuine_pairs(labels)
    imp, n_hard = impostor_pairs(
        labels, families, domains, profile.impostor_pairs, profile.hard_impostor_share, rng
    )
    pairs = np.concatenate([gen, imp])
    issame = np.r_[np.ones(len(gen), np.int32), np.zeros(len(imp), np.int32)]
    order = rng.permutation(len(pairs))
    ids = np.unique(labels)
    n_gal = round(profile.gallery_share * len(ids))
    enrolled = np.zeros(int(labels.max()) + 1 if len(labels) else 0, bool)
    enrolled[rng.choice(ids, n_gal, replace=False)] = True
    rank = np.arange(len(labels)) - np.searchsorted(labels, labels)  # image rank in identity
    gallery = np.flatnonzero(enrolled[labels] & (rank < profile.gallery_images))
    probes = np.flatnonzero(~(enrolled[labels] & (rank < profile.gallery_images)))
    return {
        "pairs": pairs[order].astype(np.int32),
        "issame": issame[order],
        "gallery": gallery.astype(np.int32),
        "probes": probes.astype(np.int32),
        "num_genuine": len(gen),
        "num_impostor": len(imp),
        "num_hard_impostor": n_hard,
    }
