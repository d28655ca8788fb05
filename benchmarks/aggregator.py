"""The aggregator service: upload ingest over loopback, and aggregation time and memory.

Two parts, each compared in the same run, interleaved repeat by repeat, with a floor:

* **ingest** — the real server (``python -m aggregator serve``, a subprocess on a free
  loopback port, SQLite in a temporary data dir or a fresh PostgreSQL database), an ``--arch``
  checkpoint published, ``--devices`` N devices registered and checked in to a round of target
  N, each with a pre-encoded update (``fedfr.fl.wire.encode_update`` of its perturbed backbone
  and public embedding rows). The N uploads start together from N threads (one keep-alive
  ``httpx`` client each); per upload: the latency from sending to the ``202``; per repeat: MB/s
  = bytes of the N bodies / wall time from the start to the last ``202``.
  The same N bodies then go, the same way, to two bare ASGI endpoints on the same uvicorn
  stack (:func:`sink_app`, its own subprocess): ``http_discard`` reads the body and answers
  ``202`` (what HTTP on loopback allows here), ``http_durable`` also stages it to a file while
  hashing it, then fsyncs and renames it (the server's upload minus validation and database).
  **Floor** (``disk``): the same N bodies, from N threads, written in 1 MiB chunks to files on
  the same filesystem while hashed with sha256, fsynced, renamed into place and the directory
  fsynced — what the server must do at least to acknowledge an upload durably, without HTTP,
  parsing, validation or the database. Also reported: the in-process cost of validating one
  body (``decode_update`` + ``check_against_spec`` + ``check_norm``), the server's own
  aggregation time of each round (its ``stats.aggregation_seconds``), and, with one server
  worker, the server process's CPU seconds during the uploads and its peak RSS growth over a
  round (uploads + aggregation). ``--warmup`` rounds run first and are not recorded.
* **aggregation** — for each N in ``--updates``, in a fresh subprocess each (peak memory =
  the growth of the process's peak RSS, ``VmHWM`` reset just before the work, over its RSS
  then; the base model's load is inside the window):

  - ``stream``: what the server does — ``RoundAggregate.add`` on updates decoded one at a time
    from safetensors files (``decode_update``), then ``result()``;
  - ``floor``: a plain-numpy weighted sum of the same arrays, already in memory (float64
    accumulator, float64 products in a reused scratch buffer; public rows summed per row;
    integer counters: maximum) — the arithmetic alone. The same subprocess first loads all N
    updates (``naive``: load everything, then average), so its peak memory is the naive one;
  - ``service``: ``Service.try_aggregate`` on a stored round of those N updates (claim, base
    model load, aggregation from the blob store, the new version written and fsynced, the
    round's transaction), the updates having been accepted through ``Service.accept_update``
    (whose per-update time is reported too).

The update files are in the page cache (just written): "disk" reads are memory reads here.
MB = 10^6 bytes. Linux only (``/proc/self/status``, ``/proc/self/clear_refs``).

    python benchmarks/aggregator.py --devices 8 --updates 4,16,64 --repeats 5 --json agg.json
    python benchmarks/aggregator.py --part ingest --database postgres --json ingest_pg.json
    python benchmarks/aggregator.py --quick --json quick.json        # seconds; the smoke test
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6
CHUNK = 1 << 20
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


# ------------------------------------------------------------------------------ helpers
def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _spread(xs: list[float]) -> list[float]:
    return [float(min(xs)), float(max(xs))]


def _status_mb(field: str, pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MB
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _reset_peak(pid: int | str = "self") -> float:
    """Reset a process's peak RSS (``VmHWM``) to its current RSS; return that RSS in MB.
    (``ru_maxrss`` would not do: a child inherits its parent's peak across fork + exec.)"""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS", pid)


def _peak_since(before: float, pid: int | str = "self") -> float:
    """Peak RSS growth in MB since :func:`_reset_peak` returned ``before``."""
    return _status_mb("VmHWM", pid) - before


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(arch: str, public_classes: int, seed: int = 0):
    """A :class:`~fedfr.fl.GlobalModel` of ``arch`` (random init, torch to build it) with a
    (C, D) unit-norm public class embedding matrix."""
    import torch

    from fedfr.backbones import build_backbone, get_backbone_spec
    from fedfr.fl import GlobalModel

    torch.manual_seed(seed)
    spec = get_backbone_spec(arch)
    state = {k: v.detach().numpy().copy() for k, v in build_backbone(arch).state_dict().items()}
    rng = np.random.default_rng(seed)
    pub = rng.standard_normal((public_classes, spec.embedding_size)).astype(np.float32)
    pub /= np.linalg.norm(pub, axis=1, keepdims=True)
    return GlobalModel(arch, spec.embedding_size, spec.contract.to_dict(), state, pub)


def make_update(model, rng: np.random.Generator, *, rows: int, scale: float = 1e-3,
                num_samples: int = 100):
    """A device's update: the backbone perturbed by ``scale`` noise (integer counters as they
    are) and ``rows`` public embedding rows, as a :class:`~fedfr.fl.SharedUpdate`."""
    from fedfr.fl import BACKBONE_PREFIX, PUBLIC_INDEX_KEY, PUBLIC_ROWS_KEY, SharedUpdate

    arrays = {}
    for k, v in model.backbone.items():
        if v.dtype.kind == "f":
            v = (v + scale * rng.standard_normal(v.shape)).astype(v.dtype)
        arrays[BACKBONE_PREFIX + k] = v
    pub = model.public_embeddings
    if rows and pub is not None:
        idx = np.sort(rng.choice(len(pub), min(rows, len(pub)), replace=False))
        arrays[PUBLIC_ROWS_KEY] = (pub[idx] + scale * rng.standard_normal((len(idx), pub.shape[1]))
                                   ).astype(pub.dtype)
        arrays[PUBLIC_INDEX_KEY] = idx.astype(np.int64)
    return SharedUpdate(arrays, num_samples, {"loss": 1.0})


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_pg(admin_url: str) -> str:
    import psycopg

    name = f"fedfr_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def _drop_pg(admin_url: str, url: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


# ------------------------------------------------------------------------------ ingest
class ServerProcess:
    """``python -m aggregator serve`` on a free loopback port (its own process group)."""

    def __init__(self, data_dir: Path, database_url: str | None, workers: int) -> None:
        self.data_dir = data_dir
        self.token = "fat_bench_" + secrets.token_urlsafe(16)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "aggregator", "serve", "--data-dir", str(data_dir),
               "--port", str(self.port), "--workers", str(workers), "--no-access-log",
               "--log-level", "warning"]
        if database_url:
            cmd += ["--database-url", database_url]
        self.log_path = data_dir.parent / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "FEDFR_ADMIN_TOKEN": self.token}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start in {timeout}s")

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def sink_app(folder: Path):
    """A bare ASGI app on the same uvicorn stack as the server: ``POST /discard`` reads the
    body and answers ``202``; ``POST /durable`` also does what the server's upload does to the
    bytes before validating them — stream them to a staging file while hashing (in the event
    loop, as ``aggregator.app._stage`` does), then fsync, rename, fsync the directory."""
    import asyncio

    folder.mkdir(parents=True, exist_ok=True)

    def finish(tmp: Path, sha: str) -> None:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, folder / sha)
        _fsync_dir(folder)

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        durable = scope["path"] == "/durable"
        h = hashlib.sha256()
        size = 0
        tmp = folder / f"{uuid.uuid4().hex}.part"
        f = open(tmp, "wb") if durable else None  # noqa: SIM115
        more = True
        while more:
            msg = await receive()
            chunk = msg.get("body", b"")
            size += len(chunk)
            if f is not None:
                h.update(chunk)
                f.write(chunk)
            more = msg.get("more_body", False)
        if f is not None:
            f.close()
            await asyncio.to_thread(finish, tmp, h.hexdigest())
        body = json.dumps({"size": size}).encode()
        await send({"type": "http.response.start", "status": 202,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


class SinkProcess(ServerProcess):
    """:func:`sink_app` served by uvicorn (one worker) in a subprocess."""

    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "sink.log"
        folder.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "_sink", str(self.port),
             str(folder / "blobs")], cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sink exited: {self.log_path.read_text()[-3000:]}")
            try:
                httpx.post(self.url + "/discard", content=b"x", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"sink did not start in {timeout}s")


def _check(r, status: int):
    if r.status_code != status:
        raise RuntimeError(f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:500]}")
    return r


