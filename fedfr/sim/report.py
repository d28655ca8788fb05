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
        entry["per_seed"] = {str(s): {k: per_seed[s][name][k] for k in
                                      ("generic", "generic_device_domains", "personalized",
                                       "history", "bytes")} for s in seeds}
        methods[name] = entry
    return {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_VERSION,
        "profile": cfg.profile,
        "seeds": seeds,
        "rounds": cfg.num_rounds,
        "settings": cfg.settings(),
        "methods": methods,
    }


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
