"""``fedfr simulate``: the federated protocol in one process, every method on the same data.

Per seed: the synthetic data set of the profile (generated once, reused when present), the
generic model pretrained on its public split (cached likewise) and its public pack; then per
method, ``rounds`` rounds in which every device runs :func:`fedfr.train.local.local_round`
(devices in sequence: one process, the CPU's threads go to each device's step) and the server
folds the updates with :class:`fedfr.fl.RoundAggregate`. After every round the generic model
and every device's personalized recognizer are evaluated (:mod:`fedfr.evaluation`).

A seed changes everything random: the data set (identities, device domains), the pretrained
model's initialization and the local steps' batch order. Each (seed, method) result is written
to ``OUT/seeds/seed-<s>/<method>.json`` as soon as it finishes and reused by a rerun with the
same settings, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fedfr.fl import GlobalModel, RoundAggregate, backbone_arrays
from fedfr.io import write_json_atomic
from fedfr.sim.profiles import SimProfile, get_sim_profile
from fedfr.train.local import (
    LocalConfig,
    PrivateState,
    PublicPack,
    generic_embedder,
    local_round,
    personalized_embedder,
)
from fedfr.train.methods import MethodSpec, get_method

log = logging.getLogger(__name__)

RESULTS_FORMAT = "fedfr-simulation"
RESULTS_VERSION = 1


@dataclass(frozen=True)
class SimConfig:
    """One harness run.

    Attributes:
        profile: data profile name (``tiny``, ``small``, ``paper``).
        methods: method names (:data:`fedfr.train.methods.METHODS`), in table order.
        out: output folder.
        rounds: rounds per method (default: the profile's).
        seeds: one full repetition per seed (data, pretraining, training).
        data: an existing synthetic data set folder to use for every seed instead of
            generating one per seed.
        pretrained: an existing checkpoint to use for every seed instead of pretraining.
        pretrain_epochs: override the profile's pretraining epochs.
        local: overrides of the profile's local configuration (``{"lr": 0.01}``...).
        prox_mu: override FedProx's weight.
        device: ``auto``, ``cpu``, ``cuda``...
        progress: progress bars and per-round lines on stderr.
    """

    profile: str
    methods: tuple[str, ...]
    out: Path
    rounds: int | None = None
    seeds: tuple[int, ...] = (0,)
    data: Path | None = None
    pretrained: Path | None = None
    pretrain_epochs: int | None = None
    local: dict = field(default_factory=dict)
    prox_mu: float | None = None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        get_sim_profile(self.profile)
        for m in self.methods:
            get_method(m)
        if not self.methods:
            raise ValueError("no method to run")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"a method is listed twice: {self.methods}")
        if self.rounds is not None and self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one: {self.seeds}")

    @property
    def sim_profile(self) -> SimProfile:
        return get_sim_profile(self.profile)

    @property
    def num_rounds(self) -> int:
        return self.rounds or self.sim_profile.rounds

    def local_config(self) -> LocalConfig:
        return self.sim_profile.local.with_(device=self.device, **self.local)

    def settings(self) -> dict:
        """Everything that determines a (seed, method) result (for reuse checks)."""
        sp = self.sim_profile
        return {
            "profile": self.profile,
            "arch": sp.arch,
            "rounds": self.num_rounds,
            "pretrain_epochs": self.pretrain_epochs or sp.pretrain_epochs,
            "pack_per_class": sp.pack_per_class,
            "local": _jsonable_config(self.local_config()),
            "prox_mu": self.prox_mu if self.prox_mu is not None else sp.prox_mu,
            "data": None if self.data is None else str(self.data),
            "pretrained": None if self.pretrained is None else str(self.pretrained),
        }


def _jsonable_config(cfg: LocalConfig) -> dict:
    d = asdict(cfg)
    d.pop("device", None)
    return d


# --------------------------------------------------------------------------- one seed


@dataclass(frozen=True, eq=False)
class SeedSetup:
    """What every method of one seed shares."""

    seed: int
    dataset: object  # SyntheticDataset, decoded in memory
    model: GlobalModel
    pack: PublicPack
    baseline: dict  # evaluation of the pretrained model (round 0 of every method)
    baseline_curves: dict


def prepare_seed(cfg: SimConfig, seed: int) -> SeedSetup:
    """Data set, pretrained model, public pack and the pretrained model's evaluation."""
    from fedfr.data.manifest import SyntheticDataset, is_synthetic_dataset
    from fedfr.data.synthetic import synthesize
    from fedfr.heads import MARGIN_PRESETS
    from fedfr.train.pretrain import PretrainConfig, pretrain

    sp = cfg.sim_profile
    data_dir = cfg.data or cfg.out / "data" / f"{cfg.profile}-seed{seed}"
    if cfg.data is None and not is_synthetic_dataset(data_dir):
        synthesize(cfg.profile, data_dir, seed=seed, progress=cfg.progress, overwrite=True)
    ds = SyntheticDataset.load(data_dir).in_memory()
    epochs = cfg.pretrain_epochs or sp.pretrain_epochs
    ckpt = cfg.pretrained
    if ckpt is None:
        ckpt = cfg.out / "pretrained" / f"{cfg.profile}-seed{seed}-{sp.arch}-e{epochs}.safetensors"
        if not ckpt.exists():
            pcfg = PretrainConfig(arch=sp.arch, epochs=epochs, margin=MARGIN_PRESETS["cosface"],
                                  batch_size=128, lr=0.1, seed=seed, device=cfg.device)
            pretrain(ds.public.load(), np.asarray(ds.public.labels, np.int64), pcfg, ckpt,
                     progress=cfg.progress, metadata={"data": str(data_dir)})
    model = GlobalModel.load(ckpt).with_(version="pretrained")
    if model.public_embeddings is None:
        raise ValueError(f"{ckpt}: no public class embeddings (head.public_class_embeddings); "
                         f"pretrain it with fedfr pretrain")
    pack = PublicPack.from_images(ds.public.load(), ds.public.labels,
                                  per_class=sp.pack_per_class, seed=seed)
    baseline, curves = _evaluate(ds, model, None, cfg)
    return SeedSetup(seed, ds, model, pack, baseline, curves)


def _evaluate(ds, model: GlobalModel, privates: dict[str, PrivateState] | None,
              cfg: SimConfig, generic: dict | None = None) -> tuple[dict, dict]:
    """Generic metrics of ``model`` (unless given) and personalized metrics of the devices'
    recognizers (the generic model on devices without private state)."""
    from fedfr.evaluation import evaluate_dataset, summarize
    from fedfr.train.runtime import resolve_device

    dev = resolve_device(cfg.device)
    embed = generic_embedder(model, device=dev)

    def device_embedder(d):
        p = (privates or {}).get(d.name)
        return embed if p is None else personalized_embedder(model, p, device=dev)

    report, curves = evaluate_dataset(embed, ds, device_embedders=device_embedder)
    row = {
        "generic": summarize(report["generic"]),
        "generic_device_domains": summarize(report["generic_device_domains"]),
        "personalized": report["devices"]["mean"],
    }
    if generic is not None:  # the generic model did not change (no FL): keep its numbers
        row["generic"] = generic["generic"]
        row["generic_device_domains"] = generic["generic_device_domains"]
    return row, curves


def _device_seed(seed: int, method: str, round_index: int, device_index: int) -> int:
    key = f"{seed}:{method}:{round_index}:{device_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def run_method(cfg: SimConfig, setup: SeedSetup, method: MethodSpec) -> dict:
    """Every round of one method on one seed; returns its history and final metrics."""
    sp = cfg.sim_profile
    history = [{"round": 0, **setup.baseline, "seconds": 0.0}]
    curves = setup.baseline_curves
    result = {"method": method.name, "seed": setup.seed, "history": history,
              "bytes": {"download_per_device_round": 0.0, "upload_per_device_round": 0.0,
                        "public_pack": 0}}
    if not method.trains:
        return _finish(result, curves)
    prox_mu = cfg.prox_mu if cfg.prox_mu is not None else sp.prox_mu
    base_cfg = method.local_config(cfg.local_config(), prox_mu=prox_mu)
    model = setup.model
    privates: dict[str, PrivateState] = {}
    devices = setup.dataset.devices
    down = up = 0
    n_rounds = cfg.num_rounds
    for r in range(n_rounds):
        t0 = time.perf_counter()
        agg = RoundAggregate(model.public_embeddings)
        stats: list[dict[str, float]] = []
        bar = tqdm(devices, desc=f"seed {setup.seed} {method.name} round {r + 1}/{n_rounds}",
                   disable=not cfg.progress, unit="device", leave=False)
        for i, d in enumerate(bar):
            prev = privates.get(d.name)
            start = model
            if not method.federated and prev is not None:  # `local`: its own model goes on
                start = model.with_(backbone=prev.local_backbone)
            res = local_round(start, d.train.load(), np.asarray(d.train.labels), base_cfg.with_(
                seed=_device_seed(setup.seed, method.name, r, i)), round_index=r, private=prev,
                pack=setup.pack if method.public == "images" else None)
            privates[d.name] = res.private
            stats.append(res.metrics)
            if method.federated:
                agg.add(res.update)
                down += start.backbone_nbytes + (
                    start.public_embeddings.nbytes if method.public else 0)
                up += res.update.nbytes
        if method.federated:
            arrays, public = agg.result()
            model = model.with_(backbone=backbone_arrays(arrays), public_embeddings=public,
                                version=f"{method.name}-r{r + 1}")
        train_s = time.perf_counter() - t0
        row, curves = _evaluate(setup.dataset, model, privates, cfg,
                                generic=None if method.federated else setup.baseline)
        keys = sorted({k for s in stats for k in s})
        row["train"] = {k: float(np.mean([s.get(k, 0.0) for s in stats])) for k in keys}
        row["round"] = r + 1
        row["seconds"] = train_s
        history.append(row)
        if cfg.progress:
            g, p = row["generic"], row["personalized"]
            tqdm.write(f"[seed {setup.seed}] {method.name:13s} round {r + 1}/{n_rounds}: "
                       f"generic TAR@1e-3 {_fmt(g.get('tar@far=1e-03'))} rank-1 "
                       f"{_fmt(g.get('rank1'))} | personalized TAR@1e-2 "
                       f"{_fmt(p.get('tar@far=1e-02'))} DIR@1e-1 "
                       f"{_fmt(p.get('dir@fpir=1e-01'))} | loss {row['train'].get('loss', 0):.3f}"
                       f" ({train_s:.0f}s)")
    if method.federated:
        per = n_rounds * len(devices)
        result["bytes"] = {
            "download_per_device_round": down / per,
            "upload_per_device_round": up / per,
            "public_pack": setup.pack.nbytes if method.public == "images" else 0,
        }
    return _finish(result, curves)


def _finish(result: dict, curves: dict) -> dict:
    last = result["history"][-1]
    result["generic"] = last["generic"]
    result["generic_device_domains"] = last["generic_device_domains"]
    result["personalized"] = last["personalized"]
    result["curves"] = curves  # (scores, issame) per split; saved beside, not in the JSON
    return result


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4f}"