def _concurrent(n: int, fn) -> tuple[float, list[float]]:
    """Run ``fn(i)`` for i < n in n threads released together: (wall seconds, per-call
    seconds)."""
    barrier = threading.Barrier(n + 1)
    lat = [0.0] * n
    ends = [0.0] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        t0 = time.perf_counter()
        try:
            fn(i)
        except BaseException as e:  # reported after the join
            errors.append(e)
        ends[i] = time.perf_counter()
        lat[i] = ends[i] - t0

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return max(ends) - start, lat


def floor_ingest(bodies: list[bytes], folder: Path) -> tuple[float, list[float]]:
    """The durable-ingest floor: N threads write + sha256 + fsync + rename + fsync dir."""
    folder.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        body = memoryview(bodies[i])
        tmp = folder / f"{i}.part"
        h = hashlib.sha256()
        with open(tmp, "wb") as f:
            for o in range(0, len(body), CHUNK):
                chunk = body[o:o + CHUNK]
                h.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        final = folder / h.hexdigest()
        os.replace(tmp, final)
        _fsync_dir(folder)

    out = _concurrent(len(bodies), one)
    for p in folder.iterdir():
        p.unlink()
    return out


def validate_seconds(model, body: bytes, folder: Path, repeats: int = 5) -> float:
    """In-process cost of the server's checks of one staged body (median)."""
    from aggregator.validation import check_against_spec, check_norm, shared_spec
    from fedfr.fl.wire import decode_update

    spec = shared_spec(model)
    path = folder / "validate.safetensors"
    path.write_bytes(body)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        env = decode_update(path)
        check_against_spec(env, spec)
        check_norm(env, model, 1.0)
        times.append(time.perf_counter() - t0)
        del env
    path.unlink()
    return _median(times)


