"""Durability and concurrency of the aggregator, against the real server on a SQLite file and on
PostgreSQL.

- **durability**: an update is acknowledged (202) only once its blob and row are committed;
  SIGKILL of the whole server at any moment — mid-round, with uploads in flight, during an
  aggregation — loses no acknowledged update, never leaves a model version without its blob
  (nor a version for an unfinished round), and the restarted server finishes the open round
  with exactly the accepted updates;
- **concurrency**: several uvicorn workers, or several server processes on one database and
  one data dir, never double-assign, double-aggregate or lose an update; concurrent retries
  of one upload count once.

After every kill the store itself is checked (:func:`check_store`): counters against rows,
every received update's blob against its sha256, every model version's blob loadable.
"""

from __future__ import annotations

import hashlib
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from aggsupport import (
    FakeDevice,
    Server,
    create_pg_database,
    drop_pg_database,
    enrollment_token,
    get_round,
    make_checkpoint,
    pg_available,
    publish,
    start_round,
    wait_round,
)
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from fedfr.fl import GlobalModel, SharedUpdate, aggregate_updates

#: Aggregation lease of every server here: a claim left by a killed server expires quickly.
LEASE = "2"
DEADLINE = 900.0


# ------------------------------------------------------------------------------ the store
class Store:
    """A read-only view of a server's database and blob store (to check invariants while the
    server is dead, or while it runs)."""

    def __init__(self, data_dir: Path, database_url: str | None) -> None:
        self.data_dir = data_dir
        url = database_url or f"sqlite:///{(data_dir / 'aggregator.db').resolve()}"
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        self.engine = create_engine(url, poolclass=NullPool)

    def rows(self, sql: str, **params: object) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(text(sql), params).mappings().all()]

    def round(self, rid: int) -> dict:
        (r,) = self.rows("SELECT * FROM rounds WHERE id = :rid", rid=rid)
        return r

    def received(self, rid: int) -> dict[int, str]:
        """device id -> sha256 of the update the store holds as received in round ``rid``."""
        return {a["device_id"]: a["update_sha"] for a in self.rows(
            "SELECT device_id, update_sha FROM assignments "
            "WHERE round_id = :rid AND status = 'received'", rid=rid)}

    def assigned_devices(self, rid: int) -> list[int]:
        return [a["device_id"] for a in self.rows(
            "SELECT device_id FROM assignments WHERE round_id = :rid", rid=rid)]

    def blob(self, sha: str) -> Path:
        return self.data_dir / "blobs" / sha[:2] / sha[2:4] / sha

    def close(self) -> None:
        self.engine.dispose()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_store(st: Store) -> None:
    """Every invariant a kill must not break, read straight from the database and the blobs."""
    rounds = st.rows("SELECT * FROM rounds")
    assignments = st.rows("SELECT * FROM assignments")
    versions = st.rows("SELECT * FROM model_versions")
    for r in rounds:
        mine = [a for a in assignments if a["round_id"] == r["id"]]
        received = [a for a in mine if a["status"] == "received"]
        assert len({a["device_id"] for a in mine}) == len(mine), f"round {r['id']}: a device " \
            f"assigned twice"
        assert r["num_assigned"] == len(mine) <= r["capacity"], r
        assert r["num_received"] == len(received) <= r["target"], (r, received)
        assert {a["status"] for a in mine} <= {"assigned", "received"}
        if r["status"] in ("open", "aggregating"):  # their updates are still needed
            for a in received:
                path = st.blob(a["update_sha"])
                assert path.exists(), f"received update {a} has no blob"
                data = path.read_bytes()
                assert sha256(data) == a["update_sha"] and len(data) == a["update_size"], a
        published = [v for v in versions if v["round_id"] == r["id"]]
        if r["status"] == "completed":
            assert len(published) == 1, f"round {r['id']} published {len(published)} versions"
            assert r["result_version"] == published[0]["version"]
            assert published[0]["parent_version"] == r["base_version"]
        else:
            assert published == [], f"round {r['id']} is {r['status']} but published {published}"
            assert r["result_version"] is None
    for v in versions:
        path = st.blob(v["blob_sha"])
        assert path.exists(), f"model version {v['version']} has no blob"
        data = path.read_bytes()
        assert sha256(data) == v["blob_sha"] and len(data) == v["size"], v
        model = GlobalModel.load(path)
        assert model.version == str(v["version"]) and model.backbone


