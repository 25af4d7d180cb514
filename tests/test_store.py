"""The store on every backend: the embedded SQLite default, pymongo's code path (mongomock, as
no MongoDB server can run on the test machines) and a real MongoDB when
CRYSTALLOOP_TEST_MONGO_URI is set. Structures are real perovskites from the shared data."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from agent.store import (
    InvalidTransition,
    LockHeld,
    LockLost,
    Store,
    StoreSettings,
    StoreUnavailable,
    fingerprint,
    now,
)
from agent.store.embedded import EmbeddedClient
from generators.candidate import Candidate, Provenance

TEST_URI = os.environ.get("CRYSTALLOOP_TEST_MONGO_URI")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def perovskites(perov_csv: Path) -> list[Structure]:
    """60 real cubic perovskites with distinct formulas."""
    df = pd.read_csv(perov_csv, comment="#").drop_duplicates("formula").head(60)
    return [Structure.from_str(cif, fmt="cif") for cif in df["cif"]]


def _candidates(structures: list[Structure], generator: str = "voxel-vae") -> list[Candidate]:
    return [
        Candidate(structure=s, provenance=Provenance(generator=generator, seed=i))
        for i, s in enumerate(structures)
    ]


def _settings(tmp_path: Path, **kw) -> StoreSettings:
    return StoreSettings(path=tmp_path / "store", retry_seconds=20, **kw)


def _mongomock_store(tmp_path: Path) -> Store:
    import mongomock
    from mongomock.gridfs import enable_gridfs_integration

    enable_gridfs_integration()
    store = Store(
        mongomock.MongoClient(tz_aware=True), "crystalloop_test", "mongodb", _settings(tmp_path)
    )

    # mongomock 4.3 cannot run pymongo 4.16's bulk_write (UpdateOne passes `sort`): emulate
    # the bulk as single updates - the only line that differs from the real-server path.
    def update_each(collection, ops):
        for spec, update in ops:
            store.c[collection].update_one(spec, update)

    store._update_each = update_each
    return store


BACKENDS = [
    "embedded",
    "mongomock",
    pytest.param(
        "mongodb",
        marks=pytest.mark.skipif(
            not TEST_URI, reason="set CRYSTALLOOP_TEST_MONGO_URI to test a real MongoDB"
        ),
    ),
]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path: Path, crystalloop_home: Path):
    if request.param == "embedded":
        s = Store.connect(settings=_settings(tmp_path))
    elif request.param == "mongomock":
        s = _mongomock_store(tmp_path)
    else:
        database = f"crystalloop_test_{uuid.uuid4().hex[:8]}"
        s = Store.connect(TEST_URI, database, settings=_settings(tmp_path))
    yield s
    if request.param == "mongodb":
        s.client.drop_database(s.database)
    s.close()


# -- fingerprint ---------------------------------------------------------------------------


def test_fingerprint_ignores_origin_volume_supercell_and_noise(perovskites):
    a = Structure(
        Lattice.cubic(3.9),
        ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    shifted = Structure(  # Ti at the origin: O moves from Wyckoff 3c to 3d
        Lattice.cubic(4.1),
        ["Ti", "Sr", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]],
    )
    supercell = a * (2, 1, 1)
    supercell.perturb(0.01, min_distance=0.0)
    assert fingerprint(a) == fingerprint(shifted) == fingerprint(supercell)
    assert fingerprint(a).startswith("SrTiO3|221|")
    keys = [fingerprint(s) for s in perovskites]
    assert len(set(keys)) == len(perovskites)  # distinct formulas -> distinct keys


# -- candidates ----------------------------------------------------------------------------


def test_insert_dedupes_within_batch_and_across_cycles(store, perovskites):
    store.ensure_campaign("demo", {"batch_size": 2})
    batch = _candidates(perovskites[:20])
    again = Candidate(
        structure=perovskites[3] * (1, 1, 2), provenance=Provenance(generator="voxel-vae")
    )
    report = store.insert_candidates("demo", 1, [*batch, again])
    assert len(report.inserted) == 20
    assert report.duplicates == {again.id: batch[3].id}

    later = _candidates(perovskites[15:25])
    report2 = store.insert_candidates("demo", 2, later)
    assert sorted(report2.duplicates.values()) == sorted(c.id for c in batch[15:20])
    assert len(report2.inserted) == 5
    assert store.count_by_status("demo")["generated"] == 25
    assert len(store.find_candidates("demo", cycle=2)) == 5
    doc = store.get_candidate(batch[0].id)
    assert doc["provenance"]["generator"] == "voxel-vae"
    assert Store.structure_of(doc) == batch[0].structure
    assert doc["fingerprint"] == fingerprint(batch[0].structure)
    created = store.events("demo", kind="transition", limit=0)
    assert len(created) == 25 and {e["to"] for e in created} == {"generated"}
    with pytest.raises(ValueError, match="already stored"):  # ids are global
        store.insert_candidates("other", 1, batch[:3])
    fresh = _candidates(perovskites[:3])  # the same structures in another campaign: no dups
    assert len(store.insert_candidates("other", 1, fresh).inserted) == 3


def test_transitions_are_conditional_and_audited(store, perovskites):
    cands = _candidates(perovskites[:6])
    store.insert_candidates("demo", 1, cands)
    a, b = cands[0].id, cands[1].id
    doc = store.transition(a, "generated", "pooled", reason="passed filters", score=-1.5)
    assert doc["status"] == "pooled" and doc["score"] == -1.5
    assert store.transition(a, "generated", "pooled") is None  # already moved: no-op
    with pytest.raises(InvalidTransition):
        store.transition(b, "generated", "completed")
    with pytest.raises(InvalidTransition):
        store.transition(b, "generated", "pooled", status="completed")
    for before, step in [
        ("pooled", "selected"),
        ("selected", "submitted"),
        ("submitted", "running"),
        ("running", "completed"),
    ]:
        assert store.transition(a, before, step)
    doc = store.get_candidate(a)
    assert set(doc["status_times"]) == {
        "generated",
        "pooled",
        "selected",
        "submitted",
        "running",
        "completed",
    }
    history = store.events("demo", candidate_id=a, newest_first=False, limit=0)
    assert [(e["from"], e["to"]) for e in history] == [
        (None, "generated"),
        ("generated", "pooled"),
        ("pooled", "selected"),
        ("selected", "submitted"),
        ("submitted", "running"),
        ("running", "completed"),
    ]
    assert history[1]["reason"] == "passed filters"


def test_transition_many_with_per_candidate_fields(store, perovskites):
    cands = _candidates(perovskites[:10])
    store.insert_candidates("demo", 1, cands)
    ids = [c.id for c in cands]
    store.transition(ids[0], "generated", "rejected", reason="min_distance")
    preds = {
        cid: {"predictions": {"formation_energy_per_atom": {"mean": -0.1 * i, "std": 0.05}}}
        for i, cid in enumerate(ids)
    }
    moved = store.transition_many(ids, "generated", "pooled", per_candidate=preds)
    assert moved == ids[1:]
    pooled = store.find_candidates("demo", "pooled", sort=[("_id", 1)])
    assert len(pooled) == 9
    got = {d["_id"]: d["predictions"]["formation_energy_per_atom"]["mean"] for d in pooled}
    assert got == {cid: pytest.approx(-0.1 * i) for i, cid in enumerate(ids) if i}
    sel = store.transition_many(ids[1:4], "pooled", "selected", fields={"batch": 1})
    assert sel == ids[1:4]
    assert store.count_by_status("demo") == {
        "generated": 0,
        "rejected": 1,
        "pooled": 6,
        "selected": 3,
        "submitted": 0,
        "running": 0,
        "completed": 0,
        "failed": 0,
    }
    assert all(d["batch"] == 1 for d in store.find_candidates("demo", "selected"))
    events = store.events("demo", kind="transition", limit=0)
    assert sum(e["to"] == "pooled" for e in events) == 9
    store.update_candidates({ids[5]: {"score": 3.0, "filters": {"novelty": "ok"}}})
    assert store.get_candidate(ids[5])["score"] == 3.0
    with pytest.raises(InvalidTransition):
        store.update_candidates({ids[5]: {"status": "completed"}})


def test_repair_events_after_crash_between_update_and_event(store, perovskites, monkeypatch):
    cands = _candidates(perovskites[:3])
    store.insert_candidates("demo", 1, cands)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed after the update, before the event")

    monkeypatch.setattr(store, "_transition_events", crash)
    with pytest.raises(KeyboardInterrupt):
        store.transition(cands[0].id, "generated", "pooled")
    monkeypatch.undo()
    assert store.get_candidate(cands[0].id)["status"] == "pooled"
    assert store.repair_events("demo") == 1
    assert store.repair_events("demo") == 0
    (event,) = store.events("demo", candidate_id=cands[0].id, kind="transition", limit=1)
    assert (event["from"], event["to"]) == ("generated", "pooled")


# -- calculations, models, cycles ------------------------------------------------------------


def test_calculations_models_cycles(store, perovskites):
    cands = _candidates(perovskites[:4])
    store.ensure_campaign("demo")
    store.insert_candidates("demo", 1, cands)
    for i, c in enumerate(cands):
        store.save_calculation(c.id, "demo", state="queued", job_id=f"job-{i}")
        store.save_calculation(
            c.id,
            "demo",
            state="completed",
            formation_energy_per_atom=-0.5 * i,
            e_above_hull=0.1 * i,
            task_doc={"energy": -100.0 - i},
        )
    assert store.count_calculations("demo") == 4  # upserts, not duplicates
    best = store.best_materials("demo", limit=2)
    assert [b["candidate_id"] for b in best] == [cands[3].id, cands[2].id]
    assert best[0]["job_id"] == "job-3"
    assert set(store.calculations_for([cands[0].id, cands[1].id])) == {cands[0].id, cands[1].id}

    weights = os.urandom(10_000)
    wid = store.put_model_weights(weights)
    assert store.get_model_weights(wid) == weights
    v1 = store.register_model(
        "demo",
        "v1",
        training_size=3000,
        holdout_metrics={"mae": 0.12},
        weights_id=wid,
        deployed=True,
    )
    v2 = store.register_model("demo", "v2", training_size=3004, holdout_metrics={"mae": 0.2})
    assert store.deployed_model("demo")["_id"] == v1
    store.deploy_model(v2)
    assert store.deployed_model("demo")["version"] == "v2"
    assert [m["deployed"] for m in store.list_models("demo")] == [False, True]
    store.register_model("demo", "v2", training_size=3004, holdout_metrics={"mae": 0.19})
    store.update_model(v2, pid=123)
    assert store.deployed_model("demo")["_id"] == v2  # re-registering never undeploys
    assert store.get_model(v2)["holdout_metrics"] == {"mae": 0.19}

    store.record_cycle("demo", 1, generated=100)
    store.record_cycle("demo", 1, selected=4)
    store.record_cycle("demo", 2, generated=90)
    cycles = store.cycles("demo")
    assert [(c["cycle"], c.get("generated"), c.get("selected")) for c in cycles] == [
        (1, 100, 4),
        (2, 90, None),
    ]
    assert store.advance_cycle("demo") == 1 and store.advance_cycle("demo") == 2
    assert not store.stop_requested("demo")
    assert store.request_stop("demo") and store.stop_requested("demo")
    assert not store.request_stop("nope")


def test_embedded_weights_checksum_detects_corruption(tmp_path, crystalloop_home):
    store = Store.connect(settings=_settings(tmp_path))
    wid = store.put_model_weights(b"weights" * 1000)
    path = tmp_path / "store" / "models" / f"{wid.removeprefix('sha256:')}.bin"
    path.write_bytes(b"garbage")
    with pytest.raises(OSError, match="checksum"):
        store.get_model_weights(wid)


def test_embedded_store_persists_across_restarts(tmp_path, crystalloop_home, perovskites):
    with Store.connect() as store:  # default: CRYSTALLOOP_HOME/store
        assert store.backend == "embedded"
        store.insert_candidates("demo", 1, _candidates(perovskites[:5]))
    assert (crystalloop_home / "store" / "crystalloop.sqlite").exists()
    with Store.connect() as again:
        assert again.count_by_status("demo")["generated"] == 5


# -- embedded backend semantics --------------------------------------------------------------


def test_embedded_queries_match_montydb_engine(tmp_path):
    """The same filters, sorts and projections give the same documents as montydb."""
    from montydb import MontyClient

    docs = [
        {
            "_id": f"d{i}",
            "campaign": "a" if i % 3 else "b",
            "status": ["x", "y", "z"][i % 3],
            "score": (i * 7) % 10 - 4.5 if i % 4 else None,
            "n": i,
            "tags": ["t", str(i % 2)],
            "pred": {"fe": {"mean": -i / 10}},
            "odd-name": i % 2,
            "t": now() + timedelta(seconds=i),
        }
        for i in range(30)
    ]
    docs.append({"_id": "arr", "campaign": ["a", "b"], "status": "x", "n": 99})
    emb = EmbeddedClient(tmp_path / "emb")["db"]["c"]
    emb.create_index([("campaign", 1), ("status", 1)])
    monty = MontyClient(":memory:")["db"]["c"]
    emb.insert_many([dict(d) for d in docs])
    # montydb hands back naive UTC datetimes; give it naive ones to compare with
    monty.insert_many([{**d, "t": d["t"].replace(tzinfo=None)} if "t" in d else d for d in docs])
    t10 = docs[10]["t"]
    queries = [
        {},
        {"campaign": "a"},
        {"campaign": "a", "status": {"$in": ["x", "y"]}},
        {"status": "x", "score": None},
        {"score": {"$gt": 0}},
        {"score": {"$gte": -1.5, "$lt": 2}},
        {"t": {"$gt": t10}},
        {"tags": "1"},
        {"pred.fe.mean": {"$lt": -2}},
        {"$or": [{"n": 3}, {"status": "z", "campaign": "b"}]},
        {"_id": {"$in": ["d1", "d2", "nope"]}},
        {"n": {"$in": [1, 2, 99]}},
        {"odd-name": 1},
    ]
    for q in queries:
        got = sorted(d["_id"] for d in emb.find(q))
        mq = {"t": {"$gt": t10.replace(tzinfo=None)}} if "t" in q else q
        want = sorted(d["_id"] for d in monty.find(mq))
        assert got == want, q
        assert emb.count_documents(q) == len(want), q
    for sort in ([("n", -1)], [("status", 1), ("n", -1)], [("pred.fe.mean", 1)], [("odd-name", 1)]):
        got = [d["_id"] for d in emb.find({"campaign": "a"}, sort=sort, limit=7, skip=2)]
        want = [d["_id"] for d in monty.find({"campaign": "a"}, sort=sort, limit=7, skip=2)]
        assert got == want, sort
    assert emb.find_one({"_id": "d4"}, {"pred": 1, "_id": 0}) == {"pred": {"fe": {"mean": -0.4}}}
    assert emb.find_one({"_id": "d4"})["t"] == docs[4]["t"]  # dates round-trip exactly
    for proj in (["status", "pred"], {"pred": 0, "tags": 0}, {"_id": 0, "n": 1}, {"_id": 1}):
        got = list(emb.find({"campaign": "a", "status": "y"}, proj, sort=[("n", 1)]))
        want = list(monty.find({"campaign": "a", "status": "y"}, proj, sort=[("n", 1)]))
        strip = [{k: v for k, v in d.items() if k != "t"} for d in got]
        assert strip == [{k: v for k, v in d.items() if k != "t"} for d in want], proj
    updates = [
        ({"campaign": "b"}, {"$inc": {"n": 100}, "$set": {"pred.fe.std": 1}}),  # montydb path
        ({"status": "y", "n": {"$lt": 20}}, {"$set": {"new.sub": 1, "new.other": [1], "k": None}}),
        ({"_id": "d5"}, {"$set": {"pred.fe.mean": 0.5, "tags": ["u"]}}),  # SQL json_set path
        ({"_id": "d5"}, {"$set": {"pred.fe.mean": 0.5}}),  # unchanged: not modified
    ]
    for spec, upd in updates:
        got, want = emb.update_many(spec, upd), monty.update_many(spec, upd)
        assert (got.matched_count, got.modified_count) == (
            want.matched_count,
            want.modified_count,
        ), upd
    strip = [{k: v for k, v in d.items() if k != "t"} for d in emb.find({}, sort=[("_id", 1)])]
    assert strip == [
        {k: v for k, v in d.items() if k != "t"} for d in monty.find({}, sort=[("_id", 1)])
    ]


def test_embedded_keeps_non_finite_floats(tmp_path):
    coll = EmbeddedClient(tmp_path)["db"]["c"]
    coll.insert_one({"_id": "a", "p": {"mean": float("nan"), "std": float("inf")}, "k": 1})
    coll.update_one({"_id": "a"}, {"$set": {"q": float("-inf"), "k": 2}})
    doc = coll.find_one({"k": 2})
    assert math.isnan(doc["p"]["mean"]) and doc["p"]["std"] == math.inf and doc["q"] == -math.inf
    assert coll.count_documents({"k": 2}) == 1


def test_embedded_unique_index_is_enforced(tmp_path):
    from pymongo.errors import BulkWriteError, DuplicateKeyError

    coll = EmbeddedClient(tmp_path)["db"]["c"]
    coll.create_index([("campaign", 1), ("fp", 1)], unique=True)
    coll.insert_one({"campaign": "a", "fp": "x"})
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"campaign": "a", "fp": "x"})
    coll.insert_one({"campaign": "b", "fp": "x"})
    with pytest.raises(BulkWriteError) as info:
        coll.insert_many(
            [
                {"campaign": "a", "fp": "y"},
                {"campaign": "a", "fp": "x"},
                {"campaign": "a", "fp": "z"},
            ],
            ordered=False,
        )
    assert [e["index"] for e in info.value.details["writeErrors"]] == [1]
    assert coll.count_documents({"campaign": "a"}) == 3
    with pytest.raises(DuplicateKeyError):
        coll.update_one({"fp": "z"}, {"$set": {"fp": "y"}})


def _race_worker(path: str, ids: list[str], out) -> None:
    store = Store.connect(settings=StoreSettings(path=path, retry_seconds=30))
    moved = []
    for cid in ids:
        if store.transition(cid, "pooled", "selected"):
            moved.append(cid)
    out.put(moved)


def test_two_processes_never_both_move_a_candidate(tmp_path, crystalloop_home, perovskites):
    """Conditional updates are atomic between processes on the embedded backend."""
    store = Store.connect(settings=_settings(tmp_path))
    cands = _candidates(perovskites[:40])
    store.insert_candidates("demo", 1, cands)
    ids = [c.id for c in cands]
    store.transition_many(ids, "generated", "pooled")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_race_worker, args=(str(tmp_path / "store"), order, out))
        for order in (ids, ids[::-1])
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    a, b = map(set, results)
    assert not a & b and a | b == set(ids)
    events = store.events("demo", kind="transition", limit=0)
    assert sum(e["to"] == "selected" for e in events) == 40


# -- resilience ----------------------------------------------------------------------------


def _hold_exclusive(db_file: Path, seconds: float, ready: threading.Event) -> None:
    conn = sqlite3.connect(db_file, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    ready.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


def test_operations_resume_after_the_store_file_was_locked(tmp_path, crystalloop_home, perovskites):
    store = Store.connect(settings=_settings(tmp_path, busy_timeout=0.2))
    cands = _candidates(perovskites[:5])
    store.insert_candidates("demo", 1, cands)
    ready = threading.Event()
    holder = threading.Thread(target=_hold_exclusive, args=(store.db.path, 2.0, ready))
    holder.start()
    ready.wait()
    t0 = time.monotonic()
    doc = store.transition(cands[0].id, "generated", "pooled")
    waited = time.monotonic() - t0
    holder.join()
    assert doc["status"] == "pooled"
    assert waited > 1.5 and store.retries > 0
    assert store.count_by_status("demo")["pooled"] == 1


def test_store_unavailable_after_the_retry_window(tmp_path, crystalloop_home):
    store = Store.connect(settings=_settings(tmp_path, busy_timeout=0.1))
    store.settings.retry_seconds = 0.5
    ready = threading.Event()
    holder = threading.Thread(target=_hold_exclusive, args=(store.db.path, 2.0, ready))
    holder.start()
    ready.wait()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        store.ensure_campaign("demo")
    holder.join()
    assert store.ensure_campaign("demo")["cycle"] == 0


# -- locks ---------------------------------------------------------------------------------


def test_lock_held_released_expired(store):
    lock = store.acquire_lock("demo", owner="daemon-1", ttl=30)
    with pytest.raises(LockHeld, match="daemon-1"):
        store.acquire_lock("demo", owner="daemon-2", ttl=30)
    assert store.acquire_lock("demo", owner="daemon-1").owner == "daemon-1"  # re-entrant
    lock.release()
    second = store.acquire_lock("demo", owner="daemon-2", ttl=0.3)
    time.sleep(0.5)  # daemon-2 stops heartbeating: its lease expires
    third = store.acquire_lock("demo", owner="daemon-3", ttl=30)
    assert third.took_over["owner"] == "daemon-2"
    with pytest.raises(LockLost):
        second.heartbeat()
    assert not second.release()  # cannot release someone else's lease
    assert store.lock_holder("demo")["owner"] == "daemon-3"
    kinds = [e["kind"] for e in store.events("demo", newest_first=False, limit=0)]
    assert kinds == ["lock_acquired", "lock_released", "lock_acquired", "lock_taken_over"]


def test_lock_heartbeat_thread_keeps_the_lease(tmp_path, crystalloop_home):
    store = Store.connect(settings=_settings(tmp_path))
    with store.acquire_lock("demo", ttl=1.2) as lock:
        time.sleep(2.5)  # > 2 ttl: only the heartbeat thread (every ttl/3) keeps it alive
        with pytest.raises(LockHeld):
            store.acquire_lock("demo", ttl=10)
        assert not lock.lost.is_set()
    assert store.lock_holder("demo") is None


LOCK_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from agent.store import Store, StoreSettings, LockHeld
    store = Store.connect(settings=StoreSettings(path=sys.argv[1]))
    try:
        lock = store.acquire_lock("demo", ttl=float(sys.argv[2]))
    except LockHeld as exc:
        print("HELD", exc, flush=True)
        sys.exit(3)
    print("ACQUIRED", lock.owner, flush=True)
    with lock:
        time.sleep(float(sys.argv[3]))
    """
)


