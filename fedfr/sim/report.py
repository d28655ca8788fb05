"""The harness's outputs: ``results.json``, ``results.md`` and PNG plots.

``results.json``::

    {"format": "fedfr-simulation", "format_version": 1, "profile": ..., "seeds": [...],
     "rounds": R, "settings": {...}, "machine": {...}, "seconds": ...,
     "methods": {
        "<method>": {
            "description": ...,
            "generic": {metric: mean over seeds}, "generic_std": {metric: std},
            "generic_device_domains": ..., "generic_device_domains_std": ...,
            "personalized": {...}, "personalized_std": {...},
            "history": [{"round": r, "generic": {...}, "personalized": {...},
                         "generic_device_domains": {...}, "train": {...}}, ...],  # seed means
            "bytes": {"download_per_device_round", "upload_per_device_round", "public_pack"},
            "seconds": mean seconds per seed,
            "per_seed": {"<seed>": {"generic": ..., "personalized": ..., "history": [...]}}}}}

Metric keys are those of :func:`fedfr.evaluation.summarize`: ``tar@far=1e-01`` ...,
``eer``, ``acc``, ``rank1``, ``dir@fpir=1e-01`` ...; generic metrics are the global model on
identities nobody trained on (public domain; ``generic_device_domains``: in the devices'
camera domains), personalized metrics the devices' own recognizers on their held-out images
and strangers, averaged over devices. Round 0 of every history is the pretrained model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fedfr.io import write_bytes_atomic, write_json_atomic
from fedfr.train.methods import get_method

log = logging.getLogger(__name__)

SPLITS = ("generic", "generic_device_domains", "personalized")

#: (metric key, column title) of the results table, per split.
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("tar@far=1e-02", "TAR@1e-2"),
    ("tar@far=1e-03", "TAR@1e-3"),
    ("eer", "EER"),
    ("rank1", "Rank-1"),
    ("dir@fpir=1e-01", "DIR@1e-1"),
)


def _mean_std(dicts: list[dict]) -> tuple[dict, dict]:
    mean, std = {}, {}
    for k in dicts[0]:
        vals = [d.get(k) for d in dicts]
        if any(v is None for v in vals):
            mean[k] = std[k] = None
        else:
            mean[k] = float(np.mean(vals))
            std[k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return mean, std


def combine(cfg, per_seed: dict[int, dict[str, dict]]) -> dict:
    """Mean ± std over seeds of every method's final metrics and history."""
    from fedfr.sim.runner import RESULTS_FORMAT, RESULTS_VERSION

    seeds = list(per_seed)
    methods = {}
    for name in cfg.methods:
        runs = [per_seed[s][name] for s in seeds]
        entry: dict = {"description": get_method(name).description}
        for split in SPLITS:
            entry[split], entry[f"{split}_std"] = _mean_std([r[split] for r in runs])
        n_rounds = min(len(r["history"]) for r in runs)
        history = []
        for i in range(n_rounds):
            row: dict = {"round": i}
            for split in SPLITS:
                row[split], row[f"{split}_std"] = _mean_std([r["history"][i][split]
                                                             for r in runs])
            trains = [r["history"][i].get("train") for r in runs]
            if all(t is not None for t in trains):
                row["train"] = _mean_std(trains)[0]
            history.append(row)
        entry["history"] = history
        entry["bytes"] = _mean_std([r["bytes"] for r in runs])[0]
        entry["seconds"] = float(np.mean([r.get("seconds", 0.0) for r in runs]))
        if all("personalized_backbone" in r for r in runs):
            entry["personalized_backbone"], entry["personalized_backbone_std"] = _mean_std(
                [r["personalized_backbone"] for r in runs])
        entry["overrides"] = runs[0].get("overrides", {})
        entry["total_steps"] = float(np.mean([r.get("total_steps", 0) for r in runs]))
        entry["per_seed"] = {str(s): {k: per_seed[s][name][k] for k in
                                      ("generic", "generic_device_domains", "personalized",
                                       "personalized_per_device", "personalized_backbone",
                                       "history", "bytes", "overrides", "total_steps")
                                      if k in per_seed[s][name]} for s in seeds}
        methods[name] = entry
    return {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_VERSION,
        "profile": cfg.profile,
        "seeds": seeds,
        "rounds": cfg.num_rounds,
        "settings": cfg.settings(),
        "methods": methods,
        "paired": paired(cfg.methods, per_seed),
    }


#: Reference methods every other method is compared with, pair by pair.
PAIRED_REFERENCES = ("pretrained", "fedavg", "public_more", "centralized")