# ------------------------------------------------------------------------------ fixtures
class Env:
    """One data dir and one database (SQLite in the data dir, or a fresh PostgreSQL one), and
    the servers started on them (all stopped at teardown)."""

    def __init__(self, tmp: Path, database_url: str | None) -> None:
        self.data_dir = tmp / "data"
        self.database_url = database_url
        self.servers: list[Server] = []
        self._store: Store | None = None

    def server(self, workers: int = 1, **env: str) -> Server:
        srv = Server(self.data_dir, database_url=self.database_url, workers=workers,
                     env={"FEDFR_AGGREGATION_LEASE": LEASE, **env})
        self.servers.append(srv)
        return srv

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.data_dir, self.database_url)
        return self._store

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        if self._store is not None:
            self._store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request, tmp_path):
    url = None
    if request.param == "postgresql":
        if not pg_available():
            pytest.skip("no PostgreSQL on 127.0.0.1:5432")
        url = create_pg_database()
    e = Env(tmp_path, url)
    yield e
    e.close()
    if url:
        drop_pg_database(url)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def big_ckpt(tmp_path_factory):
    """MobileFaceNet, 512-d: ~8 MB per update, so folding a round in takes a while."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "mbf.safetensors", arch="mbf",
                           embedding_size=512)


# ------------------------------------------------------------------------------ helpers
def restart(srv: Server) -> Server:
    """SIGKILL the server if it runs, and start it again on the same port, data and database."""
    srv.kill()
    srv.log.close()
    return srv.start()


def try_upload(dev: FakeDevice, task: dict, body: bytes,
               client: httpx.Client | None = None) -> httpx.Response | None:
    """The upload's response, or ``None`` when the server died under it."""
    try:
        return (client or dev.http).post(task["upload_url"], content=body)
    except httpx.TransportError:
        return None


def device_client(dev: FakeDevice, url: str) -> httpx.Client:
    """Another connection for ``dev`` (to another server, or for concurrent requests)."""
    return httpx.Client(base_url=url, timeout=60,
                        headers={"Authorization": f"Bearer {dev.token}"})


def prepare(devs: list[FakeDevice], base: GlobalModel
            ) -> tuple[list[dict], list[SharedUpdate], list[bytes]]:
    """Every device checks in (and must get a task) and makes its update of ``base``."""
    tasks = [d.task() for d in devs]
    upds = [d.make_update(base, num_samples=3 + i, metrics={"loss": float(i)})
            for i, d in enumerate(devs)]
    return tasks, upds, [d.encode(t, u) for d, t, u in zip(devs, tasks, upds, strict=True)]


def metric(srv: Server, name: str) -> float:
    text_ = httpx.get(srv.url + "/metrics", timeout=30).text
    for line in text_.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def assert_metric_settles(srv: Server, name: str, value: float, timeout: float = 30.0) -> None:
    """``name`` reaches ``value`` (counters are bumped just after the state they count), and
    is still ``value`` a moment later (every worker's sweeper has run again since)."""
    t_end = time.monotonic() + timeout
    while metric(srv, name) < value and time.monotonic() < t_end:
        time.sleep(0.1)
    time.sleep(1.5)
    assert metric(srv, name) == value, (name, metric(srv, name))