def run_ingest(args: argparse.Namespace, model, work: Path) -> dict:
    import httpx

    from fedfr.fl.wire import encode_update

    n = args.devices
    data_dir = work / "ingest" / "server"
    data_dir.mkdir(parents=True)
    pg_url = _create_pg(args.pg_admin_url) if args.database == "postgres" else None
    server = ServerProcess(data_dir, pg_url, args.workers)
    sink = SinkProcess(work / "ingest" / "sink")
    clients: list[httpx.Client] = []
    sink_clients: list[httpx.Client] = []
    try:
        server.wait_ready()
        sink.wait_ready()
        admin = httpx.Client(base_url=server.url, timeout=300,
                             headers={"Authorization": f"Bearer {server.token}"})
        ckpt = work / "ingest" / "base.safetensors"
        model.save(ckpt)
        version = _check(admin.post("/v1/admin/models", content=ckpt.read_bytes()),
                         201).json()["version"]
        enroll = _check(admin.post("/v1/admin/enrollment-tokens", json={"max_uses": n}),
                        201).json()["enrollment_token"]
        for i in range(n):
            r = _check(httpx.post(server.url + "/v1/devices", timeout=60,
                                  json={"enrollment_token": enroll, "platform": f"bench-{i}"}),
                       201).json()
            clients.append(httpx.Client(base_url=server.url, timeout=600,
                                        headers={"Authorization": f"Bearer {r['device_token']}"}))
            sink_clients.append(httpx.Client(base_url=sink.url, timeout=600))
        rng = np.random.default_rng(1)
        updates = [make_update(model, rng, rows=args.public_rows) for _ in range(n)]
        kinds = ("server", "http_discard", "http_durable", "disk")
        walls: dict[str, list[float]] = {k: [] for k in kinds}
        lat_all: dict[str, list[float]] = {k: [] for k in kinds}
        agg_s: list[float] = []
        bodies: list[bytes] = []
        hwm: list[float] = []
        cpu_s: list[float] = []
        for rep in range(-args.warmup, args.repeats):  # rep < 0: warm-up, not recorded
            rnd = _check(admin.post("/v1/admin/rounds", json={
                "base_version": version, "target": n, "over_selection": 1.0,
                "deadline_seconds": 3600}), 201).json()
            tasks = [_check(c.post("/v1/checkin"), 200).json() for c in clients]
            bodies = [encode_update(u, base_version=t["model_version"], round_id=t["round_id"])
                      for u, t in zip(updates, tasks, strict=True)]

            def upload(i: int, tasks=tasks, bodies=bodies) -> None:
                _check(clients[i].post(tasks[i]["upload_url"], content=bodies[i]), 202)

            def sink_post(path: str, bodies=bodies):
                return lambda i: _check(sink_clients[i].post(path, content=bodies[i]), 202)

            # one worker: the uvicorn process is the server (more: a supervisor, not measured)
            rss0 = _reset_peak(server.proc.pid) if args.workers == 1 else 0.0
            cpu0 = _cpu_seconds(server.proc.pid)
            wall, lat = _concurrent(n, upload)
            cpu = _cpu_seconds(server.proc.pid) - cpu0
            t0 = time.time()
            while True:  # the round aggregates in the server's background once N arrived
                st = _check(admin.get(f"/v1/admin/rounds/{rnd['id']}"), 200).json()
                if st["status"] in ("completed", "failed"):
                    break
                if time.time() - t0 > 600:
                    raise RuntimeError(f"round {rnd['id']} still {st['status']}")
                time.sleep(0.05)
            if st["status"] != "completed":
                raise RuntimeError(f"round {rnd['id']} failed: {st['reason']}")
            got = {"server": (wall, lat)}
            for kind, fn in (("http_discard", sink_post("/discard")),
                             ("http_durable", sink_post("/durable"))):
                got[kind] = _concurrent(n, fn)
            for p in (work / "ingest" / "sink" / "blobs").iterdir():
                p.unlink()
            got["disk"] = floor_ingest(bodies, work / "ingest" / "floor")
            nbytes = sum(len(b) for b in bodies)
            print(f"  ingest {'warm-up' if rep < 0 else 'repeat'} {max(rep + 1, 0)}/"
                  f"{args.repeats}: " + ", ".join(
                      f"{k} {nbytes / MB / got[k][0]:.1f} MB/s" for k in kinds), flush=True)
            if rep < 0:
                continue
            for k in kinds:
                walls[k].append(got[k][0])
                lat_all[k] += got[k][1]
            agg_s.append(float(st["stats"]["aggregation_seconds"]))
            cpu_s.append(cpu)
            if args.workers == 1:
                hwm.append(_peak_since(rss0, server.proc.pid))
        validate = validate_seconds(model, bodies[0], work / "ingest")
        admin.close()
    finally:
        for c in clients + sink_clients:
            c.close()
        server.stop()
        sink.stop()
        if pg_url:
            _drop_pg(args.pg_admin_url, pg_url)
    nbytes = sum(len(b) for b in bodies)
    out = {"database": args.database, "server_workers": args.workers, "devices": n,
           "repeats": args.repeats, "update_bytes": nbytes // n, "bytes_per_repeat": nbytes,
           "validate_one_update_s": validate, "server_aggregation_s": _median(agg_s),
           "server_peak_rss_growth_mb": _median(hwm) if hwm else None,
           "server_cpu_s": _median(cpu_s) if args.workers == 1 else None}
    for k in kinds:
        mbps = [nbytes / MB / w for w in walls[k]]
        out[k] = {"mb_per_s": _median(mbps), "mb_per_s_spread": _spread(mbps),
                  "wall_s": _median(walls[k]), "uploads_per_s": n / _median(walls[k]),
                  "latency_p50_s": float(np.percentile(lat_all[k], 50)),
                  "latency_p99_s": float(np.percentile(lat_all[k], 99)),
                  "latency_max_s": float(max(lat_all[k])), "latency_samples": len(lat_all[k])}
        if k != "server":
            ratios = [s / f for s, f in zip(walls["server"], walls[k], strict=True)]
            out[k]["server_time_over_this"] = _median(ratios)
            out[k]["server_time_over_this_per_repeat"] = ratios
    # the headline fields
    out.update({f: out["server"][f] for f in ("mb_per_s", "latency_p50_s", "latency_p99_s")})
    out["floor_mb_per_s"] = out["disk"]["mb_per_s"]
    out["server_time_over_floor"] = out["disk"]["server_time_over_this"]
    return out


