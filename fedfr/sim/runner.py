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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fedfr.fl import GlobalModel, RoundAggregate, backbone_arrays
from fedfr.io import write_json_atomic
from fedfr.sim.profiles import SimProfile, get_sim_profile
from fedfr.sim.protocol import (
    choose,
    control_data,
    grid_points,
    point_key,
    selection_score,
    with_cross_device_impostors,
)
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
        domain_strength: render the devices' camera domains this far from the public
            domain (default: the data profile's; ``fair`` has 0, the paper's setting).
        select: choose each method's hyperparameters on the profile's grid
            (:attr:`SimProfile.grid`) on the validation data set before the test seeds
            (:mod:`fedfr.sim.protocol`).
        row_weighting: how the server averages public embedding rows (``uniform`` or
            ``samples``; :class:`fedfr.fl.RoundAggregate`).
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
    domain_strength: float | None = None
    select: bool = False
    row_weighting: str = "uniform"

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
        if self.domain_strength is not None and not self.domain_strength >= 0:
            raise ValueError(f"domain_strength must be >= 0, got {self.domain_strength}")
        if self.select and not self.sim_profile.grid:
            raise ValueError(f"profile {self.profile!r} has no hyperparameter grid to select on")
        if self.row_weighting not in ("uniform", "samples"):
            raise ValueError(f"row_weighting must be 'uniform' or 'samples', got "
                             f"{self.row_weighting!r}")

    @property
    def sim_profile(self) -> SimProfile:
        return get_sim_profile(self.profile)

    @property
    def num_rounds(self) -> int:
        return self.rounds or self.sim_profile.rounds

    def local_config(self) -> LocalConfig:
        return self.sim_profile.local.with_(device=self.device, **self.local)

    def data_profile(self):
        """The synthetic data profile, with :attr:`domain_strength` applied."""
        from fedfr.data.synthetic import get_profile

        prof = get_profile(self.profile)
        if self.domain_strength is None:
            return prof
        return prof.with_(generator=replace(prof.generator,
                                            domain_strength=float(self.domain_strength)))

    @property
    def data_tag(self) -> str:
        """The data set's name stem: the profile, and the domain strength when set."""
        if self.domain_strength is None:
            return self.profile
        return f"{self.profile}-ds{self.domain_strength:g}"

    def settings(self) -> dict:
        """Everything that determines a (seed, method) result (for reuse checks)."""
        sp = self.sim_profile
        return {
            "domain_strength": self.data_profile().generator.domain_strength,
            "row_weighting": self.row_weighting,
            "cross_device_impostors": sp.cross_device_impostors,
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
    eval_dataset: object = None  # what the devices are evaluated on (cross-device impostors)


def prepare_seed(cfg: SimConfig, seed: int) -> SeedSetup:
    """Data set, pretrained model, public pack and the pretrained model's evaluation."""
    from fedfr.data.manifest import SyntheticDataset, is_synthetic_dataset
    from fedfr.data.synthetic import synthesize
    from fedfr.heads import MARGIN_PRESETS
    from fedfr.train.pretrain import PretrainConfig, pretrain

    sp = cfg.sim_profile
    data_dir = cfg.data or cfg.out / "data" / f"{cfg.data_tag}-seed{seed}"
    if cfg.data is None and not is_synthetic_dataset(data_dir):
        synthesize(cfg.data_profile(), data_dir, seed=seed, progress=cfg.progress,
                   overwrite=True)
    ds = SyntheticDataset.load(data_dir).in_memory()
    epochs = cfg.pretrain_epochs or sp.pretrain_epochs
    ckpt = cfg.pretrained
    if ckpt is None:
        ckpt = (cfg.out / "pretrained"
                / f"{cfg.data_tag}-seed{seed}-{sp.arch}-e{epochs}.safetensors")
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
    eval_ds = with_cross_device_impostors(ds) if sp.cross_device_impostors else ds
    baseline, curves = _evaluate(eval_ds, model, None, cfg)
    return SeedSetup(seed, ds, model, pack, baseline, curves, eval_ds)


def _evaluate(ds, model: GlobalModel, privates: dict[str, PrivateState] | None,
              cfg: SimConfig, generic: dict | None = None, *,
              without_converter: bool = False, personalized: bool = True,
              ) -> tuple[dict, dict]:
    """Generic metrics of ``model`` (unless given) and personalized metrics of the devices'
    recognizers (the generic model on devices without private state), with per-device
    summaries; ``without_converter``: also the devices' local backbones alone
    (``personalized_backbone``, the paired test of DFC)."""
    from fedfr.evaluation import evaluate_dataset, evaluate_device, mean_over_devices, summarize
    from fedfr.train.runtime import resolve_device

    dev = resolve_device(cfg.device)
    embed = generic_embedder(model, device=dev)

    def device_embedder(d):
        p = (privates or {}).get(d.name)
        return embed if p is None else personalized_embedder(model, p, device=dev)

    report, curves = evaluate_dataset(embed, ds, device_embedders=device_embedder,
                                      devices=personalized)
    row = {
        "generic": summarize(report["generic"]),
        "generic_device_domains": summarize(report["generic_device_domains"]),
    }
    if personalized:
        row["personalized"] = report["devices"]["mean"]
        row["personalized_per_device"] = [summarize(r) for r in report["devices"]["per_device"]]
    else:  # not evaluated this round
        row["personalized"] = dict.fromkeys(row["generic"])
    if generic is not None:  # the generic model did not change (no FL): keep its numbers
        row["generic"] = generic["generic"]
        row["generic_device_domains"] = generic["generic_device_domains"]
    if without_converter and privates:
        reps = [evaluate_device(personalized_embedder(model, privates[d.name], device=dev,
                                                      converter=False), d)
                for d in ds.devices]
        row["personalized_backbone"] = mean_over_devices(reps)
        row["personalized_backbone_per_device"] = [summarize(r) for r in reps]
    return row, curves


def _device_seed(seed: int, method: str, round_index: int, device_index: int) -> int:
    key = f"{seed}:{method}:{round_index}:{device_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def run_method(cfg: SimConfig, setup: SeedSetup, method: MethodSpec,
               overrides: dict | None = None) -> dict:
    """Every round of one method on one seed; returns its history and final metrics.

    ``overrides``: LocalConfig fields for this method (its selected hyperparameters).
    Controls (:attr:`MethodSpec.control`) train one pseudo-device (:func:`control_data`)
    with the same local step and aggregation; their devices use the generic model.
    """
    sp = cfg.sim_profile
    history = [{"round": 0, **setup.baseline, "seconds": 0.0}]
    curves = setup.baseline_curves
    result = {"method": method.name, "seed": setup.seed, "history": history,
              "overrides": dict(overrides or {}), "total_steps": 0,
              "bytes": {"download_per_device_round": 0.0, "upload_per_device_round": 0.0,
                        "public_pack": 0}}
    if not method.trains:
        return _finish(result, curves)
    prox_mu = cfg.prox_mu if cfg.prox_mu is not None else sp.prox_mu
    base_cfg = method.local_config(cfg.local_config().with_(**(overrides or {})),
                                   prox_mu=prox_mu)
    model = setup.model
    privates: dict[str, PrivateState] = {}
    if method.control is not None:
        images, labels = control_data(setup.dataset, method.control, setup.seed)
        learners = [(f"control-{method.control}", lambda: images, labels)]
        if method.control == "pooled" and base_cfg.max_hard_negatives is not None:
            # the pooled learner may replay as many negatives as the devices together
            base_cfg = base_cfg.with_(max_hard_negatives=base_cfg.max_hard_negatives
                                      * len(setup.dataset.devices))
    else:
        learners = [(d.name, d.train.load, np.asarray(d.train.labels))
                    for d in setup.dataset.devices]
    communicates = method.federated and method.control is None
    down = up = steps = 0
    n_rounds = cfg.num_rounds
    for r in range(n_rounds):
        t0 = time.perf_counter()
        agg = RoundAggregate(model.public_embeddings, row_weighting=cfg.row_weighting)
        stats: list[dict[str, float]] = []
        bar = tqdm(learners, desc=f"seed {setup.seed} {method.name} round {r + 1}/{n_rounds}",
                   disable=not cfg.progress, unit="device", leave=False)
        for i, (name, load, y) in enumerate(bar):
            prev = privates.get(name)
            start = model
            if not method.federated and prev is not None:  # `local`: its own model goes on
                start = model.with_(backbone=prev.local_backbone)
            res = local_round(start, load(), y, base_cfg.with_(
                seed=_device_seed(setup.seed, method.name, r, i)), round_index=r, private=prev,
                pack=setup.pack if method.public == "images" else None)
            privates[name] = res.private
            stats.append(res.metrics)
            steps += int(res.metrics.get("steps", 0))
            if method.federated:
                agg.add(res.update)
            if communicates:
                down += start.backbone_nbytes + (
                    start.public_embeddings.nbytes if method.public else 0)
                up += res.update.nbytes
        if method.federated:
            arrays, public = agg.result()
            model = model.with_(backbone=backbone_arrays(arrays), public_embeddings=public,
                                version=f"{method.name}-r{r + 1}")
        train_s = time.perf_counter() - t0
        last = r == n_rounds - 1
        row, curves = _evaluate(setup.eval_dataset or setup.dataset, model,
                                None if method.control else privates, cfg,
                                generic=None if method.federated else setup.baseline,
                                without_converter=last and method.dfc,
                                personalized=last or sp.personalized_every_round)
        if not last:  # per-device summaries of the final round only
            row.pop("personalized_per_device", None)
        keys = sorted({k for s in stats for k in s})
        row["train"] = {k: float(np.mean([s.get(k, 0.0) for s in stats])) for k in keys}
        row["round"] = r + 1
        row["seconds"] = train_s
        history.append(row)
        if cfg.progress:
            g, p = row["generic"], row["personalized"]
            tqdm.write(f"[seed {setup.seed}] {method.name:13s} round {r + 1}/{n_rounds}: "
                       f"generic TAR@1e-3 {_fmt(g.get('tar@far=1e-03'))} rank-1 "
                       f"{_fmt(g.get('rank1'))} | personalized TAR@1e-3 "
                       f"{_fmt(p.get('tar@far=1e-03'))} DIR@1e-1 "
                       f"{_fmt(p.get('dir@fpir=1e-01'))} | loss {row['train'].get('loss', 0):.3f}"
                       f" ({train_s:.0f}s)")
    result["total_steps"] = steps
    if communicates:
        per = n_rounds * len(learners)
        result["bytes"] = {
            "download_per_device_round": down / per,
            "upload_per_device_round": up / per,
            "public_pack": setup.pack.nbytes if method.public == "images" else 0,
        }
    return _finish(result, curves)


