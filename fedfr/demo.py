"""The main job on an embedded default: synthesize, pretrain briefly, evaluate, print a table.

``fedfr demo`` (and the README's first command) runs this. Later issues extend it into the
whole federated system; for now it shows the core library end to end.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Pretraining epochs per profile when none is given: enough for a useful model, brief on CPU.
DEFAULT_EPOCHS = {"tiny": 30, "small": 40, "paper": 20}


def run_demo(workdir: Path, *, profile: str = "tiny", arch: str = "mbf_tiny",
             epochs: int | None = None, seed: int = 0, device: str = "auto",
             progress: bool = True) -> dict:
    """Synthesize ``profile`` (once; reused when present), pretrain ``arch`` on its public
    split, evaluate generic and per-device metrics, and return the report with a ``table``.

    Files: ``workdir/data/<profile>-seed<seed>/`` (the data set),
    ``workdir/pretrained-<arch>.safetensors``, ``workdir/eval/`` (eval.json, eval.md, roc.png).
    """
    from fedfr.data.manifest import is_synthetic_dataset
    from fedfr.data.sources import load_training_set
    from fedfr.data.synthetic import get_profile, synthesize
    from fedfr.evaluation import evaluate_checkpoint
    from fedfr.heads import MARGIN_PRESETS
    from fedfr.train.pretrain import PretrainConfig, pretrain

    get_profile(profile)  # fail fast on an unknown name
    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    data_dir = workdir / "data" / f"{profile}-seed{seed}"
    t0 = time.perf_counter()
    if not is_synthetic_dataset(data_dir):
        synthesize(profile, data_dir, seed=seed, progress=progress, overwrite=True)
    timings["synthesize_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    data = load_training_set(data_dir)
    cfg = PretrainConfig(arch=arch, epochs=epochs or DEFAULT_EPOCHS.get(profile, 20),
                         margin=MARGIN_PRESETS["cosface"], batch_size=128, lr=0.1, seed=seed,
                         device=device)
    ckpt = workdir / f"pretrained-{arch}.safetensors"
    result = pretrain(data.images, data.labels, cfg, ckpt, progress=progress,
                      metadata={"data": data.description})
    timings["pretrain_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = evaluate_checkpoint(ckpt, data_dir, workdir / "eval", arch=arch, device=device)
    timings["evaluate_s"] = time.perf_counter() - t0
    report["pretrain"] = {"history": result.history, "images_per_second":
                          result.images_per_second}
    report["timings"] = timings
    header = (f"FedFR demo — profile '{profile}', {arch} pretrained for {cfg.epochs} epochs on "
              f"{len(data.labels)} public images of {data.num_classes} identities\n"
              f"(synthesize {timings['synthesize_s']:.1f}s, pretrain {timings['pretrain_s']:.1f}s,"
              f" evaluate {timings['evaluate_s']:.1f}s; outputs in {workdir})\n")
    report["table"] = header + "\n" + report["table"]
    return report