# ------------------------------------------------------------------------------ aggregation
def _numpy_floor(base, updates) -> tuple[dict, np.ndarray]:
    """Plain numpy: sum of w_i * x_i in float64 (scratch buffer for the products), per-row
    public sums (uniform weights), integer counters by maximum."""
    from fedfr.fl import PUBLIC_INDEX_KEY, PUBLIC_ROWS_KEY

    first = updates[0].arrays
    keys = [k for k in first if k not in (PUBLIC_ROWS_KEY, PUBLIC_INDEX_KEY)]
    acc = {k: (np.zeros(first[k].shape, np.float64) if first[k].dtype.kind == "f"
               else first[k].copy()) for k in keys}
    scratch = np.empty(max(first[k].size for k in keys), np.float64)
    pub = base.public_embeddings
    row_sum = np.zeros(pub.shape, np.float64)
    row_n = np.zeros(len(pub), np.float64)
    total = 0.0
    for u in updates:
        w = float(u.num_samples)
        total += w
        for k in keys:
            x = u.arrays[k]
            if x.dtype.kind == "f":
                tmp = scratch[:x.size].reshape(x.shape)
                np.multiply(x, w, out=tmp, dtype=np.float64)
                np.add(acc[k], tmp, out=acc[k])
            else:
                np.maximum(acc[k], x, out=acc[k])
        if PUBLIC_ROWS_KEY in u.arrays:
            idx = u.arrays[PUBLIC_INDEX_KEY]
            row_sum[idx] += u.arrays[PUBLIC_ROWS_KEY]
            row_n[idx] += 1.0
    out = {k: (a / total).astype(first[k].dtype) if first[k].dtype.kind == "f" else a
           for k, a in acc.items()}
    new_pub = pub.copy()
    hit = row_n > 0
    new_pub[hit] = (row_sum[hit] / row_n[hit, None]).astype(pub.dtype)
    return out, new_pub