def paired(methods, per_seed: dict[int, dict[str, dict]]) -> dict:
    """``{method: {reference: paired differences}}`` (:func:`fedfr.sim.protocol.
    paired_differences`), plus FedFR's converter test (``fedfr`` with vs without its
    converter, on the same devices) under ``"dfc"``."""
    from fedfr.sim.protocol import paired_differences

    out: dict = {}
    for ref in PAIRED_REFERENCES:
        if ref not in methods:
            continue
        for m in methods:
            if m != ref:
                out.setdefault(m, {})[ref] = paired_differences(per_seed, m, ref)
    dfc: dict = {}
    for m in methods:
        runs = {s: per_seed[s][m] for s in per_seed}
        if all("personalized_backbone" in r for r in runs.values()):
            view = {s: {"with": {"personalized": r["personalized"],
                                 "personalized_per_device": r.get("personalized_per_device")},
                        "without": {"personalized": r["personalized_backbone"],
                                    "personalized_per_device":
                                        r.get("personalized_backbone_per_device")}}
                    for s, r in runs.items()}
            metrics = [("personalized", k) for k in ("tar@far=1e-03", "tar@far=1e-02",
                                                     "dir@fpir=1e-02")]
            dfc[m] = paired_differences(view, "with", "without", metrics)
    if dfc:
        out["dfc"] = dfc
    return out


def _cell(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4f}" if n < 2 else f"{mean:.4f} ± {std:.4f}"


def results_table(results: dict) -> str:
    """The Markdown tables of ``results.md``: generic and personalized, mean ± std."""
    n = len(results["seeds"])
    out = []
    titles = {"generic": "Generic model, identities nobody trained on (public domain)",
              "generic_device_domains": "Generic model, unseen identities in the devices' "
                                        "camera domains",
              "personalized": "Personalized recognizers on their own devices "
                              "(mean over devices)"}
    for split in SPLITS:
        out.append(f"### {titles[split]}\n")
        out.append("| method | " + " | ".join(t for _, t in TABLE_METRICS) + " |")
        out.append("|---|" + "|".join("---:" for _ in TABLE_METRICS) + "|")
        for name, m in results["methods"].items():
            cells = [_cell(m[split].get(k), m[f"{split}_std"].get(k), n)
                     for k, _ in TABLE_METRICS]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    backbone = {n: m for n, m in results["methods"].items() if "personalized_backbone" in m}
    if backbone:
        out.append("### Personalized, the local backbone without its DFC converter\n")
        out.append("| method | " + " | ".join(t for _, t in TABLE_METRICS) + " |")
        out.append("|---|" + "|".join("---:" for _ in TABLE_METRICS) + "|")
        for name, m in backbone.items():
            cells = [_cell(m["personalized_backbone"].get(k),
                           m["personalized_backbone_std"].get(k), n) for k, _ in TABLE_METRICS]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    out.append(paired_table(results))
    if "selection" in results:
        out.append(selection_table(results["selection"]))
    out.append("### Communication per device and round\n")
    out.append("| method | download (MB) | upload (MB) | public pack, once (MB) | "
               "seconds per seed |")
    out.append("|---|---:|---:|---:|---:|")
    for name, m in results["methods"].items():
        b = m["bytes"]
        out.append(f"| {name} | {b['download_per_device_round'] / 1e6:.3f} | "
                   f"{b['upload_per_device_round'] / 1e6:.3f} | {b['public_pack'] / 1e6:.3f} | "
                   f"{m['seconds']:.0f} |")
    return "\n".join(out) + "\n"


def _ci(d: dict) -> str:
    if d.get("mean") is None:
        return "—"
    if d.get("low") is None:
        return f"{d['mean']:+.4f} (n={d['n']})"
    return f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] (n={d['n']})"


PAIRED_COLUMNS = (("generic.tar@far=1e-03", "per_seed", "generic TAR@1e-3"),
                  ("personalized.tar@far=1e-03", "per_seed", "personalized TAR@1e-3"),
                  ("personalized.tar@far=1e-03", "per_device",
                   "personalized TAR@1e-3, per device"))