# --------------------------------------------------------------------------- the run


def simulate(cfg: SimConfig) -> dict:
    """Run every (seed, method), then write ``results.json``, ``results.md`` and plots.

    Returns the results object written to ``results.json`` (see :mod:`fedfr.sim.report`).
    """
    from fedfr.sim.report import combine, write_report

    cfg.out.mkdir(parents=True, exist_ok=True)
    settings = cfg.settings()
    t0 = time.perf_counter()
    per_seed: dict[int, dict[str, dict]] = {}
    for seed in cfg.seeds:
        seed_dir = cfg.out / "seeds" / f"seed-{seed}"
        done = {m: _load_done(seed_dir / f"{m}.json", settings) for m in cfg.methods}
        setup = None
        per_seed[seed] = {}
        for name in cfg.methods:
            if done[name] is not None:
                log.info("seed %d %s: reusing %s", seed, name, seed_dir / f"{name}.json")
                per_seed[seed][name] = done[name]
                continue
            if setup is None:
                setup = prepare_seed(cfg, seed)
            t1 = time.perf_counter()
            res = run_method(cfg, setup, get_method(name))
            res["seconds"] = time.perf_counter() - t1
            res["settings"] = settings
            _save_curves(seed_dir / f"{name}-curves.npz", res.pop("curves"))
            write_json_atomic(seed_dir / f"{name}.json", res)
            per_seed[seed][name] = res
    results = combine(cfg, per_seed)
    results["seconds"] = time.perf_counter() - t0
    results["machine"] = _machine()
    write_report(cfg.out, results, per_seed)
    return results


def _load_done(path: Path, settings: dict) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            res = json.load(f)
    except (OSError, ValueError):
        return None
    return res if res.get("settings") == json.loads(json.dumps(settings)) else None


def _machine() -> dict:
    import os

    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _save_curves(path: Path, curves: dict) -> None:
    from fedfr.io import atomic_path

    arrays = {}
    for name, (scores, issame) in curves.items():
        arrays[f"{name}.scores"] = np.asarray(scores, np.float32)
        arrays[f"{name}.issame"] = np.asarray(issame, bool)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def load_curves(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The ROC inputs saved for one (seed, method): ``{split: (scores, issame)}``."""
    with np.load(path) as z:
        names = sorted({k.rsplit(".", 1)[0] for k in z.files})
        return {n: (z[f"{n}.scores"], z[f"{n}.issame"]) for n in names}