def _finish(result: dict, curves: dict) -> dict:
    last = result["history"][-1]
    for k in ("generic", "generic_device_domains", "personalized", "personalized_per_device",
              "personalized_backbone", "personalized_backbone_per_device"):
        if k in last:
            result[k] = last[k]
    result["curves"] = curves  # (scores, issame) per split; saved beside, not in the JSON
    return result


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4f}"


# --------------------------------------------------------------------------- the run


def simulate(cfg: SimConfig) -> dict:
    """Run every (seed, method), then write ``results.json``, ``results.md`` and plots.

    With ``cfg.select`` each method's hyperparameters are first chosen on the validation data
    set (:func:`select_hyperparameters`); the test seeds then run with the chosen values.

    Returns the results object written to ``results.json`` (see :mod:`fedfr.sim.report`).
    """
    from fedfr.sim.report import combine, write_report

    cfg.out.mkdir(parents=True, exist_ok=True)
    settings = cfg.settings()
    t0 = time.perf_counter()
    selection = select_hyperparameters(cfg) if cfg.select else None
    chosen = {m: (selection["methods"][m]["chosen"] if selection and m in selection["methods"]
                  else {}) for m in cfg.methods}
    per_seed: dict[int, dict[str, dict]] = {}
    for seed in cfg.seeds:
        seed_dir = cfg.out / "seeds" / f"seed-{seed}"
        want = {m: {**settings, "overrides": chosen[m]} for m in cfg.methods}
        done = {m: _load_done(seed_dir / f"{m}.json", want[m]) for m in cfg.methods}
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
            res = run_method(cfg, setup, get_method(name), chosen[name])
            res["seconds"] = time.perf_counter() - t1
            res["settings"] = want[name]
            _save_curves(seed_dir / f"{name}-curves.npz", res.pop("curves"))
            write_json_atomic(seed_dir / f"{name}.json", res)
            per_seed[seed][name] = res
    results = combine(cfg, per_seed)
    if selection is not None:
        results["selection"] = selection
    results["seconds"] = time.perf_counter() - t0
    results["machine"] = _machine()
    write_report(cfg.out, results, per_seed)
    return results


