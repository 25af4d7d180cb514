"""Execution backends with one interface: submit(candidate_id, flow) -> Handle, poll, result,
and dispatch.

Both are idempotent across processes: the candidate_id -> submission mapping is persistent
(files next to the local store; a `crystalloop_submissions` collection in the launchpad database),
so a daemon killed with -9 and restarted reconciles with what exists instead of resubmitting.

Reading is never acting: `poll`, `handles` and `result` only read, so `crystalloop dft status`
or a second process watching a campaign cannot start, requeue or rerun anything. All work -
starting queued local workers, requeueing lost ones, rerunning fizzled fireworks - happens in
`dispatch` (and in `submit`, `rerun` and `wait`, which ask for work), which the daemon calls
once per harvest. Where a read sees what dispatch will change (a dead worker, a fizzled
firework with reruns left), it reports the state dispatch will give it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from dft.processes import create_time, pid_alive

State = Literal["queued", "running", "completed", "failed"]
FINAL_STATES = ("completed", "failed")


class Handle(BaseModel):
    """Serializable reference to a submission; `candidate_id` alone is enough to find it again."""

    backend: Literal["local", "fireworks"]
    candidate_id: str
    flow_uuid: str
    output_uuid: str | None = None
    fw_ids: list[int] = Field(default_factory=list)


class Status(BaseModel):
    state: State
    detail: str = ""
    lost_count: int = 0
    reruns: int = 0


class Backend(Protocol):
    def submit(self, candidate_id: str, flow: Any) -> Handle: ...
    def dispatch(self) -> None: ...
    def poll(self, handle: Handle | str) -> Status: ...
    def result(self, handle: Handle | str) -> dict: ...
    def handle_for(self, candidate_id: str) -> Handle | None: ...
    def handles(self) -> list[Handle]: ...
    def rerun(self, handle: Handle | str) -> Status: ...


class NotFinished(RuntimeError):
    """result() asked for a submission that has not completed."""


def _cid(handle: Handle | str) -> str:
    return handle.candidate_id if isinstance(handle, Handle) else str(handle)


def _output_uuid(flow: Any) -> str | None:
    out = getattr(flow, "output", None)
    uuid = getattr(out, "uuid", None)
    if uuid is None and hasattr(flow, "jobs") and flow.jobs:
        uuid = flow.jobs[-1].uuid
    return uuid


def make_monty_jobstore(db_dir: Path) -> Any:
    """JobStore on montydb files, as local backends before the file store wrote them: read
    only, for results recorded then (several writing processes can corrupt it)."""
    from jobflow import JobStore
    from maggma.stores import MontyStore

    db_dir.mkdir(parents=True, exist_ok=True)
    kw = {"database_path": str(db_dir), "database_name": "jobflow"}
    return JobStore(
        MontyStore("outputs", **kw), additional_stores={"data": MontyStore("outputs_data", **kw)}
    )


class LocalBackend:
    """jobflow run_locally in detached worker processes (they outlive the caller), with a
    concurrency limit. Each worker writes its jobs' outputs to a store that keeps one file per
    document (dft.file_store), so concurrent workers never write the same file. A worker that
    dies is detected as lost and requeued up to `lost_retries` times, then reported failed."""

    name = "local"

    def __init__(
        self,
        root: str | Path | None = None,
        concurrency: int | None = None,
        lost_retries: int = 1,
    ):
        from dft.settings import DFTSettings

        settings = DFTSettings()
        self.root = Path(root or settings.home / "dft" / "local").resolve()
        self.concurrency = concurrency or settings.concurrency
        self.lost_retries = lost_retries
        for sub in ("submissions", "flows", "logs", "runs", "store"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.store = local_jobstore(self.root)
        self._procs: dict[int, subprocess.Popen] = {}

    # -- persistence -------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def key(candidate_id: str) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in candidate_id)[:40]
        return f"{safe}-{hashlib.sha1(candidate_id.encode()).hexdigest()[:10]}"

    def _record_path(self, candidate_id: str) -> Path:
        return self.root / "submissions" / f"{self.key(candidate_id)}.json"

    def _read(self, candidate_id: str) -> dict | None:
        p = self._record_path(candidate_id)
        return json.loads(p.read_text()) if p.is_file() else None

    def _write(self, rec: dict) -> None:
        write_record(self.root, rec)

    def _handle(self, rec: dict) -> Handle:
        return Handle(
            backend="local",
            candidate_id=rec["candidate_id"],
            flow_uuid=rec["flow_uuid"],
            output_uuid=rec.get("output_uuid"),
        )

    # -- public API --------------------------------------------------------------------
    def submit(self, candidate_id: str, flow: Any) -> Handle:
        """Queue the flow once per candidate_id; a repeated call returns the first handle."""
        from monty.json import MontyEncoder

        with self._lock():
            rec = self._read(candidate_id)
            if rec is None:
                key = self.key(candidate_id)
                flow_path = self.root / "flows" / f"{key}.json"
                tmp = flow_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(flow.as_dict(), cls=MontyEncoder))
                tmp.replace(flow_path)
                rec = {
                    "candidate_id": candidate_id,
                    "key": key,
                    "flow_uuid": flow.uuid,
                    "output_uuid": _output_uuid(flow),
                    "state": "queued",
                    "submitted_at": time.time(),
                    "pid": None,
                    "pid_create_time": None,
                    "lost_count": 0,
                    "error": "",
                }
                self._write(rec)
        self.dispatch()
        return self._handle(rec)

    def handle_for(self, candidate_id: str) -> Handle | None:
        rec = self._read(candidate_id)
        return self._handle(rec) if rec else None

    def handles(self) -> list[Handle]:
        out = []
        for p in sorted((self.root / "submissions").glob("*.json")):
            out.append(self._handle(json.loads(p.read_text())))
        return out

    def poll(self, handle: Handle | str) -> Status:
        """The recorded state, read only (a dead worker: what dispatch will make of it)."""
        rec = self._read(_cid(handle))
        if rec is None:
            raise KeyError(f"candidate {_cid(handle)!r} was never submitted to {self.root}")
        if rec["state"] == "running" and not pid_alive(rec["pid"], rec["pid_create_time"]):
            rec = self._read(rec["candidate_id"]) or rec  # it may have finished just now
            if rec["state"] == "running":
                lost = rec["lost_count"] + 1
                if lost <= self.lost_retries:
                    detail = "worker lost; requeued at the next dispatch"
                    return Status(state="queued", detail=detail, lost_count=lost)
                detail = f"lost: worker died {lost} time(s)"
                return Status(state="failed", detail=detail, lost_count=lost)
        return Status(state=rec["state"], detail=rec.get("error", ""), lost_count=rec["lost_count"])

    def result(self, handle: Handle | str) -> dict:
        """The flow's output document (for relax_candidate: the FormationDocument as a dict)."""
        rec = self._read(_cid(handle))
        if rec is None or rec["state"] != "completed":
            raise NotFinished(f"{_cid(handle)!r} is {rec['state'] if rec else 'unknown'}")
        self.store.connect()
        try:
            return self.store.get_output(rec["output_uuid"], load=True)
        except ValueError:
            legacy = self.root / "db"
            if not legacy.is_dir():
                raise
            store = make_monty_jobstore(legacy)  # a result recorded before the file store
            store.connect()
            try:
                return store.get_output(rec["output_uuid"], load=True)
            finally:
                store.close()
        finally:
            self.store.close()

    def rerun(self, handle: Handle | str) -> Status:
        """Queue a failed submission again (same flow, same job uuids: outputs are replaced)."""
        with self._lock():
            rec = self._read(_cid(handle))
            if rec is None:
                raise KeyError(f"candidate {_cid(handle)!r} was never submitted")
            if rec["state"] == "failed":
                rec.update(state="queued", error="", pid=None, lost_count=0)
                self._write(rec)
        self.dispatch()
        return self.poll(handle)

    def wait(self, handles: list[Handle | str], timeout: float = 3600, every: float = 1.0) -> dict:
        """Dispatch and poll until all are final; {candidate_id: Status}."""
        t0 = time.time()
        while True:
            self.dispatch()
            st = {_cid(h): self.poll(h) for h in handles}
            if all(s.state in FINAL_STATES for s in st.values()) or time.time() - t0 > timeout:
                return st
            time.sleep(every)

    # -- scheduling --------------------------------------------------------------------
    def dispatch(self) -> None:
        """Reap workers, mark lost ones, start queued ones up to the concurrency limit."""
        for pid, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[pid]
        with self._lock():
            recs = [json.loads(p.read_text()) for p in (self.root / "submissions").glob("*.json")]
            running = 0
            for rec in recs:
                if rec["state"] != "running":
                    continue
                if pid_alive(rec["pid"], rec["pid_create_time"]):
                    running += 1
                    continue
                rec = json.loads(self._record_path(rec["candidate_id"]).read_text())
                if rec["state"] != "running":
                    continue  # the worker finished between our two reads
                rec["lost_count"] += 1
                rec["pid"] = None
                if rec["lost_count"] <= self.lost_retries:
                    rec["state"] = "queued"
                else:
                    rec["state"] = "failed"
                    rec["error"] = f"lost: worker died {rec['lost_count']} time(s)"
                self._write(rec)
            queued = sorted(
                (r for r in recs if r["state"] == "queued"), key=lambda r: r["submitted_at"]
            )
            for rec in queued:
                if running >= self.concurrency:
                    break
                rec = json.loads(self._record_path(rec["candidate_id"]).read_text())
                if rec["state"] != "queued":
                    continue
                self._start_worker(rec)
                running += 1

    def _start_worker(self, rec: dict) -> None:
        log = open(self.root / "logs" / f"{rec['key']}.log", "a")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "dft.local_worker", str(self.root), rec["candidate_id"]],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the caller being killed
            close_fds=True,
        )
        log.close()
        self._procs[proc.pid] = proc
        rec.update(
            state="running",
            pid=proc.pid,
            pid_create_time=create_time(proc.pid),
            started_at=time.time(),
        )
        self._write(rec)