def paired_table(results: dict) -> str:
    """Paired differences with 95 % t-intervals: every method against each reference."""
    pairs = results.get("paired") or {}
    out = ["### Paired differences (method − reference), mean [95 % CI] (n pairs)\n",
           "| method | reference | " + " | ".join(t for *_, t in PAIRED_COLUMNS) + " |",
           "|---|---|" + "|".join("---:" for _ in PAIRED_COLUMNS) + "|"]
    for m, refs in pairs.items():
        if m == "dfc":
            continue
        for ref, d in refs.items():
            cells = [_ci(d[key][kind]) if key in d and kind in d[key] else "—"
                     for key, kind, _ in PAIRED_COLUMNS]
            out.append(f"| {m} | {ref} | " + " | ".join(cells) + " |")
    for m, d in (pairs.get("dfc") or {}).items():
        cells = ["—"] + [_ci(d[key][kind]) for key, kind, _ in PAIRED_COLUMNS[1:]]
        out.append(f"| {m} with converter | {m} without | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def selection_table(sel: dict) -> str:
    """Each method's selection scores per grid point and the chosen point."""
    keys = sorted({k for m in sel["methods"].values() for k in m["scores"]})
    out = [f"### Hyperparameters chosen on the validation data set (seed {sel['seed']}, "
           f"{sel['rounds']} round(s); score = {sel['metric']})\n",
           "| method | " + " | ".join(keys) + " | chosen |",
           "|---|" + "|".join("---:" for _ in keys) + "|---|"]
    for m, e in sel["methods"].items():
        cells = [f"{e['scores'][k]:.4f}" if k in e["scores"] else "—" for k in keys]
        chosen = ", ".join(f"{k}={v}" for k, v in sorted(e["chosen"].items()))
        out.append(f"| {m} | " + " | ".join(cells) + f" | {chosen} |")
    return "\n".join(out) + "\n"


def write_report(out: Path, results: dict, per_seed: dict[int, dict[str, dict]]) -> None:
    """``results.json``, ``results.md`` and the plots (when matplotlib is installed)."""
    write_json_atomic(out / "results.json", results)
    seeds = ", ".join(str(s) for s in results["seeds"])
    header = (f"# FedFR simulation — profile `{results['profile']}`, {results['rounds']} "
              f"rounds, seeds {seeds}\n\nMean ± std over seeds (sample std). Metrics after "
              f"the last round; round 0 is the pretrained model. Plots: `rounds.png`, "
              f"`roc_generic.png`, `roc_personalized.png`.\n\n")
    write_bytes_atomic(out / "results.md", (header + results_table(results)).encode())
    try:
        plot_rounds(results, out / "rounds.png")
        first = results["seeds"][0]
        plot_rocs(out / "seeds" / f"seed-{first}", list(results["methods"]), out)
    except ImportError:
        log.warning("matplotlib not installed: no plots (pip install 'fedfr[plot]')")


ROUND_PLOTS = (
    ("generic", "tar@far=1e-03", "generic TAR@FAR=1e-3"),
    ("generic", "rank1", "generic rank-1"),
    ("personalized", "tar@far=1e-02", "personalized TAR@FAR=1e-2"),
    ("personalized", "dir@fpir=1e-01", "personalized DIR@FPIR=1e-1"),
)


def plot_rounds(results: dict, path: Path) -> Path:
    """A 2x2 figure: four metrics per round per method (seed means, ± std shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedfr.plots import save_png

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=110)
    for ax, (split, key, title) in zip(axes.flat, ROUND_PLOTS, strict=True):
        for name, m in results["methods"].items():
            rounds = [h["round"] for h in m["history"]]
            mean = np.array([np.nan if h[split].get(key) is None else h[split][key]
                             for h in m["history"]], float)
            std = np.array([np.nan if h[f"{split}_std"].get(key) is None
                            else h[f"{split}_std"][key] for h in m["history"]], float)
            marker = "o" if len(rounds) > 1 else "s"
            ax.plot(rounds, mean, marker=marker, label=name)
            if len(results["seeds"]) > 1:
                ax.fill_between(rounds, mean - std, mean + std, alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.grid(True, alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"profile {results['profile']}: metrics per round")
    fig.tight_layout()
    save_png(fig, path)
    return path


def plot_rocs(seed_dir: Path, methods: list[str], out: Path) -> None:
    """ROC curves of each method's final models (one seed): generic and personalized."""
    from fedfr.plots import plot_roc
    from fedfr.sim.runner import load_curves

    curves = {m: load_curves(seed_dir / f"{m}-curves.npz") for m in methods
              if (seed_dir / f"{m}-curves.npz").exists()}
    seed = seed_dir.name.split("-")[-1]
    for split, fname, title in (("generic", "roc_generic.png", "generic (public domain)"),
                                ("devices", "roc_personalized.png",
                                 "personalized (all devices' pairs pooled)")):
        plot_roc({m: c[split] for m, c in curves.items() if split in c}, out / fname,
                 title=f"ROC, {title}, seed {seed}")