def assert_published_aggregate(dev: FakeDevice, version: int, base: GlobalModel,
                               updates: list[tuple[int, SharedUpdate]]) -> None:
    """Model ``version`` as served is exactly ``aggregate_updates`` of ``updates`` (device id,
    update) folded in device order — the order the server folds them."""
    r = dev.http.get(f"/v1/models/{version}")
    assert r.status_code == 200, r.text
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(r.content)
        f.flush()
        got = GlobalModel.load(f.name)
    want, want_pub = aggregate_updates([u for _, u in sorted(updates, key=lambda x: x[0])],
                                       base.public_embeddings)
    assert {"backbone." + k for k in got.backbone} == set(want)
    for k, v in got.backbone.items():
        np.testing.assert_array_equal(v, want["backbone." + k], err_msg=k)
    np.testing.assert_array_equal(got.public_embeddings, want_pub)
    assert not np.array_equal(got.public_embeddings, base.public_embeddings)
    assert got.version == str(version)


def run_concurrently(fns: list, timeout: float = 120.0) -> list:
    """Call every function at once (a barrier lines the threads up); their results in order."""
    barrier = threading.Barrier(len(fns))

    def go(fn):
        barrier.wait(timeout)
        return fn()

    with ThreadPoolExecutor(len(fns)) as pool:
        futs = [pool.submit(go, fn) for fn in fns]
        return [f.result(timeout=timeout) for f in futs]


# ------------------------------------------------------------------------------ durability
def test_sigkill_mid_round_keeps_acknowledged_updates_and_the_round_finishes(env, tiny_ckpt):
    srv = env.server().start()
    publish(srv, tiny_ckpt)
    tok = enrollment_token(srv)
    rid = start_round(srv, target=4, over_selection=1.0, deadline_seconds=DEADLINE)["id"]
    base = GlobalModel.load(tiny_ckpt)
    devs = [FakeDevice(srv.url, tok, seed=i) for i in range(4)]
    tasks, upds, bodies = prepare(devs, base)
    receipts = {}
    for i in (0, 1):
        r = devs[i].upload(tasks[i], bodies[i])
        assert r.status_code == 202, r.text
        assert r.json()["duplicate"] is False and r.json()["sha256"] == sha256(bodies[i])
        receipts[i] = r.json()

    srv.kill()
    # What the dead server left: both acknowledged updates committed, blobs and all.
    st = env.store
    check_store(st)
    assert st.received(rid) == {devs[i].device_id: sha256(bodies[i]) for i in (0, 1)}
    assert st.round(rid)["status"] == "open"

    restart(srv)
    r = get_round(srv, rid)
    assert (r["status"], r["num_received"], r["num_assigned"]) == ("open", 2, 4)
    for i in (0, 1):  # the same bytes again: the same receipt, counted once
        again = devs[i].upload(tasks[i], bodies[i])
        assert again.status_code == 202, again.text
        assert again.json() == {**receipts[i], "duplicate": True}
    assert get_round(srv, rid)["num_received"] == 2
    for i in (2, 3):  # the other two re-check-in: the same task, and their uploads finish it
        assert devs[i].task() == tasks[i]
        r = devs[i].upload(tasks[i], bodies[i])
        assert r.status_code == 202 and r.json()["duplicate"] is False, r.text

    done = wait_round(srv, rid)
    assert done["status"] == "completed", done
    assert done["num_received"] == 4 and done["stats"]["devices"] == 4
    assert done["stats"]["samples"] == sum(u.num_samples for u in upds)
    vs = srv.models()
    assert [v["version"] for v in vs] == [1, done["result_version"]]
    assert vs[1]["parent_version"] == 1 and vs[1]["round_id"] == rid
    assert_published_aggregate(devs[0], done["result_version"], base,
                               [(d.device_id, u) for d, u in zip(devs, upds, strict=True)])
    check_store(st)
    for d in devs:
        d.close()