def _worker(spec: dict) -> dict:
    """One measurement in this (fresh) process; see the module doc."""
    import gc

    from fedfr.fl import GlobalModel, RoundAggregate
    from fedfr.fl.wire import decode_update

    mode = spec["mode"]
    files = [Path(p) for p in spec["files"]]
    out: dict = {"mode": mode, "n": len(files)}
    if mode == "service":
        from aggregator.service import Service
        from aggregator.settings import Settings

        svc = Service(Settings(data_dir=Path(spec["data_dir"]),
                               database_url=spec["database_url"], admin_token="bench"))
        gc.collect()
        before = _reset_peak()
        t0 = time.perf_counter()
        assert svc.try_aggregate(spec["round_id"])
        out["seconds"] = time.perf_counter() - t0
        out["peak_mb"] = _peak_since(before)
        r = svc.get_round(spec["round_id"])
        if r["status"] != "completed":
            raise RuntimeError(f"round {spec['round_id']}: {r['status']} {r['reason']}")
        out["aggregation_seconds"] = float(r["stats"]["aggregation_seconds"])
        svc.close()
        return out
    gc.collect()
    before = _reset_peak()
    base = GlobalModel.load(spec["base"])
    if mode == "stream":
        t0 = time.perf_counter()
        agg = RoundAggregate(base.public_embeddings)
        for p in files:  # one update in memory at a time, as the service does
            agg.add(decode_update(p).update)
        arrays, pub = agg.result()
        out["seconds"] = time.perf_counter() - t0
    elif mode == "numpy":
        t0 = time.perf_counter()
        updates = [decode_update(p).update for p in files]
        out["load_seconds"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        arrays, pub = _numpy_floor(base, updates)
        out["seconds"] = time.perf_counter() - t1
    else:
        raise ValueError(mode)
    out["peak_mb"] = _peak_since(before)
    out["check"] = float(sum(float(np.sum(a, dtype=np.float64)) for a in arrays.values())
                         + float(np.sum(pub, dtype=np.float64)))
    return out


def _spawn(spec: dict) -> dict:
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_worker",
                        json.dumps(spec)], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"worker {spec['mode']} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


