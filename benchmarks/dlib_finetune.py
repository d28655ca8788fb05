"""Fine-tuning dlib_r34 on a synthetic device: which learning rate, and what it does to real faces.

One local round of the product's default method (``PRODUCT_ROUND``: FedAvg with public hard
negatives) on the first device of a data set, from the dlib checkpoint, per learning rate:

* the device's personalized recognizer on its own held-out images (AUC of all pairs, mean
  genuine and impostor cosine);
* the shared backbone the device would upload, on the real photos' pairs
  (:mod:`device_sdk.realfaces`: AUC, margin = lowest genuine − highest impostor score), next to
  the checkpoint before the round.

It needs what ``python -m device_sdk.demo --base dlib_r34 --workdir DIR`` leaves in DIR (the
data set, the dlib checkpoint, the public pack)::

    python benchmarks/dlib_finetune.py --workdir runs/demo_dlib --lrs 1e-2,1e-3,1e-4 [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _pairs_auc(e: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    i, j = np.triu_indices(len(e), 1)
    s = (e[i] * e[j]).sum(1)
    same = labels[i] == labels[j]
    g, im = s[same], s[~same]
    return float((g[:, None] > im[None, :]).mean()), float(g.mean()), float(im.mean())


def main(argv: list[str] | None = None) -> int:
    from device_sdk.realfaces import real_face_crops, real_pairs_report
    from fedfr.data.manifest import SyntheticDataset
    from fedfr.fl import GlobalModel
    from fedfr.sim.runner import SimConfig
    from fedfr.train.local import PublicPack, local_round
    from fedfr.train.methods import product_round_config, round_config
    from fedfr.train.recognizer import generic_embedder, personalized_embedder

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--profile", default="fair")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lrs", default="1e-2,1e-3,1e-4")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    w = args.workdir
    sim = SimConfig(profile=args.profile, methods=("fedfr",), out=w)
    ds = SyntheticDataset.load(w / "data" / f"{sim.data_tag}-seed{args.seed}").in_memory()
    model = GlobalModel.load(w / "pretrained" / f"{sim.data_tag}-seed{args.seed}-dlib_r34"
                                                ".safetensors")
    pack = PublicPack.load(w / "public-pack.safetensors")
    dev = ds.devices[0]
    images, labels = dev.train.load(), np.asarray(dev.train.labels, np.int64)
    test, test_labels = dev.test.load(), np.asarray(dev.test.labels)
    crops, real_labels, _ = real_face_crops()
    before = real_pairs_report(generic_embedder(model), crops, real_labels)
    rows = []
    for lr in (float(x) for x in args.lrs.split(",")):
        conf = product_round_config(sim.local_config())
        conf["local"]["lr"] = lr
        cfg = round_config(conf, base=sim.local_config())
        t0 = time.perf_counter()
        res = local_round(model, images, labels, cfg, pack=pack)
        seconds = time.perf_counter() - t0
        auc, gen, imp = _pairs_auc(personalized_embedder(model, res.private)(test), test_labels)
        shared = model.with_(backbone={k.split(".", 1)[1]: v for k, v in res.update.arrays.items()
                                       if k.startswith("backbone.")})
        real = real_pairs_report(generic_embedder(shared), crops, real_labels)
        rows.append({"lr": lr, "seconds": seconds, "loss": res.update.metrics.get("loss"),
                     "train_accuracy": res.update.metrics.get("train_accuracy"),
                     "device_auc": auc, "device_genuine_mean": gen, "device_impostor_mean": imp,
                     "real_auc": real["auc"], "real_margin": real["margin"]})
    out = {"device": dev.name, "train_images": len(labels), "test_images": len(test_labels),
           "real_before": {"auc": before["auc"], "margin": before["margin"]}, "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{dev.name}: {len(labels)} training images; real photos before: AUC "
          f"{before['auc']:.3f}, margin {before['margin']:+.3f}")
    print(f"{'lr':>7} {'s':>5} {'train acc':>9} {'device AUC':>10} {'gen/imp cos':>13} "
          f"{'real AUC':>8} {'real margin':>11}")
    for r in rows:
        gi = f"{r['device_genuine_mean']:6.3f}/{r['device_impostor_mean']:<6.3f}"
        print(f"{r['lr']:7.0e} {r['seconds']:5.0f} {r['train_accuracy']:9.3f} "
              f"{r['device_auc']:10.4f} {gi} {r['real_auc']:8.3f} {r['real_margin']:+11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