@pytest.mark.slow
def test_sigkill_at_random_moments_of_concurrent_uploads(env, tiny_ckpt):
    seed = random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    why = f"random seed {seed}"
    n, per_cycle = 12, 3
    srv = env.server().start()
    publish(srv, tiny_ckpt)
    tok = enrollment_token(srv)
    rid = start_round(srv, target=n, over_selection=1.0, deadline_seconds=DEADLINE)["id"]
    base = GlobalModel.load(tiny_ckpt)
    devs = [FakeDevice(srv.url, tok, seed=i) for i in range(n)]
    tasks, upds, bodies = prepare(devs, base)
    shas = [sha256(b) for b in bodies]
    index = {d.device_id: i for i, d in enumerate(devs)}
    st = env.store

    acked: set[int] = set()  # devices that got a 202
    sent: set[int] = set()  # devices that sent at least once
    received: set[int] = set()  # devices the store holds as received (after the last kill)
    tally = {"answered": 0, "committed_unanswered": 0, "lost_in_flight": 0, "cut_mid_body": 0}

    def upload(i: int, start: float, trickle: bool) -> httpx.Response | None:
        time.sleep(start)
        if not trickle:
            return try_upload(devs[i], tasks[i], bodies[i])

        def chunks():  # a slow device: the body takes ~1.5 s, the kill comes before its end
            step = len(bodies[i]) // 10 + 1
            for k in range(0, len(bodies[i]), step):
                yield bodies[i][k:k + step]
                time.sleep(0.15)

        return try_upload(devs[i], tasks[i], chunks())

    for cycle in range(n // per_cycle):
        fresh = list(range(cycle * per_cycle, (cycle + 1) * per_cycle))
        cut = fresh[0]  # sends half its body when the server dies
        # the next few devices, and every device whose last upload was not answered (retries)
        group = sorted(set(fresh) | (sent - acked))
        with ThreadPoolExecutor(len(group)) as pool:
            futs = {i: pool.submit(upload, i, 0.0 if i == cut else rng.uniform(0.0, 0.3),
                                   i == cut) for i in group}
            sent |= set(group)
            time.sleep(rng.uniform(0.05, 0.5))
            srv.kill()
            answers = {i: f.result(timeout=60) for i, f in futs.items()}
        assert answers[cut] is None, (why, answers[cut])
        for i, r in answers.items():
            if r is None:
                continue
            assert r.status_code == 202, (why, r.status_code, r.text)
            assert r.json()["sha256"] == shas[i], why
            # a 202 for bytes the store already held (committed, answer lost) is a duplicate
            assert r.json()["duplicate"] is (i in received), (why, i, r.json())
            acked.add(i)
            tally["answered"] += 1

        # the store as SIGKILL left it
        check_store(st)
        held = {index[dev]: sha for dev, sha in st.received(rid).items()}
        assert acked <= set(held), (why, "acknowledged but lost", acked - set(held))
        assert set(held) <= sent, (why, "never sent", set(held) - sent)
        assert cut not in held, (why, "a body cut in the middle was counted")
        assert all(sha == shas[i] for i, sha in held.items()), why
        unanswered = [i for i, r in answers.items() if r is None and i != cut]
        tally["cut_mid_body"] += 1
        tally["committed_unanswered"] += sum(i in held and i not in received for i in unanswered)
        tally["lost_in_flight"] += sum(i not in held for i in unanswered)
        received = set(held)
        restart(srv)
        r = get_round(srv, rid)
        assert r["num_received"] == len(received), (why, r)

    # every device (again): the ones the store holds get their receipt back, the rest count
    answers = run_concurrently([lambda i=i: devs[i].upload(tasks[i], bodies[i])
                                for i in range(n)])
    for i, r in enumerate(answers):
        assert r.status_code == 202, (why, r.text)
        assert r.json()["duplicate"] is (i in received), (why, i, r.json())
    done = wait_round(srv, rid)
    assert done["status"] == "completed", (why, done)
    assert done["num_received"] == n and done["stats"]["devices"] == n
    assert [v["version"] for v in srv.models()] == [1, done["result_version"]]
    assert_published_aggregate(devs[0], done["result_version"], base,
                               [(d.device_id, u) for d, u in zip(devs, upds, strict=True)])
    check_store(st)
    print(f"{why}: uploads at the kills {tally}")
    for d in devs:
        d.close()


@pytest.mark.slow
def test_sigkill_during_aggregation_publishes_exactly_one_version(env, big_ckpt):
    seed = random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    why = f"random seed {seed}"
    n = 16
    srv = env.server().start()
    publish(srv, big_ckpt)
    tok = enrollment_token(srv)
    rid = start_round(srv, target=n, over_selection=1.0, deadline_seconds=DEADLINE)["id"]
    base = GlobalModel.load(big_ckpt)
    devs = [FakeDevice(srv.url, tok, seed=i) for i in range(n)]
    tasks, upds, bodies = prepare(devs, base)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: devs[i].upload(tasks[i], bodies[i]), range(n - 1)))
    assert all(r.status_code == 202 for r in answers), [r.text for r in answers]
    assert get_round(srv, rid)["status"] == "open"
    r = devs[-1].upload(tasks[-1], bodies[-1])  # the one that reaches the target...
    assert r.status_code == 202, r.text
    srv.kill()  # ...and the server dies as it is acknowledged

    st = env.store
    states = []
    for attempt in range(3):
        check_store(st)
        before = st.round(rid)
        states.append(before["status"])
        assert before["num_received"] == n, (why, before)
        if before["status"] == "completed":
            break
        restart(srv)
        # wait for a (new) claim: an aggregation is running now
        t_end = time.monotonic() + 60
        while True:
            now = st.round(rid)
            if now["status"] == "completed" or (now["status"] == "aggregating"
                                                and now["claim"] != before["claim"]):
                break
            assert time.monotonic() < t_end, (why, "the round was never taken over", now)
            time.sleep(0.01)
        if now["status"] == "completed":
            break
        # at once, then at random moments (some past the end: the cleanup after it)
        time.sleep(0.0 if attempt == 0 else rng.uniform(0.0, 0.8))
        srv.kill()
    else:
        check_store(st)
        states.append(st.round(rid)["status"])
    # At least one kill interrupted a claimed aggregation (else this test tested nothing).
    assert "aggregating" in states, (why, states)

    if srv.proc.poll() is not None:
        restart(srv)
    done = wait_round(srv, rid, timeout=120)
    assert done["status"] == "completed", (why, done)
    assert done["stats"]["devices"] == n and done["num_received"] == n
    vs = srv.models()
    assert [v["version"] for v in vs] == [1, done["result_version"]], (why, vs)
    assert vs[1]["parent_version"] == 1 and vs[1]["round_id"] == rid
    assert_published_aggregate(devs[0], done["result_version"], base,
                               [(d.device_id, u) for d, u in zip(devs, upds, strict=True)])
    check_store(st)
    print(f"{why}: round state after each kill {states}; "
          f"aggregation took {done['stats']['aggregation_seconds']:.2f}s")
    for d in devs:
        d.close()