def _lock_proc(path: Path, ttl: float, hold: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", LOCK_SCRIPT, str(path), str(ttl), str(hold)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def test_lock_between_two_processes_and_takeover_after_kill9(tmp_path, crystalloop_home):
    path = tmp_path / "store"
    first = _lock_proc(path, ttl=600, hold=600)
    assert first.stdout.readline().startswith("ACQUIRED")
    second = _lock_proc(path, ttl=600, hold=0)
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 3 and "HELD" in out
    os.kill(first.pid, signal.SIGKILL)  # lease still valid for 10 minutes, but its pid is dead
    first.wait()
    third = _lock_proc(path, ttl=600, hold=0)
    out, _ = third.communicate(timeout=60)
    assert third.returncode == 0 and out.startswith("ACQUIRED")
    store = Store.connect(settings=StoreSettings(path=path))
    kinds = [e["kind"] for e in store.events("demo", newest_first=False, limit=0)]
    assert kinds == ["lock_acquired", "lock_taken_over", "lock_released"]


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys
    from agent.store import Store, StoreSettings
    store = Store.connect(settings=StoreSettings(path=sys.argv[1]))
    ids = [d["_id"] for d in store.find_candidates("demo", sort=[("_id", 1)])]
    print("READY", flush=True)
    while True:  # move candidates back and forth until killed
        for cid in ids:
            store.transition(cid, "pooled", "selected")
        store.transition_many(ids, "selected", "pooled", fields={"round": 1})
    """
)


def test_kill9_mid_write_leaves_a_consistent_store(tmp_path, crystalloop_home, perovskites):
    """SQLite transactions: a SIGKILL never leaves half a write; repair_events restores the
    audit trail of the one transition whose event the kill may have cut off."""
    path = tmp_path / "store"
    store = Store.connect(settings=StoreSettings(path=path))
    cands = _candidates(perovskites[:30])
    store.insert_candidates("demo", 1, cands)
    store.transition_many([c.id for c in cands], "generated", "pooled")
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_SCRIPT, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout.readline().startswith("READY")
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    docs = store.find_candidates("demo", projection=["status", "transition_id"])
    assert len(docs) == 30 and {d["status"] for d in docs} <= {"pooled", "selected"}
    store.repair_events("demo")
    for doc in docs:  # each candidate's latest event agrees with its status
        (last,) = store.events("demo", candidate_id=doc["_id"], kind="transition", limit=1)
        assert last["to"] == doc["status"]
        assert last["_id"] == f"{doc['_id']}:{doc['transition_id']}"
    assert store.count_by_status("demo")["pooled"] + store.count_by_status("demo")["selected"] == 30


def test_mongo_uri_from_env_and_unreachable_server(monkeypatch, tmp_path, crystalloop_home):
    """CRYSTALLOOP_MONGO_URI selects MongoDB; a server that never answers ends, after the
    retry window, in StoreUnavailable (pymongo's ServerSelectionTimeoutError is retried)."""
    monkeypatch.setenv("CRYSTALLOOP_MONGO_URI", "mongodb://127.0.0.1:9")
    settings = StoreSettings(retry_seconds=1.0, server_selection_timeout_ms=200)
    assert settings.uri == "mongodb://127.0.0.1:9"
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="unreachable"):
        Store.connect(settings=settings)
    assert time.monotonic() - t0 >= 1.0
    with pytest.raises(ValueError, match="mongodb://"):
        Store.connect("http://localhost:27017", settings=settings)
    assert not (crystalloop_home / "store").exists()  # nothing embedded was created
