"""One device's federated round, phase by phase, through the real SDK and a real aggregator.

An ``aggregator serve`` subprocess on loopback (SQLite + files) publishes a model with a public
pack and runs ``--rounds`` rounds of one device (``repeat``); the device (the SDK in this
process: :func:`device_sdk.api.train`) enrolls ``--identities`` x ``--images`` crops and takes
part in every round. Per round the SDK reports:

* **download** — the round's model version (and, in the first round only, the public pack;
  later rounds reuse the cached pack, as a device does);
* **mining** — hard-negative mining: the frozen global model embeds the public pack and the
  local images, and the most similar public images are kept;
* **prepare** — everything before the first SGD step (mining included: the frozen features
  of the previous local model, the heads);
* **train** — the local epochs (images/s = SGD samples per second);
* **upload** — encoding aside, sending the update and the server's validation + receipt.

Each phase is the median over the rounds (the first round, which also downloads the pack, is
shown on its own). The model has random weights and the crops are random pixels: the cost of a
round does not depend on what the faces look like, and ``max_hard_negatives`` = the number of
local images fixes the mined set's size. (The server's update-norm bound is lifted: from random
weights, BatchNorm's running statistics move far in the first rounds.)

    python benchmarks/device_round.py --arch mbf --json device_round.json
    python benchmarks/device_round.py --arch mbf_tiny --quick          # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _model(path: Path, arch: str, public_classes: int, seed: int) -> Path:
    import torch

    from fedfr.backbones import build_backbone, get_backbone_spec
    from fedfr.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    emb = get_backbone_spec(arch).embedding_size
    net = build_backbone(arch, embedding_size=emb)
    pub = torch.nn.functional.normalize(torch.randn(public_classes, emb), dim=1)
    save_checkpoint(path, net, arch=arch, embedding_size=emb,
                    extra_tensors={"head.public_class_embeddings": pub})
    return path


def run(args: argparse.Namespace) -> dict:
    import torch

    from aggregator.client import AdminClient
    from device_sdk import api
    from device_sdk.demo import AggregatorProcess
    from fedfr.data.images import encode_png
    from fedfr.fl.wire import save_public_pack
    from fedfr.machine import cpu_model

    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(dir=args.workdir) as td:
        work = Path(td)
        ckpt = _model(work / "model.safetensors", args.arch, args.public_classes, args.seed)
        n_pack = args.public_classes * args.pack_per_class
        pack = save_public_pack(work / "pack.safetensors", "images",
                                rng.integers(0, 256, (n_pack, 112, 112, 3), np.uint8),
                                np.repeat(np.arange(args.public_classes), args.pack_per_class))
        n_local = args.identities * args.images
        config = {"method": "fedfr", "local": {
            "batch_size": args.batch_size, "lr": 0.01, "epochs_start": args.epochs,
            "epochs_step": 0, "epochs_min": args.epochs, "max_hard_negatives": n_local}}
        # random weights: the first rounds move BatchNorm's running statistics far from their
        # initial values, past the default update-norm bound a pretrained model never nears
        env = {"FEDFR_MAX_UPDATE_NORM_RATIO": "1000"}
        with AggregatorProcess(work / "server", env=env) as srv, \
                AdminClient(srv.url, srv.token) as a:
            sha = a.upload_public_pack(pack)["sha256"]
            a.publish_model(ckpt, public_pack=sha)
            token = a.enrollment_token(max_uses=1)["enrollment_token"]
            a.start_round({"target": 1, "over_selection": 1.0, "deadline_seconds": 3600,
                           "config": config, "repeat": args.rounds})
            home = work / "device"
            api.register(home, srv.url, token)
            for k in range(args.identities):
                files = []
                for j in range(args.images):
                    f = work / f"id{k}-{j}.png"
                    f.write_bytes(encode_png(rng.integers(0, 256, (112, 112, 3), np.uint8)))
                    files.append(f)
                # random crops (timing only): taken as they are, not checked to be faces
                api.enroll(home, f"person-{k}", files, check_crops=False)
            t0 = time.perf_counter()
            out = api.train(home, rounds=args.rounds, wait=600, device=args.device)
            wall = time.perf_counter() - t0
    rounds = out["rounds"]
    phases = ("download_s", "mining_s", "prepare_s", "train_s", "upload_s")
    later = rounds[1:] or rounds
    med = {p: statistics.median(r["timings"][p] for r in later) for p in phases}
    ips = statistics.median(r["metrics"]["images_per_second"] for r in later)
    return {
        "benchmark": "device_round",
        "machine": {"platform": platform.platform(), "processor": cpu_model(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": args.device},
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "workdir")},
        "local_images": n_local, "pack_images": n_pack,
        "update_bytes": rounds[-1]["update_bytes"],
        "first_round": {p: rounds[0]["timings"][p] for p in phases},
        "median_later_rounds": med,
        "train_images_per_second": ips,
        "wall_s": wall,
        "per_round": [{"round_id": r["round_id"], **r["timings"],
                       "images_per_second": r["metrics"]["images_per_second"],
                       "hard_negatives": r["metrics"]["hard_negatives"],
                       "epochs": r["metrics"]["epochs"],
                       "bytes_sent": r["bytes_sent"], "bytes_received": r["bytes_received"]}
                      for r in rounds],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="mbf")
    p.add_argument("--identities", type=int, default=5)
    p.add_argument("--images", type=int, default=20, help="images per identity")
    p.add_argument("--public-classes", type=int, default=100)
    p.add_argument("--pack-per-class", type=int, default=4)
    p.add_argument("--epochs", type=int, default=4, help="local epochs per round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where the temporary files go")
    p.add_argument("--json", type=Path)
    p.add_argument("--quick", action="store_true", help="a tiny smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.arch, args.identities, args.images, args.public_classes = "mbf_tiny", 2, 3, 8
        args.pack_per_class, args.epochs, args.rounds, args.batch_size = 2, 1, 2, 8
    res = run(args)
    m, f = res["median_later_rounds"], res["first_round"]
    print(f"{args.arch}: {res['local_images']} local images, {res['pack_images']} public pack "
          f"images, update {res['update_bytes'] / 1e6:.2f} MB, device {args.device}")
    print("phase         first round   median of rounds 2..N")
    for k in ("download_s", "mining_s", "prepare_s", "train_s", "upload_s"):
        print(f"{k[:-2]:<12} {f[k]:10.3f} s  {m[k]:10.3f} s")
    print(f"training: {res['train_images_per_second']:.1f} images/s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