# ------------------------------------------------------------------------------ concurrency
def test_several_workers_assign_and_aggregate_exactly_once(env, tiny_ckpt):
    srv = env.server(workers=3).start(timeout=120)
    publish(srv, tiny_ckpt)
    tok = enrollment_token(srv)
    rnd = start_round(srv, target=5, over_selection=1.2, deadline_seconds=DEADLINE)
    rid = rnd["id"]
    assert rnd["capacity"] == 6
    base = GlobalModel.load(tiny_ckpt)
    devs = [FakeDevice(srv.url, tok, seed=i) for i in range(20)]
    clients = [device_client(d, srv.url) for d in devs]
    # every device checks in twice at once (two connections): 40 concurrent check-ins
    answers = run_concurrently([lambda c=c: c.post("/v1/checkin") for c in clients]
                               + [lambda d=d: d.checkin() for d in devs])
    by_dev = {d.device_id: (answers[i], answers[i + len(devs)]) for i, d in enumerate(devs)}
    assert all(r.status_code in (200, 204) for pair in by_dev.values() for r in pair), \
        [(r.status_code, r.text) for pair in by_dev.values() for r in pair]
    got_task = {dev for dev, pair in by_dev.items() if any(r.status_code == 200 for r in pair)}
    assert len(got_task) == 6, {dev: [r.status_code for r in p] for dev, p in by_dev.items()}
    for dev in got_task:  # an assigned device is told its task, and the same one, each time
        a, b = by_dev[dev]
        assert a.status_code == b.status_code == 200, (dev, a.text, b.text)
        assert a.json() == b.json() and a.json()["round_id"] == rid
    st = env.store
    assert sorted(st.assigned_devices(rid)) == sorted(got_task)
    assert get_round(srv, rid)["num_assigned"] == 6

    assigned = [i for i, d in enumerate(devs) if d.device_id in got_task]
    tasks = {i: by_dev[devs[i].device_id][0].json() for i in assigned}
    upds = {i: devs[i].make_update(base, num_samples=2 + i) for i in assigned}
    bodies = {i: devs[i].encode(tasks[i], upds[i]) for i in assigned}
    answers = run_concurrently([lambda i=i: devs[i].upload(tasks[i], bodies[i])
                                for i in assigned])
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] * 5 + [409], [(r.status_code, r.text) for r in answers]
    late = next(r for r in answers if r.status_code == 409)
    assert late.json()["reason"] == "round_closed", late.text
    accepted = [i for i, r in zip(assigned, answers, strict=True) if r.status_code == 202]
    assert all(r.json()["duplicate"] is False for r in answers if r.status_code == 202)

    done = wait_round(srv, rid)
    assert done["status"] == "completed", done
    assert done["num_received"] == 5 and done["stats"]["devices"] == 5
    assert set(st.received(rid)) == {devs[i].device_id for i in accepted}
    assert_metric_settles(srv, 'fedfr_rounds_finished_total{status="completed"}', 1)
    assert metric(srv, "fedfr_updates_accepted_total") == 5
    assert [v["version"] for v in srv.models()] == [1, done["result_version"]]
    assert_published_aggregate(devs[0], done["result_version"], base,
                               [(devs[i].device_id, upds[i]) for i in accepted])
    check_store(st)
    for c in clients:
        c.close()
    for d in devs:
        d.close()


