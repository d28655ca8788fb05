"""Cost of the FedFR local step against a plain CosFace step of the same backbone.

Both steps run in one process on the same batches, interleaved repeat by repeat, so the ratio
is measured under the same machine load:

* **plain**: :func:`fedfr.train.pretrain.train_step` — preprocess the uint8 batch, backbone,
  normalized head over the same classes (local + mined public), CosFace, backward, SGD;
* **fedfr**: :meth:`fedfr.train.local.LocalTrainer.step` — the step ``local_round`` runs:
  CosFace + DFC (converter + binary classifiers) + the contrastive regularizer (features of the
  frozen global and previous local models read from the per-round cache) + SGD.

Also reported: the per-round preparation (frozen-model features of the training set, both
flips, and hard-negative mining over the public pack), amortized over a round of
``--epochs`` epochs, and what running the two frozen models inside every step would cost
instead (two extra forward passes per batch, timed here), i.e. what the cache saves.

    python benchmarks/local_step.py --arch mbf --batch-size 256 --json out.json   # GPU
    python benchmarks/local_step.py --arch mbf_tiny --batch-size 32              # CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch

from fedfr.backbones import build_backbone, get_backbone_spec
from fedfr.fl import GlobalModel
from fedfr.heads import NormalizedClassHead
from fedfr.train.embedding import preprocess
from fedfr.train.local import LocalConfig, LocalTrainer, PublicPack
from fedfr.train.pretrain import train_step
from fedfr.train.runtime import autocast, memory_format, resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(arch: str, n_local: int, n_ids: int, n_pack: int, n_public: int, batch: int,
           device: str, seed: int = 0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = get_backbone_spec(arch)
    net = build_backbone(arch)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    pub = rng.normal(size=(n_public, spec.embedding_size)).astype(np.float32)
    model = GlobalModel(arch, spec.embedding_size, spec.contract.to_dict(), state, pub)
    images = rng.integers(0, 256, (n_local, 112, 112, 3), dtype=np.uint8)
    labels = np.arange(n_local) % n_ids
    pack = PublicPack.from_images(rng.integers(0, 256, (n_pack, 112, 112, 3), dtype=np.uint8),
                                  rng.integers(0, n_public, n_pack))
    # threshold -1: every pack image is a "hard negative" (random weights, random pixels),
    # capped so the training set is n_local + n_local public images.
    cfg = LocalConfig(batch_size=batch, lr=0.01, device=device, hard_negative_threshold=-1.0,
                      max_hard_negatives=n_local)
    first = LocalTrainer(model, images, labels, cfg, round_index=0, pack=pack).run()
    # Round 1 with a previous local model: the contrastive term is on.
    trainer = LocalTrainer(model, images, labels, cfg, round_index=1, private=first.private,
                           pack=pack)
    return model, trainer


def measure(arch: str, *, batch: int, steps: int, warmup: int, repeats: int, device: str,
            n_local: int, n_pack: int, epochs: int) -> dict:
    dev = resolve_device(device)
    _, trainer = _setup(arch, n_local, max(2, n_local // 10), n_pack, 1000, batch, device)
    t0 = time.perf_counter()
    trainer.prepare()
    _sync(dev)
    prepare_s = time.perf_counter() - t0
    assert trainer.z_prev is not None and trainer.dfc is not None  # the full objective
    n = trainer.num_train_images
    num_classes = trainer.identity_weights.shape[0] + trainer.public_weights.shape[0]

    # The plain step on the same backbone, classes and batches.
    spec = get_backbone_spec(arch)
    fmt = memory_format(dev)
    plain_net = build_backbone(arch).to(dev, memory_format=fmt).train()
    head = NormalizedClassHead(spec.embedding_size, num_classes).to(dev)
    opt = torch.optim.SGD([*plain_net.parameters(), *head.parameters()], lr=0.01,
                          momentum=0.9, weight_decay=5e-4)
    frozen = [build_backbone(arch).to(dev, memory_format=fmt).eval() for _ in range(2)]
    amp = trainer.cfg.amp
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randperm(n, generator=gen)[:batch].to(dev) for _ in range(steps)]

    def plain(idx):
        x = preprocess(trainer.x_u8[idx], spec.contract).contiguous(memory_format=fmt)
        train_step(plain_net, head, opt, x, trainer.y[idx], trainer.cfg.margin, amp=amp)

    @torch.no_grad()
    def frozen_forwards(idx):  # what per-step recomputation of the frozen features would add
        x = preprocess(trainer.x_u8[idx], spec.contract).contiguous(memory_format=fmt)
        with autocast(dev, amp):
            for f in frozen:
                f(x)

    fns = {"plain": plain, "fedfr": trainer.step, "frozen_forwards": frozen_forwards}
    for fn in fns.values():
        for i in range(warmup):
            fn(batches[i % len(batches)])
    _sync(dev)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():  # interleaved: the same load for all three
            start = time.perf_counter()
            for idx in batches:
                fn(idx)
            _sync(dev)
            times[name].append((time.perf_counter() - start) / steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    steps_per_round = epochs * -(-n // batch)
    return {
        "arch": arch,
        "device": str(dev),
        "batch_size": batch,
        "train_images": n,
        "classes": num_classes,
        "plain_img_per_s": batch / med["plain"],
        "fedfr_img_per_s": batch / med["fedfr"],
        "step_ratio_fedfr_over_plain": med["fedfr"] / med["plain"],
        "step_ratio_per_repeat": [f / p for f, p in zip(times["fedfr"], times["plain"],
                                                        strict=True)],
        "prepare_s": prepare_s,
        "round_epochs": epochs,
        "round_ratio_with_prepare": (prepare_s + steps_per_round * med["fedfr"])
        / (steps_per_round * med["plain"]),
        "ratio_if_frozen_models_ran_every_step": (med["fedfr"] + med["frozen_forwards"])
        / med["plain"],
        "repeats": repeats,
        "steps_per_repeat": steps,
    }


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="mbf_tiny")
    p.add_argument("--batch-size", type=int, default=None, help="default: 256 CUDA, 32 CPU")
    p.add_argument("--local-images", type=int, default=None,
                   help="device images (default: 2048 CUDA, 256 CPU)")
    p.add_argument("--pack", type=int, default=None, help="public pack images")
    p.add_argument("--steps", type=int, default=None, help="default: 30 CUDA, 5 CPU")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=10, help="round length for amortizing")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    gpu = resolve_device(args.device).type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
    r = measure(args.arch, batch=args.batch_size or (256 if gpu else 32),
                steps=args.steps or (30 if gpu else 5),
                warmup=args.warmup if args.warmup is not None else (5 if gpu else 1),
                repeats=args.repeats, device=args.device,
                n_local=args.local_images or (2048 if gpu else 256),
                n_pack=args.pack or (4096 if gpu else 512), epochs=args.epochs)
    print(f"{r['arch']} on {r['device']}, batch {r['batch_size']}: plain "
          f"{r['plain_img_per_s']:.1f} img/s, fedfr {r['fedfr_img_per_s']:.1f} img/s; "
          f"step ratio {r['step_ratio_fedfr_over_plain']:.3f} (median of {r['repeats']}); "
          f"round ratio incl. preparation {r['round_ratio_with_prepare']:.3f}; without the "
          f"cache {r['ratio_if_frozen_models_ran_every_step']:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "result": r}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
