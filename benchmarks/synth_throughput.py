"""Rendering throughput of the synthetic face generator, images/s on one process.

Renders ``--images`` 112x112 faces per repeat (fresh identities and image indices each time), in
the public domain and in device domains, and reports the median over ``--repeats`` repeats.
Data generation must not be the bottleneck of training: compare with
``benchmarks/train_throughput.py`` on the same machine.

    python benchmarks/synth_throughput.py --images 2048 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from fedfr.data.synthetic import SyntheticFaces


def measure(faces: SyntheticFaces, domain, n: int, repeats: int, batch: int) -> list[float]:
    rates = []
    for r in range(repeats):
        ids = np.arange(n) % 997 + r * 1000
        idx = np.arange(n) + r * n
        start = time.perf_counter()
        for s in range(0, n, batch):
            faces.render(ids[s : s + batch], idx[s : s + batch], domain)
        rates.append(n / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--devices", type=int, default=4, help="device domains to average over")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    faces = SyntheticFaces(seed=0)
    faces.render([0], [0])  # warm-up (scratch buffers)
    results = {}
    rates = measure(faces, None, args.images, args.repeats, args.batch)
    results["public"] = statistics.median(rates)
    dev = []
    for d in range(args.devices):
        dev += measure(faces, faces.device_domain(d), args.images, args.repeats, args.batch)
    results["devices"] = statistics.median(dev)
    for k, v in results.items():
        print(f"{k:>8}: {v:8.0f} img/s (median of {args.repeats} x {args.images} images, "
              f"batch {args.batch})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