def test_two_server_processes_on_one_database_and_data_dir(env, tiny_ckpt):
    a, b = env.server(), env.server()
    run_concurrently([a.start, b.start])  # both migrate and make the admin token at once
    assert a.port != b.port and a.admin_token == b.admin_token
    publish(a, tiny_ckpt)
    tok = enrollment_token(b)
    rid = start_round(a, target=4, over_selection=1.5, deadline_seconds=DEADLINE)["id"]
    assert get_round(b, rid)["capacity"] == 6
    base = GlobalModel.load(tiny_ckpt)
    devs = [FakeDevice((a, b)[i % 2].url, tok, seed=i) for i in range(10)]
    on_a = [device_client(d, a.url) for d in devs]
    on_b = [device_client(d, b.url) for d in devs]
    # every device checks in on both servers at once
    answers = run_concurrently([lambda c=c: c.post("/v1/checkin") for c in on_a + on_b])
    tasks: dict[int, dict] = {}
    for i in range(len(devs)):
        pair = (answers[i], answers[i + len(devs)])
        assert all(r.status_code in (200, 204) for r in pair), [r.text for r in pair]
        got = [r.json() for r in pair if r.status_code == 200]
        if got:
            assert len(got) == 2 and got[0] == got[1], (devs[i].device_id, pair)
            tasks[i] = got[0]
    assert len(tasks) == 6, {i: [r.status_code for r in (answers[i], answers[i + 10])]
                             for i in range(10)}
    st = env.store
    assert sorted(st.assigned_devices(rid)) == sorted(devs[i].device_id for i in tasks)

    upds = {i: devs[i].make_update(base, num_samples=4 + i) for i in tasks}
    bodies = {i: devs[i].encode(tasks[i], upds[i]) for i in tasks}
    # half of them upload through each server
    answers = run_concurrently([lambda i=i, k=k: (on_a, on_b)[k % 2][i].post(
        tasks[i]["upload_url"], content=bodies[i]) for k, i in enumerate(tasks)])
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] * 4 + [409] * 2, [(r.status_code, r.text) for r in answers]
    assert all(r.json()["reason"] == "round_closed" for r in answers if r.status_code == 409)
    accepted = [i for i, r in zip(tasks, answers, strict=True) if r.status_code == 202]

    done = wait_round(a, rid)
    assert done["status"] == "completed", done
    assert_metric_settles(a, 'fedfr_rounds_finished_total{status="completed"}', 1)
    for srv in (a, b):  # the counters live in the shared database
        assert metric(srv, 'fedfr_rounds_finished_total{status="completed"}') == 1
        assert metric(srv, "fedfr_model_versions_published_total") == 2
    assert get_round(b, rid) == get_round(a, rid)
    assert done["num_received"] == 4 and done["stats"]["devices"] == 4
    assert [v["version"] for v in b.models()] == [1, done["result_version"]]
    assert_published_aggregate(devs[0], done["result_version"], base,
                               [(devs[i].device_id, upds[i]) for i in accepted])
    check_store(st)
    for c in on_a + on_b:
        c.close()
    for d in devs:
        d.close()