class ServiceRounds:
    """An in-process :class:`Service` (its own data dir and database) that stores rounds of
    N accepted updates for the ``service`` worker to aggregate."""

    def __init__(self, folder: Path, database_url: str | None, ckpt: Path, devices: int) -> None:
        from aggregator.db import migrate
        from aggregator.service import DeviceIdentity, Service
        from aggregator.settings import Settings

        self.settings = Settings(data_dir=folder, database_url=database_url, admin_token="bench")
        migrate(self.settings.url)
        self.svc = Service(self.settings)
        self.version = self.svc.publish_model(ckpt)["version"]
        token = self.svc.create_enrollment_token(max_uses=devices)["enrollment_token"]
        self.devices = [DeviceIdentity(self.svc.register_device(token, {})["device_id"])
                        for _ in range(devices)]

    def stored_round(self, files: list[Path]) -> tuple[int, list[float]]:
        """A round with ``files`` accepted (re-encoded for it); (round id, accept seconds)."""
        from fedfr.fl.wire import decode_update, encode_update

        rnd = self.svc.start_round(base_version=self.version, target=len(files),
                                   min_devices=None, over_selection=1.0,
                                   deadline_seconds=3600.0, config={})
        accept = []
        for dev, p in zip(self.devices, files, strict=False):
            assert self.svc.checkin(dev) is not None
            body = encode_update(decode_update(p).update, base_version=self.version,
                                 round_id=rnd["id"])
            staged = self.svc.blobs.staging()
            staged.write_bytes(body)
            t0 = time.perf_counter()
            self.svc.accept_update(dev, rnd["id"], staged, hashlib.sha256(body).hexdigest(),
                                   len(body))
            accept.append(time.perf_counter() - t0)
        return rnd["id"], accept

    def close(self) -> None:
        self.svc.close()


