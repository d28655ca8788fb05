"""Test support for the aggregator: a real server process on loopback, PostgreSQL databases,
checkpoints, and fake devices that speak the REST contract with real safetensors updates."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from fedfr.fl import GlobalModel, SharedUpdate
from fedfr.fl.wire import encode_update, save_public_pack

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("FEDFR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoint(path: Path, *, arch: str = "mbf_tiny", embedding_size: int = 64,
                    public_classes: int = 20, seed: int = 0) -> Path:
    """A real fedfr checkpoint (random weights) with public class embeddings."""
    import torch

    from fedfr.backbones import build_backbone
    from fedfr.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    net = build_backbone(arch, embedding_size=embedding_size)
    pub = torch.nn.functional.normalize(torch.randn(public_classes, embedding_size), dim=1)
    save_checkpoint(path, net, arch=arch, embedding_size=embedding_size,
                    extra_tensors={"head.public_class_embeddings": pub})
    return path


def make_pack(path: Path, *, public_classes: int = 20, per_class: int = 2, size: int = 64,
              seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    n = public_classes * per_class
    return save_public_pack(path, "images", rng.integers(0, 256, (n, size, size, 3), np.uint8),
                            np.repeat(np.arange(public_classes), per_class))


def pg_available() -> bool:
    """Whether the machine's PostgreSQL answers. In CI (``CI`` set) it must: an unreachable
    server is an error there, not a silent skip."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception as e:
        if os.environ.get("CI"):
            raise RuntimeError(f"PostgreSQL at {PG_ADMIN_URL} is required in CI: {e}") from e
        return False


def create_pg_database() -> str:
    """A fresh, empty PostgreSQL database; returns its URL (drop with :func:`drop_pg_database`)."""
    import psycopg

    name = f"fedfr_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Server:
    """``aggregator serve`` in a subprocess on a random loopback port."""

    data_dir: Path
    database_url: str | None = None
    workers: int = 1
    env: dict = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return self.env.get("FEDFR_ADMIN_TOKEN") or (self.data_dir / "admin_token").read_text(
        ).strip()

    def start(self, timeout: float = 60.0) -> Server:
        self.port = self.port or free_port()
        cmd = [sys.executable, "-m", "aggregator", "serve", "--data-dir", str(self.data_dir),
               "--port", str(self.port), "--workers", str(self.workers), "--no-access-log",
               "--log-level", "warning"]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        env = {**os.environ, "FEDFR_SWEEP_INTERVAL": "0.5", **self.env}
        self.log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: "
                                   f"{self.log_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start in {timeout}s: {self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return (self.data_dir.parent / f"server-{self.port}.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group (uvicorn's workers included)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "log", None):
            self.log.close()

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60,
                            headers={"Authorization": f"Bearer {self.admin_token}"})

    def models(self) -> list[dict]:
        """``GET /v1/admin/models``: every version, oldest first."""
        with self.admin() as c:
            r = c.get("/v1/admin/models")
            assert r.status_code == 200, r.text
            return r.json()


def publish(server: Server, ckpt: Path, pack: Path | None = None) -> dict:
    with server.admin() as c:
        params = {}
        if pack is not None:
            r = c.post("/v1/admin/public-packs", content=pack.read_bytes())
            assert r.status_code == 201, r.text
            params["public_pack"] = r.json()["sha256"]
        r = c.post("/v1/admin/models", content=ckpt.read_bytes(), params=params)
        assert r.status_code == 201, r.text
        return r.json()


def enrollment_token(server: Server, max_uses: int = 100) -> str:
    with server.admin() as c:
        r = c.post("/v1/admin/enrollment-tokens", json={"max_uses": max_uses})
        assert r.status_code == 201, r.text
        return r.json()["enrollment_token"]


def start_round(server: Server, **body: object) -> dict:
    with server.admin() as c:
        r = c.post("/v1/admin/rounds", json=body)
        assert r.status_code == 201, r.text
        return r.json()


def get_round(server: Server, rid: int) -> dict:
    with server.admin() as c:
        return c.get(f"/v1/admin/rounds/{rid}").json()


def wait_round(server: Server, rid: int, states: tuple[str, ...] = ("completed", "failed"),
               timeout: float = 60.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        r = get_round(server, rid)
        if r["status"] in states:
            return r
        time.sleep(0.2)
    raise AssertionError(f"round {rid} still {r['status']} after {timeout}s")


class FakeDevice:
    """A device that speaks the REST contract: it trains nothing, it perturbs the model."""

    def __init__(self, server_url: str, enrollment_token: str, seed: int = 0) -> None:
        self.url = server_url
        r = httpx.post(server_url + "/v1/devices",
                       json={"enrollment_token": enrollment_token, "platform": "test"},
                       timeout=30)
        assert r.status_code == 201, r.text
        self.device_id = r.json()["device_id"]
        self.token = r.json()["device_token"]
        self.rng = np.random.default_rng(seed)
        self.http = httpx.Client(base_url=server_url, timeout=60,
                                 headers={"Authorization": f"Bearer {self.token}"})

    def checkin(self) -> httpx.Response:
        return self.http.post("/v1/checkin")

    def task(self) -> dict:
        r = self.checkin()
        assert r.status_code == 200, (r.status_code, r.text)
        return r.json()

    def model(self, task: dict) -> GlobalModel:
        r = self.http.get(task["model"]["url"])
        assert r.status_code == 200, r.text
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
            f.write(r.content)
            f.flush()
            return GlobalModel.load(f.name)

    def make_update(self, model: GlobalModel, *, num_samples: int = 10, scale: float = 1e-3,
                    rows: int = 3, metrics: dict | None = None) -> SharedUpdate:
        arrays = {}
        for k, v in model.backbone.items():
            if v.dtype.kind == "f":
                v = (v + scale * self.rng.standard_normal(v.shape)).astype(v.dtype)
            arrays["backbone." + k] = v
        if rows and model.public_embeddings is not None:
            idx = np.sort(self.rng.choice(len(model.public_embeddings), rows, replace=False))
            arrays["public_embeddings.rows"] = (model.public_embeddings[idx] + scale).astype(
                model.public_embeddings.dtype)
            arrays["public_embeddings.index"] = idx.astype(np.int64)
        return SharedUpdate(arrays, num_samples, metrics or {"loss": 1.0})

    def upload(self, task: dict, body: bytes) -> httpx.Response:
        return self.http.post(task["upload_url"], content=body)

    def encode(self, task: dict, update: SharedUpdate) -> bytes:
        return encode_update(update, base_version=task["model_version"],
                             round_id=task["round_id"])

    def participate(self, **kw: object) -> tuple[dict, SharedUpdate, httpx.Response]:
        """Check in, download, perturb, upload; returns (task, update, upload response)."""
        task = self.task()
        upd = self.make_update(self.model(task), **kw)
        return task, upd, self.upload(task, self.encode(task, upd))

    def close(self) -> None:
        self.http.close()