def test_concurrent_retries_of_one_upload_count_once(env, tiny_ckpt):
    srv = env.server(workers=2).start(timeout=120)
    publish(srv, tiny_ckpt)
    tok = enrollment_token(srv)
    rid = start_round(srv, target=2, over_selection=1.0, deadline_seconds=DEADLINE)["id"]
    base = GlobalModel.load(tiny_ckpt)
    dev, other = FakeDevice(srv.url, tok, seed=0), FakeDevice(srv.url, tok, seed=1)
    task = dev.task()
    upd = dev.make_update(base)
    body = dev.encode(task, upd)
    clients = [device_client(dev, srv.url) for _ in range(8)]
    answers = run_concurrently([lambda c=c: c.post(task["upload_url"], content=body)
                                for c in clients])
    assert [r.status_code for r in answers] == [202] * 8, [r.text for r in answers]
    receipts = [r.json() for r in answers]
    assert sorted(r["duplicate"] for r in receipts) == [False] + [True] * 7
    first = next(r for r in receipts if not r["duplicate"])
    assert all({**r, "duplicate": False} == first for r in receipts)
    r = get_round(srv, rid)
    assert (r["status"], r["num_received"]) == ("open", 1), r
    st = env.store
    assert st.received(rid) == {dev.device_id: sha256(body)}
    check_store(st)
    # a different update from the same device is refused, however it races
    body2 = dev.encode(task, dev.make_update(base))
    answers = run_concurrently([lambda c=c: c.post(task["upload_url"], content=body2)
                                for c in clients[:4]])
    assert {r.status_code for r in answers} == {409}
    assert {r.json()["reason"] for r in answers} == {"already_received"}
    assert get_round(srv, rid)["num_received"] == 1
    # the round still completes with the one update of each device
    otask = other.task()
    oupd = other.make_update(base)
    r = other.upload(otask, other.encode(otask, oupd))
    assert r.status_code == 202, r.text
    done = wait_round(srv, rid)
    assert done["status"] == "completed" and done["stats"]["devices"] == 2
    assert metric(srv, "fedfr_updates_accepted_total") == 2
    assert_published_aggregate(dev, done["result_version"], base,
                               [(dev.device_id, upd), (other.device_id, oupd)])
    check_store(st)
    for c in clients:
        c.close()
    dev.close()
    other.close()
