"""Training throughput of the plain CosFace step (forward + backward + SGD step), in images/s.

Runs :func:`fedfr.train.pretrain.train_step` — the step ``fedfr pretrain`` uses — on random
input for each backbone, on CPU or CUDA (bf16 autocast + channels_last there). Each
configuration is timed ``--repeats`` times over ``--steps`` steps after ``--warmup`` steps; the
median images/s is reported (with min/max), so a noisy shared machine shows as spread rather
than as a wrong number.

    python benchmarks/train_throughput.py --archs mbf,r50 --batch-size 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from fedfr.backbones import build_backbone, get_backbone_spec
from fedfr.heads import MARGIN_PRESETS, NormalizedClassHead
from fedfr.train.pretrain import train_step
from fedfr.train.runtime import memory_format, resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(arch: str, *, batch_size: int, num_classes: int, steps: int, warmup: int,
            repeats: int, device: torch.device, amp: bool) -> dict[str, object]:
    spec = get_backbone_spec(arch)
    fmt = memory_format(device)
    backbone = build_backbone(arch).to(device, memory_format=fmt).train()
    head = NormalizedClassHead(spec.embedding_size, num_classes).to(device)
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.01, momentum=0.9,
                          weight_decay=5e-4)
    h, w = spec.contract.size
    x = torch.randn(batch_size, 3, h, w, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    margin = MARGIN_PRESETS["cosface"]
    for _ in range(warmup):
        train_step(backbone, head, opt, x, y, margin, amp=amp)
    _sync(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            train_step(backbone, head, opt, x, y, margin, amp=amp)
        _sync(device)
        rates.append(batch_size * steps / (time.perf_counter() - start))
    return {
        "arch": arch,
        "batch_size": batch_size,
        "input": f"{h}x{w}",
        "num_classes": num_classes,
        "img_per_s_median": statistics.median(rates),
        "img_per_s_min": min(rates),
        "img_per_s_max": max(rates),
        "repeats": repeats,
        "steps_per_repeat": steps,
    }


def machine() -> dict[str, object]:
    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--archs", default="mbf,r50", help="comma-separated backbone names")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: 256 on CUDA, 32 on CPU")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=None, help="default: 50 on CUDA, 3 on CPU")
    p.add_argument("--warmup", type=int, default=None, help="default: 10 on CUDA, 1 on CPU")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA (no bf16 autocast)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
    bs = args.batch_size or (256 if gpu else 32)
    steps = args.steps or (50 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    results = []
    for arch in args.archs.split(","):
        r = measure(arch.strip(), batch_size=bs, num_classes=args.num_classes, steps=steps,
                    warmup=warmup, repeats=args.repeats, device=device,
                    amp=gpu and not args.no_amp)
        results.append(r)
        print(f"{r['arch']:>10} bs={bs} {r['input']}: {r['img_per_s_median']:9.1f} img/s "
              f"(min {r['img_per_s_min']:.1f}, max {r['img_per_s_max']:.1f}, "
              f"{args.repeats}x{steps} steps)", flush=True)
    report = {"device": str(device), "amp_bf16": gpu and not args.no_amp, "machine": machine(),
              "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