def run_aggregation(args: argparse.Namespace, model, work: Path) -> dict:
    from fedfr.fl.wire import encode_update

    ns = sorted({int(x) for x in args.updates.split(",")})
    folder = work / "agg"
    (folder / "updates").mkdir(parents=True)
    base = folder / "base.safetensors"
    model.save(base)
    rng = np.random.default_rng(2)
    files = []
    for i in range(max(ns)):
        p = folder / "updates" / f"{i:04d}.safetensors"
        p.write_bytes(encode_update(make_update(model, rng, rows=args.public_rows,
                                                num_samples=50 + i), base_version=1, round_id=1))
        files.append(p)
    pg_url = _create_pg(args.pg_admin_url) if args.database == "postgres" else None
    rounds = ServiceRounds(folder / "service", pg_url, base, max(ns))
    runs: dict[tuple[int, str], list[dict]] = {}
    accept_s: list[float] = []
    try:
        for rep in range(args.repeats):
            for n in ns:  # interleaved: the same load for all three
                common = {"base": str(base), "files": [str(p) for p in files[:n]]}
                for mode in ("stream", "numpy"):
                    runs.setdefault((n, mode), []).append(_spawn({**common, "mode": mode}))
                rid, acc = rounds.stored_round(files[:n])
                accept_s += acc
                runs.setdefault((n, "service"), []).append(_spawn({
                    **common, "mode": "service", "data_dir": str(rounds.settings.data_dir),
                    "database_url": pg_url, "round_id": rid}))
                s = {m: runs[(n, m)][-1]["seconds"] for m in ("stream", "numpy", "service")}
                print(f"  aggregation repeat {rep + 1}/{args.repeats}, N={n}: stream "
                      f"{s['stream']:.3f} s, numpy floor {s['numpy']:.3f} s, service "
                      f"{s['service']:.3f} s", flush=True)
    finally:
        rounds.close()
        if pg_url:
            _drop_pg(args.pg_admin_url, pg_url)
    results = []
    for n in ns:
        st, npy, sv = runs[(n, "stream")], runs[(n, "numpy")], runs[(n, "service")]
        checks = [r["check"] for r in st + npy]
        per_rep = [a["seconds"] / b["seconds"] for a, b in zip(st, npy, strict=True)]
        results.append({
            "updates": n,
            "stream_s": _median([r["seconds"] for r in st]),
            "stream_s_spread": _spread([r["seconds"] for r in st]),
            "floor_s": _median([r["seconds"] for r in npy]),
            "floor_s_spread": _spread([r["seconds"] for r in npy]),
            "stream_over_floor": _median(per_rep),
            "stream_over_floor_per_repeat": per_rep,
            "naive_load_s": _median([r["load_seconds"] for r in npy]),
            "naive_s": _median([r["load_seconds"] + r["seconds"] for r in npy]),
            "service_s": _median([r["seconds"] for r in sv]),
            "service_aggregation_stat_s": _median([r["aggregation_seconds"] for r in sv]),
            "stream_peak_mb": _median([r["peak_mb"] for r in st]),
            "naive_peak_mb": _median([r["peak_mb"] for r in npy]),
            "service_peak_mb": _median([r["peak_mb"] for r in sv]),
            "stream_and_floor_agree": bool(np.allclose(checks, checks[0], rtol=1e-6)),
        })
    return {"database": args.database, "repeats": args.repeats,
            "update_bytes": files[0].stat().st_size,
            "accept_update_s": _median(accept_s), "results": results}


# ------------------------------------------------------------------------------ report
def machine() -> dict:
    from fedfr.machine import cpu_model

    return {"python": platform.python_version(), "numpy": np.__version__, "cpu": cpu_model(),
            "cpus": os.cpu_count(), "platform": platform.platform(),
            "loadavg_1m_at_start": os.getloadavg()[0]}