def select_hyperparameters(cfg: SimConfig) -> dict:
    """Score every point of the profile's grid for every training method on the validation
    data set (the profile rendered with ``selection_seed``: none of the test seeds'
    identities) over ``selection_rounds`` rounds, and choose the best per method.

    Each (method, point) result is kept under ``OUT/selection/`` and reused.

    Returns ``{"seed", "rounds", "grid", "metric", "methods": {method: {"scores": {point
    key: score}, "chosen": {field: value}}}}`` (written into ``results.json``).
    """
    from fedfr.sim.protocol import SELECTION_METRICS

    sp = cfg.sim_profile
    seed = sp.selection_seed
    if seed in cfg.seeds:
        raise ValueError(f"seed {seed} is the validation data set's; test on other seeds")
    sel_cfg = replace(cfg, seeds=(seed,), rounds=sp.selection_rounds or cfg.num_rounds,
                      select=False)
    base = sel_cfg.settings()
    points = grid_points(sp.grid)
    setup = None
    methods: dict[str, dict] = {}
    for name in cfg.methods:
        method = get_method(name)
        if not method.trains:
            continue
        scores: dict[str, float] = {}
        for point in points:
            key = point_key(point)
            path = cfg.out / "selection" / f"{name}.{key}.json"
            want = {**base, "overrides": point}
            res = _load_done(path, want)
            if res is None:
                setup = setup or prepare_seed(sel_cfg, seed)
                t1 = time.perf_counter()
                res = run_method(sel_cfg, setup, method, point)
                res.pop("curves")
                res["seconds"] = time.perf_counter() - t1
                res["settings"] = want
                write_json_atomic(path, res)
            scores[key] = selection_score(res)
            if cfg.progress:
                tqdm.write(f"[select] {name:13s} {key}: score {scores[key]:.4f}")
        best = choose(scores)
        methods[name] = {"scores": scores,
                         "chosen": next(p for p in points if point_key(p) == best)}
    return {"seed": seed, "rounds": sel_cfg.num_rounds, "grid": {k: list(v) for k, v in
                                                                 sp.grid.items()},
            "metric": "mean of " + " and ".join(f"{s} {k}" for s, k in SELECTION_METRICS),
            "methods": methods}


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
