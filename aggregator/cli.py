"""``aggregator`` command line: ``serve`` runs the service; ``admin`` wraps every admin endpoint.

Exit codes: 0 ok, 1 the server refused (its problem detail is printed), 2 usage error,
3 the server could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_SERVER = "http://127.0.0.1:8080"


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from aggregator.db import migrate
    from aggregator.service import load_admin_token
    from aggregator.settings import Settings

    settings = Settings.from_env(
        data_dir=args.data_dir, **({"database_url": args.database_url}
                                   if args.database_url else {}))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.url)  # once, before any worker starts
    load_admin_token(settings)
    if not settings.admin_token:
        print(f"[aggregator] admin token: {settings.admin_token_file} (mode 0600)",
              file=sys.stderr)
    os.environ.update(settings.with_(auto_migrate=False).to_env())
    print(f"[aggregator] database {_safe_url(settings.url)}; blobs {settings.blob_dir}; "
          f"http://{args.host}:{args.port}", file=sys.stderr)
    uvicorn.run("aggregator.app:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, access_log=args.access_log)
    return EXIT_OK


def _safe_url(url: str) -> str:
    """The URL without a password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


def cmd_migrate(args: argparse.Namespace) -> int:
    from aggregator.db import migrate
    from aggregator.settings import Settings

    s = Settings(data_dir=args.data_dir, database_url=args.database_url)
    migrate(s.url)
    print(f"database {_safe_url(s.url)} is at the newest schema")
    return EXIT_OK


# ------------------------------------------------------------------------------ admin
def _admin_client(args: argparse.Namespace):
    from aggregator.client import AdminClient

    token = args.token or os.environ.get("FEDFR_ADMIN_TOKEN")
    if not token and args.data_dir:
        f = Path(args.data_dir) / "admin_token"
        if f.exists():
            token = f.read_text().strip()
    if not token:
        _usage_error("no admin token: pass --token, set FEDFR_ADMIN_TOKEN, or --data-dir of "
                     "the server (it holds admin_token)")
    return AdminClient(args.server, token)