def markdown(report: dict) -> str:
    lines = []
    ing = report.get("ingest")
    if ing:
        lines += [f"Ingest: {ing['devices']} concurrent uploads of {ing['update_bytes'] / MB:.2f} "
                  f"MB, {ing['database']}, {ing['server_workers']} server worker(s), median of "
                  f"{ing['repeats']}", "",
                  "| path | MB/s | wall s | latency p50 s | latency p99 s | server time / this |",
                  "|---|---:|---:|---:|---:|---:|"]
        names = {"server": "aggregator (POST /v1/rounds/{id}/updates)",
                 "http_discard": "uvicorn sink, body discarded",
                 "http_durable": "uvicorn sink, staged + sha256 + fsync + rename",
                 "disk": "floor: write + sha256 + fsync + rename, no HTTP"}
        for k, name in names.items():
            r = ing[k]
            lines.append(f"| {name} | {r['mb_per_s']:.1f} | {r['wall_s']:.3f} | "
                         f"{r['latency_p50_s']:.3f} | {r['latency_p99_s']:.3f} | "
                         f"{r.get('server_time_over_this', 1.0):.2f} |")
        rss, cpu = ing["server_peak_rss_growth_mb"], ing["server_cpu_s"]
        lines += ["", f"validating one update in-process: {ing['validate_one_update_s']:.3f} s; "
                  f"the server's aggregation of each round: {ing['server_aggregation_s']:.3f} s; "
                  f"server peak RSS growth over a round: "
                  f"{'-' if rss is None else f'{rss:.0f} MB'}; server CPU during the uploads: "
                  f"{'-' if cpu is None else f'{cpu:.2f} s'}", ""]
    agg = report.get("aggregation")
    if agg:
        lines += [f"Aggregation: {agg['update_bytes'] / MB:.2f} MB per update, median of "
                  f"{agg['repeats']}; accept_update in-process {agg['accept_update_s']:.3f} s "
                  f"per update", "",
                  "| N | stream s | numpy floor s | ratio | naive (load all) s | service s | "
                  "stream peak MB | naive peak MB | service peak MB |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in agg["results"]:
            lines.append(f"| {r['updates']} | {r['stream_s']:.3f} | {r['floor_s']:.3f} | "
                         f"{r['stream_over_floor']:.2f} | {r['naive_s']:.3f} | "
                         f"{r['service_s']:.3f} | {r['stream_peak_mb']:.0f} | "
                         f"{r['naive_peak_mb']:.0f} | {r['service_peak_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        print(json.dumps(_worker(json.loads(argv[1]))), flush=True)
        return 0
    if argv and argv[0] == "_sink":
        import uvicorn

        uvicorn.run(sink_app(Path(argv[2])), host="127.0.0.1", port=int(argv[1]),
                    log_level="warning", access_log=False)
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", choices=("all", "ingest", "aggregation"), default="all")
    p.add_argument("--arch", default="mbf")
    p.add_argument("--public-classes", type=int, default=1000)
    p.add_argument("--public-rows", type=int, default=1000,
                   help="public embedding rows per update (default: all of them)")
    p.add_argument("--devices", type=int, default=8, help="concurrent uploads (ingest)")
    p.add_argument("--updates", default="4,16,64", help="N for the aggregation part")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="ingest rounds not recorded")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite",
                   help="postgres: a fresh database on --pg-admin-url's server, dropped after")
    p.add_argument("--pg-admin-url", default=os.environ.get("FEDFR_BENCH_PG", PG_ADMIN_URL))
    p.add_argument("--quick", action="store_true",
                   help="mbf_tiny, 20 public classes, 2 devices, N=2,4, 1 repeat (smoke test)")
    p.add_argument("--workdir", type=Path, help="default: a temporary directory, removed")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.arch, args.public_classes, args.public_rows = "mbf_tiny", 20, 20
        args.devices, args.updates, args.repeats, args.warmup = 2, "2,4", 1, 0
    work = Path(tempfile.mkdtemp(prefix="fedfr-bench-agg-", dir=args.workdir))
    try:
        model = make_model(args.arch, args.public_classes)
        report: dict = {"machine": machine(), "arch": args.arch,
                        "public_classes": args.public_classes, "public_rows": args.public_rows}
        if args.part in ("all", "ingest"):
            report["ingest"] = run_ingest(args, model, work)
        if args.part in ("all", "aggregation"):
            report["aggregation"] = run_aggregation(args, model, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["machine"]["loadavg_1m_at_end"] = os.getloadavg()[0]
    print(markdown(report), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    # Run as a script, this file's folder is first on sys.path, where this file would shadow
    # the ``aggregator`` package it measures.
    here = Path(__file__).resolve().parent
    sys.path[:] = [q for q in sys.path if Path(q or ".").resolve() != here]
    sys.exit(main())
