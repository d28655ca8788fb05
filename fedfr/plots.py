"""ROC plots (matplotlib, optional extra ``fedfr[plot]``), written atomically as PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fedfr.io import write_bytes_atomic
from fedfr.metrics import roc_curve


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path,
             title: str = "ROC") -> Path:
    """Plot TAR against FAR (log scale) for each ``name -> (scores, issame)`` and save a PNG.

    Raises:
        ImportError: matplotlib is not installed (``pip install fedfr[plot]``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for name, (scores, issame) in curves.items():
        fpr, tpr, _ = roc_curve(scores, issame)
        n_imp = int((~np.asarray(issame, dtype=bool)).sum())
        keep = fpr >= 1.0 / max(n_imp, 1)
        ax.plot(fpr[keep], tpr[keep], label=f"{name} ({n_imp} impostor pairs)")
    ax.set_xscale("log")
    ax.set_xlabel("FAR (false accept rate)")
    ax.set_ylabel("TAR (true accept rate)")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    return save_png(fig, path)


def save_png(fig, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    path = Path(path)
    write_bytes_atomic(path, buf.getvalue())
    return path