def _usage_error(message: str) -> NoReturn:
    """Exit with the documented usage status (2), not 1 (which means the server refused)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _print(args: argparse.Namespace, obj: object, text: str | None = None) -> None:
    if args.json or text is None:
        print(json.dumps(obj, indent=2))
    else:
        print(text)


def _round_line(r: dict) -> str:
    res = f" -> v{r['result_version']}" if r.get("result_version") else ""
    cand = ((r.get("stats") or {}).get("publication") or {}).get("candidate_version")
    if r.get("status") == "rejected" and cand:
        res = f" -> v{cand} rejected"
    reason = f" ({r['reason']})" if r.get("reason") else ""
    return (f"round {r['id']:>4}  {r['status']:<11} base v{r['base_version']}{res}  "
            f"received {r['num_received']}/{r['target']} (min {r['min_devices']}, "
            f"assigned {r['num_assigned']}/{r['capacity']}){reason}")


def _model_line(m: dict) -> str:
    cur = "  (current)" if m.get("current") else ""
    rejected = "  REJECTED" if m.get("status") == "rejected" else ""
    parent = f" parent v{m['parent_version']}" if m.get("parent_version") else ""
    rnd = f" round {m['round_id']}" if m.get("round_id") else ""
    pack = " +public pack" if m.get("public_pack") else ""
    return (f"v{m['version']:<4} {m['arch']:<12} {m['size'] / 1e6:7.2f} MB  "
            f"{_val_cell(m.get('validation'))}{parent}{rnd}{pack}  {m['sha256'][:12]}"
            f"{cur}{rejected}")


def _val_cell(v: dict | None) -> str:
    """The compact validation column: TAR@FAR=1e-2 and EER, or why there is none."""
    if not v:
        return "val —".ljust(25)
    if "error" in v:
        return "val error".ljust(25)
    tar = (v.get("tar_at_far") or {}).get("1e-02")
    eer = v.get("eer")
    return (f"val TAR@1e-2 {'—' if tar is None else f'{tar:.3f}'} "
            f"EER {'—' if eer is None else f'{eer:.3f}'}").ljust(25)


def _validation_text(m: dict) -> str:
    v = m.get("validation")
    if not v:
        return "validation: none (no validation set)"
    if "error" in v:
        return f"validation: error: {v['error']}"
    tars = ", ".join(f"{k} {'—' if x is None else f'{x:.4f}'}"
                     for k, x in (v.get("tar_at_far") or {}).items())
    r1 = v.get("rank1")
    return (f"validation ({v['num_images']} images, {v['num_identities']} identities, "
            f"{v['num_genuine']} genuine / {v['num_impostor']} impostor pairs): TAR@FAR {tars}; "
            f"EER {v['eer']:.4f}; rank-1 {'—' if r1 is None else f'{r1:.4f}'}")


def _float_arg(flag: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        _usage_error(f"{flag} must be a number or 'none', got {raw!r}")


def cmd_admin(args: argparse.Namespace) -> int:
    from aggregator.client import ServerError, Unreachable

    try:
        client = _admin_client(args)
        return _admin(args, client)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except Unreachable as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE


def _admin(args: argparse.Namespace, c) -> int:
    a = args.admin_cmd
    if a == "publish-model":
        pack_sha = val_sha = None
        if args.public_pack:
            pack_sha = c.upload_public_pack(args.public_pack)["sha256"]
        if args.validation_set:
            val_sha = c.upload_validation_set(args.validation_set)["sha256"]
        m = c.publish_model(args.checkpoint, public_pack=pack_sha, parent=args.parent,
                            validation_set=val_sha)
        _print(args, m, f"published {_model_line(m)}\n{_validation_text(m)}")
    elif a == "models":
        ms = c.models()
        _print(args, ms, "\n".join(_model_line(m) for m in ms) or "no model version")
    elif a == "model":
        m = c.model(args.version)
        _print(args, m, f"{_model_line(m)}\n{_validation_text(m)}")
    elif a == "download-model":
        out = c.download_model(args.version, args.out)
        _print(args, {"version": args.version, "path": str(out)},
               f"model v{args.version} written to {out}")
    elif a == "enrollment-token":
        t = c.enrollment_token(label=args.label, max_uses=args.max_uses,
                               expires_in=args.expires_in)
        _print(args, t, t["enrollment_token"])
    elif a == "start-round":
        cfg = {}
        if args.config:
            raw = Path(args.config[1:]).read_text() if args.config.startswith("@") else args.config
            try:
                cfg = json.loads(raw)
            except ValueError as e:
                _usage_error(f"--config is not JSON: {e}")
        body = {"target": args.target, "over_selection": args.over_selection,
                "deadline_seconds": args.deadline, "config": cfg,
                "row_weighting": args.row_weighting, "repeat": args.repeat}
        if args.base is not None:
            body["base_version"] = args.base
        if args.min is not None:
            body["min_devices"] = args.min
        if args.max_regression is not None:
            body["max_regression"] = (None if args.max_regression.lower() == "none"
                                      else _float_arg("--max-regression", args.max_regression))
        r = c.start_round(body)
        _print(args, r, f"started {_round_line(r)}")
    elif a == "rounds":
        rs = c.rounds(args.status)
        _print(args, rs, "\n".join(_round_line(r) for r in rs) or "no round")
    elif a == "round":
        r = c.round(args.round_id)
        _print(args, r, _round_line(r) + ("\n" + json.dumps(r["stats"], indent=2)
                                          if r.get("stats") else ""))
    elif a in ("close", "abort"):
        r = c.close_round(args.round_id) if a == "close" else c.abort_round(args.round_id)
        _print(args, r, _round_line(r))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from aggregator import __version__

    p = argparse.ArgumentParser(prog="aggregator", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"aggregator {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the aggregator (uvicorn)")
    s.add_argument("--data-dir", required=True, type=Path,
                   help="blob store, default SQLite database and admin_token")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--database-url", help="SQLAlchemy URL (default: sqlite in --data-dir), "
                   "e.g. postgresql://user@127.0.0.1:5432/fedfr")
    s.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    s.add_argument("--log-level", default="info")
    s.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True)
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("migrate", help="bring the database to the newest schema")
    m.add_argument("--data-dir", required=True, type=Path)
    m.add_argument("--database-url")
    m.set_defaults(func=cmd_migrate)

    a = sub.add_parser("admin", help="operator commands (the admin REST endpoints)")
    a.add_argument("--server", default=os.environ.get("FEDFR_SERVER", DEFAULT_SERVER))
    a.add_argument("--token", help="admin token (default: $FEDFR_ADMIN_TOKEN or "
                   "DATA_DIR/admin_token)")
    a.add_argument("--data-dir", type=Path, help="the server's data dir, to read admin_token")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_admin)
    asub = a.add_subparsers(dest="admin_cmd", required=True)
    x = asub.add_parser("publish-model", help="publish a checkpoint as a new model version")
    x.add_argument("checkpoint", type=Path, help="fedfr checkpoint (fedfr pretrain --out)")
    x.add_argument("--public-pack", type=Path, help="public pack (fedfr public-pack --out)")
    x.add_argument("--parent", type=int, help="parent model version")
    x.add_argument("--validation-set", type=Path,
                   help="the server's held-out validation set (fedfr public-pack "
                        "--validation-out); default: the parent's. Every version with one is "
                        "evaluated on it")
    asub.add_parser("models", help="list model versions (val: TAR@FAR=1e-2, EER)")
    x = asub.add_parser("model", help="show a model version and its validation metrics")
    x.add_argument("version", type=int)
    x = asub.add_parser("download-model", help="download a model version's checkpoint")
    x.add_argument("version", type=int)
    x.add_argument("--out", required=True, type=Path, help="checkpoint file to write")
    x = asub.add_parser("enrollment-token", help="create a device enrollment token")
    x.add_argument("--label", default="")
    x.add_argument("--max-uses", type=int, default=1)
    x.add_argument("--expires-in", type=float, help="seconds")
    x = asub.add_parser("start-round", help="start a round")
    x.add_argument("--base", type=int, help="base model version (default: current)")
    x.add_argument("--target", type=int, required=True, help="updates that end the round")
    x.add_argument("--min", type=int, help="quorum at the deadline (default: target)")
    x.add_argument("--over-selection", type=float, default=1.3)
    x.add_argument("--deadline", type=float, default=3600.0, help="seconds")
    x.add_argument("--config", help="training config: JSON, or @FILE")
    x.add_argument("--row-weighting", choices=("uniform", "samples"), default="uniform")
    x.add_argument("--repeat", type=int, default=1, help="rounds back to back")
    x.add_argument("--max-regression", metavar="MARGIN",
                   help="publication policy: reject the new version if its validation metric "
                        "drops more than MARGIN below the base's; 'none': always publish "
                        "(default: the server's FEDFR_PUBLISH_MAX_REGRESSION)")
    x = asub.add_parser("rounds", help="list rounds")
    x.add_argument("--status")
    for name in ("round", "close", "abort"):
        x = asub.add_parser(name, help={"round": "show a round", "close": "close a round now "
                                        "(aggregate if the quorum arrived)",
                                        "abort": "abort an open round"}[name])
        x.add_argument("round_id", type=int)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
