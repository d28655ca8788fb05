"""The whole product, end to end, on one machine (the README's main command).

::

    python -m device_sdk.demo --workdir DIR [--devices 4] [--rounds 2] [--profile fair]
                              [--base dlib_r34|pretrain] [--pretrain-epochs E] [--seed S]
                              [--pack-per-class 3]

1. synthesize the profile's data set; the generic model is dlib's pretrained face recognizer
   (``--base dlib_r34``, the default; its public class embeddings are the public identities'
   mean embeddings) or the profile's backbone pretrained on the public split
   (``--base pretrain``); build the public pack (:func:`fedfr.sim.runner.prepare_seed`, the
   harness's own set-up);
2. start the aggregator (``aggregator serve``: SQLite + files in ``DIR/server``) on a free
   loopback port, publish the model with its public pack, create an enrollment token and
   start ``R`` rounds (``repeat``) of ``N`` devices with the product's default round
   (:data:`fedfr.train.methods.PRODUCT_ROUND`, chosen by the fair protocol) over the
   profile's local configuration;
3. run ``N`` devices, each a chain of ``device_sdk`` commands, every one its own OS process
   talking HTTP to the server: ``register`` (the devices one after the other, so that device
   ids — and the seeds derived from them — follow the synthetic devices' order), then, all
   devices at once, ``enroll`` every registered identity of the synthetic device (its train
   images, as files), ``train --rounds R``, ``export``, then ``verify`` a held-out image of one
   of its identities and ``identify`` a stranger's image;
4. evaluate, with the same metrics as the research harness: the generic model before (v1)
   and after federated learning (the last version, downloaded with the admin API), and each
   device's recognizer before (the generic model) and after (its exported bundle, run by
   ONNX Runtime) on its held-out images and strangers, and the generic models on the real
   photos' pairs (:mod:`device_sdk.realfaces`); print the table and write
   ``DIR/report.json``.

Nothing is shared between the devices and the demo process except the aggregator's HTTP API
and each device's exported bundle (which is the device's to use).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoError(RuntimeError):
    """A step of the demo failed (the message says which, with the process's output)."""


# ------------------------------------------------------------------------- the server
class AggregatorProcess:
    """``aggregator serve`` in a subprocess, stopped on exit."""

    def __init__(self, data_dir: Path, *, port: int = 0, env: dict | None = None) -> None:
        self.data_dir = data_dir
        self.extra_env = dict(env or {})
        self.port = port or _free_port()
        self.token = "fat_demo_" + secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> AggregatorProcess:
        import httpx

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / "server.log"
        self._log = open(self.log_path, "ab")  # closed in __exit__
        env = {**os.environ, "FEDFR_ADMIN_TOKEN": self.token,
               "FEDFR_CHECKIN_RETRY_AFTER": "1", "FEDFR_SWEEP_INTERVAL": "0.5",
               **self.extra_env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator", "serve", "--data-dir", str(self.data_dir),
             "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            if self.proc.poll() is not None:
                raise DemoError(f"the aggregator exited with {self.proc.returncode}; see "
                                f"{self.log_path}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise DemoError(f"the aggregator did not start in 60 s; see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


# ------------------------------------------------------------------------- one device
def _sdk(home: Path, *args: str, env: dict, timeout: float) -> dict:
    """One ``device_sdk --json`` command in its own process; its JSON answer."""
    cmd = [sys.executable, "-m", "device_sdk", "--home", str(home), "--json", *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout, check=False)
    if p.returncode != 0:
        raise DemoError(f"device_sdk {args[0]} (home {home}) exited {p.returncode}:\n"
                        f"{p.stderr[-3000:]}")
    return json.loads(p.stdout)


def run_device(home: Path, split, *, server: str, token: str, rounds: int, bundle: Path,
               threads: int, device: str, timeout: float, far: float = 1e-2,
               register: bool = True) -> dict:
    """A device's life, command by command (each a separate ``device_sdk`` process). The
    bundle's threshold is calibrated at ``far`` (the table's personalized operating point:
    a device holds a handful of identities, FAR 1e-2 is its usual setting)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "FEDFR_DEVICE_HOME": str(home)}
    out: dict = {"home": str(home)}
    t0 = time.perf_counter()
    if register:
        out["register"] = _sdk(home, "register", "--server", server, "--enrollment-token",
                               token, env=env, timeout=120)
    files = split.train.files
    labels = np.asarray(split.train.labels)
    # the synthetic benchmark's crops are cartoons MTCNN does not always call faces: taken as
    # the aligned crops they are (--unchecked-crops); a real photo goes through detection
    for k in np.unique(labels):
        _sdk(home, "enroll", f"person-{int(k)}", *[str(files[i]) for i in
                                                   np.flatnonzero(labels == k)],
             "--unchecked-crops", env=env, timeout=300)
    out["enroll_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    out["train"] = _sdk(home, "train", "--rounds", str(rounds), "--wait", str(timeout),
                        "--device", device, env=env, timeout=timeout + 600)
    out["train_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    out["export"] = _sdk(home, "export", "--out", str(bundle), "--far", str(far), env=env,
                         timeout=600)
    out["export_s"] = time.perf_counter() - t2
    test, test_labels = split.test.files, np.asarray(split.test.labels)
    probe = int(np.flatnonzero(test_labels == test_labels[0])[0])
    out["verify"] = _sdk(home, "verify", str(test[probe]), "--as",
                         f"person-{int(test_labels[probe])}", "--unchecked-crops", env=env,
                         timeout=120)
    out["identify_stranger"] = _sdk(home, "identify", str(split.strangers.files[0]),
                                    "--unchecked-crops", env=env, timeout=120)
    out["status"] = _sdk(home, "status", env=env, timeout=60)
    return out


# ------------------------------------------------------------------------- the demo
def _metrics(ds, embed, device_embed=None) -> dict:
    from fedfr.evaluation import evaluate_dataset, summarize

    report, _ = evaluate_dataset(embed, ds, device_embedders=device_embed)
    return {"generic": summarize(report["generic"]),
            "generic_device_domains": summarize(report["generic_device_domains"]),
            "personalized": report["devices"]["mean"],
            "per_device": {r["device"]: summarize(r) for r in report["devices"]["per_device"]}}


def run_demo(workdir: Path, *, devices: int | None = 4, rounds: int | None = 2,
             profile: str = "fair", pretrain_epochs: int | None = None, seed: int = 0,
             device: str = "cpu", progress: bool = True, timeout: float = 1800.0,
             pack_per_class: int | None = 3, base: str = "dlib_r34") -> dict:
    """Run the demo (module doc); returns the report also written to ``workdir/report.json``.

    ``base``: ``"dlib_r34"`` (the default: dlib's pretrained network,
    :func:`fedfr.backbones.dlib_weights.save_dlib_checkpoint`, with the public split's class
    means as its public class embeddings) or ``"pretrain"`` (the profile's backbone pretrained
    on its public split)."""
    from aggregator.client import AdminClient
    from export.bundle import Bundle
    from fedfr.data.manifest import SyntheticDataset
    from fedfr.fl import GlobalModel
    from fedfr.io import write_json_atomic
    from fedfr.sim.runner import SimConfig, prepare_seed
    from fedfr.train.local import PublicPack
    from fedfr.train.methods import product_round_config
    from fedfr.train.recognizer import generic_embedder

    def say(msg: str) -> None:
        if progress:
            print(f"[demo] {msg}", file=sys.stderr, flush=True)

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    sim = SimConfig(profile=profile, methods=("fedfr",), out=workdir, device=device,
                    pretrain_epochs=pretrain_epochs, progress=progress)
    if base not in ("pretrain", "dlib_r34"):
        raise DemoError(f"--base must be pretrain or dlib_r34, got {base!r}")
    if base == "dlib_r34":
        sim = replace(sim, pretrained=_dlib_base(sim, seed, say))
    rounds = rounds or sim.num_rounds
    say(f"data set '{profile}' (seed {seed}) and the pretrained generic model "
        f"({'dlib_r34' if base == 'dlib_r34' else sim.sim_profile.arch}); reused when present")
    setup = prepare_seed(sim, seed)
    timings["prepare_s"] = time.perf_counter() - t0
    files_ds = SyntheticDataset.load(workdir / "data" / f"{sim.data_tag}-seed{seed}")
    n = len(files_ds.devices) if devices is None else min(int(devices), len(files_ds.devices))
    if not 1 <= n <= len(files_ds.devices):
        raise DemoError(f"--devices must be 1..{len(files_ds.devices)} for profile "
                        f"{profile!r}, got {n}")
    if rounds < 1:
        raise DemoError(f"--rounds must be >= 1, got {rounds}")
    splits = files_ds.devices[:n]
    ds = replace(setup.dataset, devices=setup.dataset.devices[:n])

    # The generic model as the aggregator's version 1.
    generic_path = workdir / "generic-v1.safetensors"
    setup.model.save(generic_path)
    # The devices' pack: `pack_per_class` public images per identity (every device downloads
    # it and embeds it every round; the harness's pack may hold every public image).
    pack = setup.pack
    if pack_per_class is not None:
        pack = PublicPack.from_images(setup.dataset.public.load(), setup.dataset.public.labels,
                                      per_class=pack_per_class, seed=seed)
    pack_path = pack.save(workdir / "public-pack.safetensors")
    # The server's validation set: identities of the eval_devices split (nobody trains on
    # them, and they are not the ones the table's generic columns are measured on).
    from fedfr.fl.wire import save_validation_set

    val = setup.dataset.eval_devices.images
    val_path = save_validation_set(workdir / "validation.safetensors", val.load(), val.labels,
                                   metadata={"source": f"{profile} seed {seed} eval_devices"})
    server_dir = workdir / "server"
    shutil.rmtree(server_dir, ignore_errors=True)
    for d in ("devices", "bundles"):
        shutil.rmtree(workdir / d, ignore_errors=True)

    with AggregatorProcess(server_dir) as srv, AdminClient(srv.url, srv.token) as admin:
        say(f"aggregator on {srv.url} (SQLite + files in {server_dir})")
        pack = admin.upload_public_pack(pack_path)
        val_sha = admin.upload_validation_set(val_path)["sha256"]
        v1 = admin.publish_model(generic_path, public_pack=pack["sha256"],
                                 validation_set=val_sha)
        enroll_token = admin.enrollment_token(label="demo", max_uses=n)["enrollment_token"]
        config = product_round_config(sim.local_config(), setup.model.arch)
        first = admin.start_round({"target": n, "min_devices": n, "over_selection": 1.0,
                                   "deadline_seconds": timeout, "config": config,
                                   "repeat": rounds})
        say(f"published model v{v1['version']} + public pack ({pack['size'] / 1e6:.1f} MB); "
            f"{rounds} round(s) of {n} devices, method {config['method']} "
            f"(lr {config['local']['lr']}, BatchNorm {config['local']['bn_policy']})")

        # The devices: one thread per device drives its own device_sdk processes.
        threads = max(1, (os.cpu_count() or 1) // n)
        results: dict[str, dict] = {}
        errors: list[BaseException] = []

        # Registered one after the other, so that device ids (which seed each device's local
        # step) follow the synthetic devices' order and a rerun trains the same way.
        registered = {}
        for split in splits:
            home = workdir / "devices" / split.name
            registered[split.name] = _sdk(
                home, "register", "--server", srv.url, "--enrollment-token", enroll_token,
                env={**os.environ, "FEDFR_DEVICE_HOME": str(home)}, timeout=120)

        def life(split) -> None:
            try:
                results[split.name] = run_device(
                    workdir / "devices" / split.name, split, server=srv.url,
                    token=enroll_token, rounds=rounds,
                    bundle=workdir / "bundles" / split.name, threads=threads,
                    device=device, timeout=timeout, register=False)
                results[split.name]["register"] = registered[split.name]
            except BaseException as e:  # reported after the join
                errors.append(e)

        t1 = time.perf_counter()
        say(f"{n} devices, each a chain of device_sdk processes: register, enroll, train "
            f"{rounds} round(s), export, verify")
        workers = [threading.Thread(target=life, args=(s,), daemon=True) for s in splits]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            raise errors[0]
        timings["devices_s"] = time.perf_counter() - t1
        all_rounds = [r for r in admin.rounds() if r["id"] >= first["id"]]
        final = max(all_rounds, key=lambda r: r["id"])
        if final["status"] != "completed" or final.get("result_version") is None:
            raise DemoError(f"round {final['id']} is {final['status']}, not completed")
        last_path = admin.download_model(final["result_version"],
                                         workdir / f"generic-v{final['result_version']}"
                                         ".safetensors")
        models = admin.models()

    # Evaluation: generic before/after; personalized before (generic) / after (bundles, ORT).
    t2 = time.perf_counter()
    say("evaluating: generic models (PyTorch) and every device's bundle (ONNX Runtime)")
    before = _metrics(ds, generic_embedder(setup.model))
    after_model = GlobalModel.load(last_path)
    bundles = {name: Bundle.load(r["export"]["bundle"]) for name, r in results.items()}
    after = _metrics(ds, generic_embedder(after_model), lambda d: bundles[d.name].embed)
    real = _real_faces({"pretrained": setup.model, "after_fl": after_model}, say)
    timings["evaluate_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0

    per_device = {}
    for name, r in sorted(results.items()):
        ups = [x for x in r["train"]["rounds"] if x.get("accepted")]
        per_device[name] = {
            "bundle": r["export"]["bundle"],
            "identities": len(r["export"]["identities"]),
            "threshold": r["export"]["threshold"],
            "rounds": len(ups),
            "bytes_sent": r["status"]["traffic"]["sent"],
            "bytes_received": r["status"]["traffic"]["received"],
            "update_bytes": sum(x["update_bytes"] for x in ups),
            "train_timings": [x.get("timings", {}) for x in ups],
            "verify_genuine": r["verify"],
            "identify_stranger": r["identify_stranger"],
            "seconds": {k: r[k] for k in ("enroll_s", "train_s", "export_s")},
        }
    report = {
        "profile": profile, "seed": seed, "devices": n, "rounds": rounds,
        "arch": setup.model.arch, "round_config": config,
        "model_versions": [{k: m.get(k) for k in ("version", "parent_version", "round_id",
                                                     "sha256", "size", "status", "validation")}
                           for m in models],
        "rounds_run": [{k: r.get(k) for k in ("id", "status", "base_version",
                                              "result_version", "stats")} for r in all_rounds],
        "metrics": {"pretrained": before, "after_fl": after},
        "real_faces": real,
        "per_device": per_device,
        "timings": timings,
    }
    report["table"] = format_table(report)
    write_json_atomic(workdir / "report.json", report)
    return report


def _real_faces(models: dict, say) -> dict | None:
    """The generic models on the real photos' pairs (:mod:`device_sdk.realfaces`); ``None``
    when the photos are not cached."""
    from device_sdk.realfaces import real_face_crops, real_pairs_report
    from fedfr.train.recognizer import generic_embedder

    try:
        crops, labels, _ = real_face_crops()
    except FileNotFoundError as e:
        say(f"real photos skipped: {e}")
        return None
    return {k: real_pairs_report(generic_embedder(m), crops, labels)
            for k, m in models.items()}


def _dlib_base(sim, seed: int, say) -> Path:
    """dlib's network as version 1 (cached under ``workdir/pretrained``): the profile's data set
    is synthesized first (its public split gives the public class embeddings)."""
    from fedfr.backbones.dlib_weights import save_dlib_checkpoint
    from fedfr.data.manifest import SyntheticDataset, is_synthetic_dataset
    from fedfr.data.synthetic import synthesize

    data_dir = sim.out / "data" / f"{sim.data_tag}-seed{seed}"
    if not is_synthetic_dataset(data_dir):
        synthesize(sim.data_profile(), data_dir, seed=seed, progress=sim.progress,
                   overwrite=True)
    ckpt = sim.out / "pretrained" / f"{sim.data_tag}-seed{seed}-dlib_r34.safetensors"
    if not ckpt.exists():
        say("dlib_r34: dlib's pretrained network; public class embeddings from the public split")
        pub = SyntheticDataset.load(data_dir).public
        save_dlib_checkpoint(ckpt, pub.load(), np.asarray(pub.labels, np.int64),
                             device=sim.device)
    return ckpt


def _f(v) -> str:
    return "   —  " if v is None else f"{v:.4f}"


def format_table(report: dict) -> str:
    m = report["metrics"]
    last = report["model_versions"][-1]["version"] if report["model_versions"] else "?"
    lines = [
        f"FedFR end to end — profile '{report['profile']}', {report['arch']}, "
        f"{report['devices']} device processes, {report['rounds']} round(s) over HTTP, "
        f"method {report['round_config']['method']} (lr {report['round_config']['local']['lr']}"
        f", BatchNorm {report['round_config']['local']['bn_policy']})",
        "",
        "                       generic (evaluation identities)    personalized (mean over "
        "devices)",
        "model                  TAR@1e-3  TAR@1e-2  rank-1           TAR@1e-2  TAR@1e-1  "
        "DIR@1e-1",
    ]
    for label, key in (("pretrained (v1)", "pretrained"),
                       (f"after FL (v{last})", "after_fl")):
        g, p = m[key]["generic"], m[key]["personalized"]
        lines.append(f"{label:<22} {_f(g.get('tar@far=1e-03'))}    {_f(g.get('tar@far=1e-02'))}"
                     f"    {_f(g.get('rank1'))}           {_f(p.get('tar@far=1e-02'))}    "
                     f"{_f(p.get('tar@far=1e-01'))}    {_f(p.get('dir@fpir=1e-01'))}")
    real = report.get("real_faces")
    if real:
        r0 = real["pretrained"]
        lines += ["", f"real photos ({r0['genuine_pairs']} genuine, {r0['impostor_pairs']} "
                  f"impostor pairs; device_sdk.realfaces): genuine min / impostor max / AUC"]
        for label, key in (("pretrained (v1)", "pretrained"), (f"after FL (v{last})",
                                                                "after_fl")):
            r = real[key]
            lines.append(f"{label:<22} {r['genuine_min']:.4f} / {r['impostor_max']:.4f} / "
                         f"{r['auc']:.3f}  ({'separated' if r['separated'] else 'overlap'})")
    vals = [f"v{v['version']} {_f((v.get('validation') or {}).get('tar_at_far', {}).get('1e-02'))}"
            for v in report["model_versions"]]
    lines += ["", "server's validation set (held-out identities), TAR@1e-2 per version: "
              + ", ".join(vals)]
    lines += ["", "device      rounds  sent (MB)  of which updates  received (MB)  "
              "verify (genuine)      identify (stranger)"]
    for name, d in report["per_device"].items():
        v, i = d["verify_genuine"], d["identify_stranger"]
        lines.append(
            f"{name:<11} {d['rounds']:>6}  {d['bytes_sent'] / 1e6:9.2f}  "
            f"{d['update_bytes'] / 1e6:16.2f}  {d['bytes_received'] / 1e6:13.2f}  "
            f"{'accepted' if v['accepted'] else 'rejected'} {v['score']:.3f}/{v['threshold']:.3f}"
            f"  {i['name']} {i['score']:.3f}")
    t = report["timings"]
    lines += ["", f"personalized after FL = each device's exported bundle run by ONNX Runtime; "
              f"({t['total_s']:.0f} s in all: set-up {t['prepare_s']:.0f} s, devices "
              f"{t['devices_s']:.0f} s, evaluation {t['evaluate_s']:.0f} s)"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m device_sdk.demo",
                                description="FedFR end to end: aggregator + N device "
                                "processes over HTTP, R rounds, export, verify, metrics.")
    p.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    p.add_argument("--devices", type=int, default=4,
                   help="device processes (default 4; at most the profile's devices)")
    p.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    p.add_argument("--profile", default="fair",
                   help="fair (default: a generic model pretrained 20 epochs on 6,000 public "
                        "images), tiny (a smoke run), small, paper")
    p.add_argument("--pack-per-class", type=int, default=3,
                   help="public images per identity in the devices' pack (default 3)")
    p.add_argument("--base", default="dlib_r34", choices=("dlib_r34", "pretrain"),
                   help="the generic model v1: dlib_r34 (dlib's pretrained face-recognition "
                        "network; default) or pretrain (the profile's backbone pretrained on "
                        "its public split, --pretrain-epochs)")
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help="pretraining epochs (default: the profile's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where the devices train (cpu, cuda...)")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds a device waits for its rounds")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = run_demo(args.workdir, devices=args.devices, rounds=args.rounds,
                          profile=args.profile, pretrain_epochs=args.pretrain_epochs,
                          seed=args.seed, device=args.device, progress=not args.quiet,
                          timeout=args.timeout, pack_per_class=args.pack_per_class,
                          base=args.base)
    except (DemoError, ValueError) as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    print(report["table"])
    print(f"\nreport: {args.workdir / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
