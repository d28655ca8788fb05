"""``device_sdk`` (also ``python -m device_sdk``): the device side of FedFR on the command line.

::

    device_sdk [--home DIR] [--json] register --server URL --enrollment-token TOKEN [--force]
    device_sdk [--home DIR] [--json] enroll NAME IMAGE [IMAGE ...] [--force] [--unchecked-crops]
    device_sdk [--home DIR] [--json] identities
    device_sdk [--home DIR] [--json] forget NAME
    device_sdk [--home DIR] [--json] train [--rounds N | --forever] [--wait SECONDS]
                                           [--device auto|cpu|cuda]
    device_sdk [--home DIR] [--json] export --out BUNDLE [--int8] [--far 1e-3] [--zip]
                                            [--min-tar 0.5] [--force]
    device_sdk [--home DIR] [--json] verify IMAGE --as NAME [--bundle BUNDLE] [--unchecked-crops]
    device_sdk [--home DIR] [--json] identify IMAGE [--bundle BUNDLE] [--unchecked-crops]
    device_sdk [--home DIR] [--json] status

Every command is a function of :mod:`device_sdk.api`. The device home is ``--home``, else
``$FEDFR_DEVICE_HOME``, else ``~/.fedfr-device``. ``--home`` and ``--json`` may also follow
the subcommand. With ``--json`` the result is one JSON document on stdout, and a failure is
``{"error": {"exit_code", "type", "message"[, "status", "reason", "detail"]}}`` on stdout
as well as the message on stderr.

Exit codes (stable):

====  ==========================================================================
0     success
1     bad input: an unreadable or faceless image, a bad name, an unknown identity,
      an unusable home, a failed write... (the message names the file or value)
2     usage: unknown command or option, missing argument
3     the server cannot be reached (after retries)
4     the server refused the request (its ``reason`` is printed)
5     ``train --wait``: no round for this device within the wait
130   interrupted
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from device_sdk import __version__, api
from device_sdk.errors import EnrollError, ServerError, ServerUnavailable
from device_sdk.training import NoRoundError
from fedfr.errors import FedFRError
from fedfr.io import jsonable

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_NO_ROUND = 5
EXIT_INTERRUPTED = 130

PROG = "device_sdk"


def _common(p: argparse.ArgumentParser, *, top: bool) -> None:
    # on the subcommands the defaults are SUPPRESS so that they do not undo the top level's
    d = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("--home", metavar="DIR", help="the device home (default: "
                   "$FEDFR_DEVICE_HOME, else ~/.fedfr-device)", **({"default": None} | d))
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)",
                   **({"default": False} | d))
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages",
                   **({"default": False} | d))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="The FedFR device SDK: register with an aggregator, enroll "
        "the identities this device recognizes. Nothing about them ever leaves the device.",
        epilog="exit codes: 0 ok, 1 bad input, 2 usage, 3 server unreachable, "
        "4 server refused, 5 no round within --wait")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("register", help="register this device with an aggregator",
                       description="Register with the aggregator and store the device token. "
                       "Sends the enrollment token, the platform and the SDK version only.")
    p.add_argument("--server", required=True, metavar="URL", help="the aggregator's URL")
    p.add_argument("--enrollment-token", required=True, metavar="TOKEN",
                   help="from `aggregator admin enrollment-token`")
    p.add_argument("--force", action="store_true",
                   help="register again, replacing the stored credentials")
    _common(p, top=False)
    p.set_defaults(func=_register)

    p = sub.add_parser("enroll", help="enroll an identity, or add images to it",
                       description="Enroll NAME with images: a 112x112 image is taken as an "
                       "aligned crop when it looks like a face (--unchecked-crops: as it is); "
                       "other photos must show exactly one face, which is detected and "
                       "aligned. If any file fails, nothing is stored.")
    p.add_argument("name", metavar="NAME", help="1-64 characters, no / \\ or control chars")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (JPEG, PNG...)")
    p.add_argument("--force", action="store_true", help="enroll even when the face matches "
                   "another enrolled identity (the same person under two names)")
    _unchecked(p)
    _common(p, top=False)
    p.set_defaults(func=_enroll)

    p = sub.add_parser("identities", help="list the enrolled identities",
                       description="List the enrolled identities and their image counts.")
    _common(p, top=False)
    p.set_defaults(func=_identities)

    p = sub.add_parser("forget", help="remove an identity and everything stored for it",
                       description="Remove NAME: its images and its private state.")
    p.add_argument("name", metavar="NAME")
    _common(p, top=False)
    p.set_defaults(func=_forget)

    p = sub.add_parser("train", help="take part in federated rounds",
                       description="Check in with the aggregator; on a task download the "
                       "model (and public pack), train on the enrolled identities, upload the "
                       "shared tensors. Waits as the server's Retry-After says between "
                       "check-ins.")
    # not an argparse mutually exclusive group: it misses "--rounds 1 --forever" (1 is the
    # default object), so _train checks the pair itself
    p.add_argument("--rounds", type=int, default=None, metavar="N",
                   help="rounds to complete (default 1)")
    p.add_argument("--forever", action="store_true", help="keep taking part until stopped")
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                   help="give up (exit 5) after this long without a round (default: wait)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda...")
    _common(p, top=False)
    p.set_defaults(func=_train, parser=p)

    p = sub.add_parser("export", help="export the personalized recognizer as a bundle",
                       description="Write the personalized recognizer (ONNX), the enrolled "
                       "identities' templates and a threshold calibrated at --far.")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory (or "
                   ".zip with --zip)")
    p.add_argument("--int8", action="store_true", help="add an int8 model (static, "
                   "calibrated on this device's images)")
    p.add_argument("--far", type=float, default=1e-3, help="false accept rate the threshold "
                   "is calibrated at (default 1e-3)")
    p.add_argument("--zip", action="store_true", help="write one .zip file")
    p.add_argument("--min-tar", type=float, default=None, metavar="RATE", help="refuse "
                   "(unless --force) when the TAR at the threshold, or its estimate from "
                   "augmented views of the enrolled photos when nobody has two, is below "
                   "RATE (default 0.5)")
    p.add_argument("--force", action="store_true", help="write the bundle even when the "
                   "calibration fails a check (the warnings are kept in bundle.json)")
    _common(p, top=False)
    p.set_defaults(func=_export)

    for name, helptext in (("verify", "is the face in IMAGE the enrolled NAME?"),
                           ("identify", "who is the face in IMAGE?")):
        p = sub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:]
                           + " Runs the exported bundle with ONNX Runtime.")
        p.add_argument("image", metavar="IMAGE", help="a photo (one face) or an aligned crop")
        if name == "verify":
            p.add_argument("--as", dest="name", required=True, metavar="NAME")
        p.add_argument("--bundle", default=None, help="default: the last export")
        p.add_argument("--int8", action="store_true", help="use the bundle's int8 model")
        _unchecked(p)
        _common(p, top=False)
        p.set_defaults(func=_verify if name == "verify" else _identify)

    p = sub.add_parser("status", help="what this device holds",
                       description="Registration, identities, models, rounds trained, "
                       "traffic so far, the last bundle.")
    _common(p, top=False)
    p.set_defaults(func=_status)
    return parser


def _emit(args: argparse.Namespace, obj: object, text: str) -> None:
    if args.json:
        print(json.dumps(obj, indent=2, default=jsonable))
    else:
        print(text)


def _register(args: argparse.Namespace) -> int:
    r = api.register(args.home, args.server, args.enrollment_token, force=args.force)
    _emit(args, r, f"registered with {r['server']} as device {r['device_id']}")
    return EXIT_OK


def _enroll(args: argparse.Namespace) -> int:
    bar = None
    if not args.json and sys.stderr.isatty() and len(args.images) > 1:
        from tqdm import tqdm

        bar = tqdm(total=len(args.images), desc="aligning", unit="image", file=sys.stderr,
                   leave=False)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)

    try:
        r = api.enroll(args.home, args.name, args.images, progress=progress, force=args.force,
                       check_crops=not args.unchecked_crops)
    finally:
        if bar is not None:
            bar.close()
    verb = "enrolled" if r["created"] else "updated"
    dup = f", {r['skipped_duplicates']} duplicate(s) skipped" if r["skipped_duplicates"] else ""
    c = r.get("identity_check") or {}
    near = ""
    if c.get("closest") is not None:
        near = (f"\nclosest other identity {c['closest']!r}: score {c['score']:.4f}, threshold "
                f"{c['threshold']:.4f} ({c['threshold_source']})"
                + (" — enrolled anyway (--force)" if c.get("forced") else ""))
    _emit(args, r, f"{verb} {r['name']!r}: {r['added']} image(s) added{dup}, "
                   f"{r['total_images']} in all{near}")
    return EXIT_OK


def _identities(args: argparse.Namespace) -> int:
    rows = api.identities(args.home)
    if args.json:
        _emit(args, rows, "")
    elif not rows:
        print("no identity enrolled")
    else:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['images']} image(s)")
    return EXIT_OK


def _forget(args: argparse.Namespace) -> int:
    r = api.forget(args.home, args.name)
    _emit(args, r, f"forgot {r['name']!r} ({r['removed_images']} image(s) removed)")
    return EXIT_OK


def _train(args: argparse.Namespace) -> int:
    if args.forever and args.rounds is not None:
        args.parser.error("argument --forever: not allowed with argument --rounds")  # exit 2
    if args.rounds is not None and args.rounds < 1:
        args.parser.error(f"argument --rounds: must be >= 1, got {args.rounds}")
    rounds = None if args.forever else (args.rounds or 1)
    quiet = args.json

    def on_event(kind: str, d: dict) -> None:
        if quiet:
            return
        if kind == "waiting":
            print(f"no round for this device now; checking in again in {d['seconds']:g}s",
                  file=sys.stderr)
        elif kind == "training":
            print(f"round {d['round_id']}: training model v{d['model_version']} on "
                  f"{d['images']} images of {d['identities']} identities ({d['device']})",
                  file=sys.stderr)
        elif kind == "upload_refused":
            print(f"round {d['round_id']}: the server no longer takes this update "
                  f"({d['reason']}); the local training is kept", file=sys.stderr)
        elif kind == "resuming_upload":
            print(f"round {d['round_id']}: sending the update an earlier run did not finish",
                  file=sys.stderr)

    r = api.train(args.home, rounds=rounds, wait=args.wait,
                  device=args.device, progress=not args.json and sys.stderr.isatty(),
                  on_event=on_event)
    lines = []
    for x in r["rounds"]:
        t = x.get("timings", {})
        m = x.get("metrics", {})
        lines.append(f"round {x['round_id']} (model v{x['model_version']}): "
                     + ("update accepted" if x["accepted"] else "update not taken")
                     + (f", {x['update_bytes'] / 1e6:.2f} MB up" if "update_bytes" in x else "")
                     + (f", loss {m['loss']:.3f}" if "loss" in m else "")
                     + (f", download {t['download_s']:.1f}s train {t['train_s']:.1f}s "
                        f"upload {t['upload_s']:.1f}s" if t else ""))
    lines.append(f"{r['bytes_sent'] / 1e6:.2f} MB sent, {r['bytes_received'] / 1e6:.2f} MB "
                 f"received")
    _emit(args, r, "\n".join(lines))
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from export.bundle import format_calibration

    r = api.export(args.home, args.out, int8=args.int8, far_target=args.far,
                   make_zip=args.zip, min_tar=args.min_tar, force=args.force)
    _emit(args, r, f"exported {r['bundle']}: {len(r['identities'])} identities, model "
                   f"v{r['model_version']}\n" + format_calibration(r["report"]["calibration"]))
    return EXIT_OK


def _unchecked(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unchecked-crops", action="store_true",
                   help="take 112x112 images as aligned crops without checking that they look "
                        "like a face (crops of a data set, e.g. synthetic faces)")


def _verify(args: argparse.Namespace) -> int:
    r = api.verify(args.home, args.image, args.name, bundle=args.bundle,
                   variant="int8" if args.int8 else "fp32",
                   check_crops=not args.unchecked_crops)
    verdict = "ACCEPTED" if r["accepted"] else "REJECTED"
    _emit(args, r, f"{verdict}: {r['name']!r} score {r['score']:.4f} "
                   f"(threshold {r['threshold']:.4f})")
    return EXIT_OK


def _identify(args: argparse.Namespace) -> int:
    r = api.identify(args.home, args.image, bundle=args.bundle,
                     variant="int8" if args.int8 else "fp32",
                     check_crops=not args.unchecked_crops)
    who = repr(r["name"]) if r["known"] else f"unknown (closest {r['best']!r})"
    _emit(args, r, f"{who}: score {r['score']:.4f} (threshold {r['threshold']:.4f})")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    r = api.status(args.home)
    t = r["traffic"]
    pend = r["pending_upload"]
    text = "\n".join([
        f"home:        {r['home']}",
        "registered:  " + (f"{r['server']} as device {r['device_id']}" if r["registered"]
                            else "no"),
        f"identities:  {r['identities']} ({r['images']} images)",
        f"rounds:      {r['rounds_trained']} trained"
        + (f", personalized from model v{r['personalized_from_version']}"
           if r["personalized_from_version"] is not None else ""),
        f"pending:     {'round ' + str(pend['round_id']) if pend else 'nothing'}",
        f"traffic:     {t['sent']} bytes sent, {t['received']} received",
        f"last bundle: {r['last_bundle'] or '-'}"])
    _emit(args, r, text)
    return EXIT_OK


def _fail(args: argparse.Namespace, code: int, exc: BaseException, message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        err: dict = {"exit_code": code, "type": type(exc).__name__, "message": message}
        if isinstance(exc, ServerError):
            err.update(status=exc.status, reason=exc.reason, detail=exc.detail)
        if isinstance(exc, EnrollError):
            err["files"] = [{"file": f, "message": m} for f, m in exc.problems]
        print(json.dumps({"error": err}, indent=2))
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except NoRoundError as e:
        return _fail(args, EXIT_NO_ROUND, e, str(e))
    except ServerUnavailable as e:
        return _fail(args, EXIT_UNREACHABLE, e, str(e))
    except ServerError as e:
        return _fail(args, EXIT_REFUSED, e, str(e))
    except FedFRError as e:
        return _fail(args, EXIT_BAD_INPUT, e, str(e))
    except OSError as e:  # a full disk, a read-only home...: nothing was stored
        return _fail(args, EXIT_BAD_INPUT, e, f"{e.filename or ''}: {e.strerror or e}".lstrip(
            ": "))
    except KeyboardInterrupt as e:
        return _fail(args, EXIT_INTERRUPTED, e, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