def local_jobstore(root: Path) -> Any:
    """The JobStore of a local backend rooted at `root` (its workers open the same one)."""
    from dft.file_store import make_file_jobstore

    return make_file_jobstore(Path(root) / "store")


def write_record(root: Path, rec: dict) -> None:
    path = root / "submissions" / f"{rec['key']}.json"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec))
    tmp.replace(path)


class FireWorksBackend:
    """flow_to_workflow + LaunchPad.add_wf; poll maps FireWorks states; dispatch detects lost
    runs and reruns fizzled fireworks up to `max_reruns`. Workers run `rlaunch`/`qlaunch` as
    usual."""

    name = "fireworks"
    COLLECTION = "crystalloop_submissions"

    def __init__(
        self,
        launchpad: Any = None,
        store: Any = None,
        embed_store: bool = False,
        max_reruns: int = 1,
        lost_after_s: float = 4 * 3600,
    ):
        """`store`: JobStore to read results from (default: jobflow's JOB_STORE from
        jobflow.yaml). `embed_store`: also ship it inside each firework (needed when workers have
        no jobflow.yaml; credentials then live in the launchpad)."""
        from fireworks import LaunchPad

        self.lp = launchpad or LaunchPad.auto_load()
        self.store = store
        self.embed_store = embed_store
        self.max_reruns = max_reruns
        self.lost_after_s = lost_after_s
        self.coll = self.lp.db[self.COLLECTION]

    def _job_store(self) -> Any:
        if self.store is not None:
            return self.store
        from jobflow import SETTINGS

        return SETTINGS.JOB_STORE

    def _handle(self, doc: dict) -> Handle:
        return Handle(
            backend="fireworks",
            candidate_id=doc["_id"],
            flow_uuid=doc["flow_uuid"],
            output_uuid=doc.get("output_uuid"),
            fw_ids=doc.get("fw_ids", []),
        )

    def submit(self, candidate_id: str, flow: Any) -> Handle:
        """Atomic claim of the candidate id (unique _id), then add_wf; a crash in between is
        repaired on the next call by finding the workflow through its metadata."""
        from jobflow.managers.fireworks import flow_to_workflow

        doc = self.coll.find_one({"_id": candidate_id})
        if doc is None:
            try:
                self.coll.insert_one(
                    {
                        "_id": candidate_id,
                        "flow_uuid": flow.uuid,
                        "output_uuid": _output_uuid(flow),
                        "state": "submitting",
                        "submitted_at": time.time(),
                        "reruns": 0,
                    }
                )
            except Exception as exc:  # DuplicateKeyError (pymongo or mongomock)
                if "DuplicateKey" not in type(exc).__name__:
                    raise
            doc = self.coll.find_one({"_id": candidate_id})
        if doc.get("fw_ids"):
            return self._handle(doc)
        wf_doc = self.lp.workflows.find_one({"metadata.candidate_id": candidate_id})
        if wf_doc is not None:
            fw_ids = sorted(wf_doc["nodes"])
        else:
            if doc["flow_uuid"] != flow.uuid:
                # another process claimed the id with its own flow; wait for its add_wf
                for _ in range(30):
                    time.sleep(1)
                    doc = self.coll.find_one({"_id": candidate_id})
                    if doc.get("fw_ids"):
                        return self._handle(doc)
                raise RuntimeError(f"submission of {candidate_id!r} is stuck in another process")
            store = self._job_store() if self.embed_store else None
            wf = flow_to_workflow(flow, store=store)
            wf.metadata.update({"candidate_id": candidate_id, "flow_uuid": flow.uuid})
            id_map = self.lp.add_wf(wf)
            fw_ids = sorted(id_map.values())
        self.coll.update_one(
            {"_id": candidate_id}, {"$set": {"fw_ids": fw_ids, "state": "submitted"}}
        )
        return self._handle(self.coll.find_one({"_id": candidate_id}))

    def handle_for(self, candidate_id: str) -> Handle | None:
        doc = self.coll.find_one({"_id": candidate_id})
        return self._handle(doc) if doc and doc.get("fw_ids") else None

    def handles(self) -> list[Handle]:
        return [self._handle(d) for d in self.coll.find({"fw_ids": {"$exists": True}})]

    def _error(self, fw_id: int) -> str:
        fw = self.lp.get_fw_by_id(fw_id)
        for launch in reversed(fw.launches or []):
            data = (launch.action.stored_data if launch.action else None) or {}
            exc = data.get("_exception", {})
            if exc:
                return str(exc.get("_stacktrace", ""))[-500:]
        return f"firework {fw_id} fizzled"

    def _states(self, ids: list[int]) -> dict[int, str]:
        return {
            d["fw_id"]: d["state"]
            for d in self.lp.fireworks.find({"fw_id": {"$in": ids}}, {"fw_id": 1, "state": 1})
        }

    def dispatch(self) -> None:
        """Rerun lost runs (a worker died without reporting) and fizzled fireworks that have
        reruns left; the workers do the rest."""
        docs = list(self.coll.find({"fw_ids": {"$exists": True}}))
        ids = [i for d in docs for i in d["fw_ids"]]
        if not ids:
            return
        lost, _, _ = self.lp.detect_lostruns(
            expiration_secs=self.lost_after_s, rerun=True, query={"fw_id": {"$in": ids}}
        )
        lost = {int(i) for i in lost}
        fizzled_ids = {
            d["fw_id"]
            for d in self.lp.fireworks.find(
                {"fw_id": {"$in": ids}, "state": "FIZZLED"}, {"fw_id": 1}
            )
        }
        for doc in docs:
            n_lost = len(lost & set(doc["fw_ids"]))
            if n_lost:
                self.coll.update_one({"_id": doc["_id"]}, {"$inc": {"lost_count": n_lost}})
            fizzled = sorted(fizzled_ids & set(doc["fw_ids"]))
            if fizzled and doc.get("reruns", 0) < self.max_reruns:
                for fw_id in fizzled:
                    self.lp.rerun_fw(fw_id)
                self.coll.update_one({"_id": doc["_id"]}, {"$inc": {"reruns": 1}})

    def poll(self, handle: Handle | str) -> Status:
        """The workflow's state, read only (a fizzled firework with reruns left is reported
        queued: dispatch reruns it)."""
        cid = _cid(handle)
        doc = self.coll.find_one({"_id": cid})
        if doc is None or not doc.get("fw_ids"):
            raise KeyError(f"candidate {cid!r} was never submitted to this launchpad")
        lost_count = doc.get("lost_count", 0)
        states = self._states(doc["fw_ids"])
        if not states:
            return Status(state="failed", detail="workflow no longer on the launchpad (reset?)")
        reruns = doc.get("reruns", 0)
        fizzled = [i for i, s in states.items() if s == "FIZZLED"]
        if fizzled:
            if reruns < self.max_reruns:
                detail = "fizzled; rerun at the next dispatch"
                return Status(state="queued", detail=detail, reruns=reruns, lost_count=lost_count)
            return Status(state="failed", detail=self._error(fizzled[0]), reruns=reruns)
        values = set(states.values())
        if values == {"COMPLETED"}:
            state: State = "completed"
        elif "DEFUSED" in values or "ARCHIVED" in values:
            state = "failed"
        elif values & {"RUNNING", "RESERVED"}:
            state = "running"
        else:
            state = "queued"
        return Status(state=state, detail=",".join(sorted(values)), lost_count=lost_count)

    def rerun(self, handle: Handle | str) -> Status:
        """Rerun the fizzled fireworks of a failed submission (resets its rerun budget)."""
        cid = _cid(handle)
        doc = self.coll.find_one({"_id": cid})
        if doc is None or not doc.get("fw_ids"):
            raise KeyError(f"candidate {cid!r} was never submitted to this launchpad")
        for d in self.lp.fireworks.find({"fw_id": {"$in": doc["fw_ids"]}, "state": "FIZZLED"}):
            self.lp.rerun_fw(d["fw_id"])
        self.coll.update_one({"_id": cid}, {"$set": {"reruns": 0}})
        return self.poll(cid)

    def result(self, handle: Handle | str) -> dict:
        cid = _cid(handle)
        doc = self.coll.find_one({"_id": cid})
        if doc is None or self.poll(cid).state != "completed":
            raise NotFinished(f"{cid!r} has not completed")
        store = self._job_store()
        store.connect()
        try:
            return store.get_output(doc["output_uuid"], load=True)
        finally:
            store.close()


def get_backend(kind: str = "local", **kwargs: Any) -> LocalBackend | FireWorksBackend:
    if kind == "local":
        return LocalBackend(**kwargs)
    if kind == "fireworks":
        return FireWorksBackend(**kwargs)
    raise ValueError(f"unknown backend {kind!r}: use 'local' or 'fireworks'")
