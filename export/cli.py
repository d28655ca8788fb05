"""``python -m export``: ONNX export, int8 quantization, verification bundles.

    python -m export onnx --backbone ARCH --weights FILE --out model.onnx [--int8 [--calib DIR]]
    python -m export bundle --model model.onnx --enroll NAME=DIR ... [--heldout DIR]
                            [--cohort DIR] [--min-tar 0.5] [--force] --out BUNDLE
    python -m export verify BUNDLE IMAGE --as NAME
    python -m export identify BUNDLE IMAGE
    python -m export info FILE.onnx|BUNDLE

Exit codes: 0 ok (``verify``: accepted), 1 bad input (the message names it), 2 usage,
3 ``verify`` rejected / ``identify`` found nobody.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_MATCH = 0, 1, 2, 3
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def _images_in(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such image file or folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{path}: no image (.png .jpg .jpeg .bmp .webp) in this folder")
    return files


def _crops(paths: Sequence[Path]) -> np.ndarray:
    """Images as 112x112 crops by a centre crop (int8 calibration inputs only)."""
    from export.preprocess import load_crop

    return np.stack([load_crop(p) for p in paths])


def _face_crops(paths: Sequence[Path], check_crops: bool) -> np.ndarray:
    """The aligned face of every image, as ``device_sdk enroll`` makes it (a photo: its one
    face detected and aligned; a 112x112 image: an aligned crop, checked to look like a face
    unless ``check_crops`` is false); a photo without a face or with several is refused."""
    from export.faces import load_face_crop

    return np.stack([load_face_crop(p, check_crops=check_crops) for p in paths])


def _out(args: argparse.Namespace, obj: dict, text: str) -> None:
    print(json.dumps(obj, indent=2) if args.json else text)


def cmd_onnx(args: argparse.Namespace) -> int:
    from export.onnx_export import export_checkpoint, read_metadata

    out = export_checkpoint(args.weights, args.out, arch=args.backbone,
                            uint8_input=args.uint8_input, opset=args.opset)
    info = {"onnx": str(out), "bytes": out.stat().st_size,
            "metadata": read_metadata(out)}
    if args.int8:
        if args.uint8_input:
            raise ValueError("--int8 quantizes the float-input model; drop --uint8-input")
        q = Path(args.out).with_suffix(".int8.onnx")
        if args.calib:
            from export.preprocess import normalize
            from export.quantize import quantize_static_int8

            files = _images_in(Path(args.calib))
            quantize_static_int8(out, q, normalize(_crops(files)))
            info["int8"] = {"onnx": str(q), "bytes": q.stat().st_size, "mode": "static QDQ",
                            "calibration_images": len(files)}
        else:
            from export.quantize import quantize_dynamic_int8

            quantize_dynamic_int8(out, q)
            info["int8"] = {"onnx": str(q), "bytes": q.stat().st_size, "mode": "dynamic "
                            "(no --calib images; static QDQ needs them)"}
    text = f"wrote {out} ({info['bytes'] / 1e6:.2f} MB)"
    if "int8" in info:
        text += f"; {info['int8']['mode']} int8 {info['int8']['onnx']} " \
                f"({info['int8']['bytes'] / 1e6:.2f} MB)"
    _out(args, info, text)
    return EXIT_OK


def _heldout(path: Path) -> tuple[list[Path], np.ndarray]:
    """A folder of identity sub-folders → (files, labels)."""
    subs = sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    if len(subs) < 2:
        raise ValueError(f"{path}: --heldout needs a folder with one sub-folder of images per "
                         f"identity, at least two (impostor pairs calibrate the threshold)")
    return _labelled(subs)


def _labelled(subs: Sequence[Path]) -> tuple[list[Path], np.ndarray]:
    """The images of identity sub-folders, labelled 0.. by folder."""
    files, labels = [], []
    for k, sub in enumerate(subs):
        f = _images_in(sub)
        files += f
        labels += [k] * len(f)
    return files, np.asarray(labels)


def _cohort(path: Path) -> tuple[list[Path], np.ndarray | None]:
    """Images of other people: a folder of identity sub-folders (labels known), or of images."""
    if path.is_dir() and any(p.is_dir() for p in path.iterdir()):
        return _labelled(sorted(p for p in path.iterdir() if p.is_dir()))
    return _images_in(path), None


def cmd_bundle(args: argparse.Namespace) -> int:
    from export.bundle import create_bundle, format_calibration

    enrolled = {}
    for spec in args.enroll:
        name, sep, folder = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"--enroll {spec!r}: expected NAME=FOLDER_OR_IMAGE")
        enrolled[name] = _face_crops(_images_in(Path(folder)), not args.unchecked_crops)
    held = labels = cohort = cohort_labels = None
    if args.heldout:
        files, labels = _heldout(Path(args.heldout))
        held = _face_crops(files, not args.unchecked_crops)
    if args.cohort:
        files, cohort_labels = _cohort(Path(args.cohort))
        cohort = _face_crops(files, not args.unchecked_crops)
    path, report = create_bundle(args.out, model=args.model, enrolled=enrolled, heldout=held,
                                 heldout_labels=labels, far_target=args.far,
                                 threshold=args.threshold, int8=args.int8,
                                 make_zip=args.zip, cohort=cohort, cohort_labels=cohort_labels,
                                 min_tar=args.min_tar, force=args.force)
    _out(args, report, f"wrote {path}: {len(enrolled)} identities\n"
                       + format_calibration(report["calibration"]))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from export.bundle import Bundle

    b = Bundle.load(args.bundle, variant=args.variant)
    r = b.verify(args.image, args.name, check_crops=not args.unchecked_crops)
    _out(args, r, f"{'ACCEPT' if r['accepted'] else 'REJECT'} {args.name}: score "
                  f"{r['score']:.4f}, threshold {r['threshold']:.4f}")
    return EXIT_OK if r["accepted"] else EXIT_NO_MATCH


def cmd_identify(args: argparse.Namespace) -> int:
    from export.bundle import UNKNOWN, Bundle

    b = Bundle.load(args.bundle, variant=args.variant)
    r = b.identify(args.image, check_crops=not args.unchecked_crops)
    _out(args, r, f"{r['name']}: best {r['best']} score {r['score']:.4f}, threshold "
                  f"{r['threshold']:.4f}")
    return EXIT_NO_MATCH if r["name"] == UNKNOWN else EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from export.bundle import Bundle
    from export.onnx_export import read_metadata

    p = Path(args.path)
    if p.suffix == ".onnx":
        meta = read_metadata(p)
        _out(args, meta, "\n".join(f"{k}: {v}" for k, v in meta.items()))
    else:
        b = Bundle.load(p)
        info = {k: v for k, v in b.manifest.items() if k != "files"}
        info["identities"] = b.names
        _out(args, info, json.dumps(info, indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export",
                                description="ONNX export, int8 quantization, bundles.")
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("onnx", help="export a generic model (backbone alone) to ONNX")
    o.add_argument("--backbone", required=True, help="registered arch (mbf, r50, ...)")
    o.add_argument("--weights", required=True, help="fedfr checkpoint or arcface_torch .pth")
    o.add_argument("--out", required=True)
    o.add_argument("--int8", action="store_true", help="also write OUT.int8.onnx")
    o.add_argument("--calib", help="images (a folder) to calibrate static int8; without: "
                   "dynamic int8")
    o.add_argument("--uint8-input", action="store_true",
                   help="take uint8 (N,112,112,3) RGB and normalize in the graph")
    o.add_argument("--opset", type=int, default=18)
    o.set_defaults(func=cmd_onnx)
    b = sub.add_parser("bundle", help="a verification bundle from an exported model")
    b.add_argument("--model", required=True, help="fp32 ONNX from `onnx` or device_sdk")
    b.add_argument("--enroll", action="append", required=True, metavar="NAME=DIR",
                   help="an identity and its images (repeat)")
    b.add_argument("--heldout", help="folder of identity sub-folders to calibrate on (a "
                   "sub-folder named like an --enroll NAME is that person)")
    b.add_argument("--cohort", help="images of other people (a folder, or identity "
                   "sub-folders), scored against the enrolled and held-out images only")
    b.add_argument("--min-tar", type=float, default=0.5, help="refuse (unless --force) when "
                   "the TAR at the threshold, or its estimate from augmented views of the "
                   "enrolled images when no person has two images, is below this "
                   "(default 0.5)")
    b.add_argument("--force", action="store_true", help="write the bundle even when the "
                   "calibration fails a check (the warnings are kept in bundle.json)")
    b.add_argument("--far", type=float, default=1e-3, help="target FAR (default 1e-3)")
    b.add_argument("--threshold", type=float, help="use this threshold, no calibration")
    b.add_argument("--int8", action="store_true", help="add a static int8 model")
    b.add_argument("--zip", action="store_true", help="also write BUNDLE.zip")
    b.add_argument("--unchecked-crops", action="store_true",
                   help="take 112x112 images as aligned crops without checking that they look "
                        "like a face (a data set's crops); photos are always detected and "
                        "aligned")
    b.add_argument("--out", required=True)
    b.set_defaults(func=cmd_bundle)
    for name, fn in (("verify", cmd_verify), ("identify", cmd_identify)):
        v = sub.add_parser(name, help=f"{name} a face with a bundle (ONNX Runtime)")
        v.add_argument("bundle")
        v.add_argument("image")
        if name == "verify":
            v.add_argument("--as", dest="name", required=True, help="enrolled name")
        v.add_argument("--variant", choices=("fp32", "int8"), default="fp32")
        v.add_argument("--unchecked-crops", action="store_true",
                       help="take an image of the model's crop size as an aligned crop without "
                       "checking that it looks like a face (aligned crops of a data set)")
        v.set_defaults(func=fn)
    i = sub.add_parser("info", help="metadata of an ONNX file or a bundle")
    i.add_argument("path")
    i.set_defaults(func=cmd_info)
    for sp in sub.choices.values():
        sp.add_argument("--json", action="store_true", help="print JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fedfr.errors import FedFRError

    try:
        return args.func(args)
    except (FedFRError, ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"export: error: {msg}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
