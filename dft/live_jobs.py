"""What the local backend's calculations are doing right now, from the files they write.

The backend's own records say only queued / running / done. A candidate's flow is several
jobs (CHGNet pre-relaxation, pw.x relaxation, elemental references), and the pw.x runs are
the long part; this module finds the pw.x run belonging to each candidate (its run directory
is named after the job's uuid, which the stored flow holds) and follows its output. Which
pw.x runs are alive, and since when, comes from the process table (their working directory),
so a directory left behind by a killed run is never shown as running. Everything here only
reads, so a second process (``crystalloop status --watch``) can watch the same jobs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dft.progress import PwOutputFollower, PwProgress

_ATTEMPT = re.compile(r"attempt_(\d+)$")


@dataclass(frozen=True)
class PwProcess:
    directory: Path  # pw.x's working directory: one attempt_N folder
    started_at: float


@dataclass(frozen=True)
class JobView:
    """One line of the live view: a candidate's calculation or an elemental reference."""

    label: str  # candidate id prefix, or "ref O"
    candidate_id: str | None
    stage: str  # "queued", "CHGNet pre-relax", "pw.x vc-relax", "references", ...
    progress: PwProgress | None = None
    attempt: int | None = None
    elapsed_s: float | None = None  # of the running pw.x attempt (or of the worker)
    limit_s: float | None = None  # pw.x wall-time limit per attempt

    def step_text(self) -> str:
        if self.progress is None:
            return self.stage
        text = self.progress.step_text()
        return f"{text} (retry {self.attempt})" if self.attempt else text


def running_pw_processes() -> list[PwProcess]:
    """pw.x processes on this host, one per working directory (MPI ranks share one)."""
    import psutil

    found: dict[Path, float] = {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.info["name"] != "pw.x" and not (cmd and Path(cmd[0]).name == "pw.x"):
                continue
            directory = Path(proc.cwd())
            started = proc.create_time()
        except (psutil.Error, OSError):
            continue
        found[directory] = min(started, found.get(directory, started))
    return [PwProcess(d, t) for d, t in found.items()]


def _flow_jobs(flow: Any) -> list[dict]:
    """(name, uuid) of every job in a serialised jobflow Flow, in order."""
    out: list[dict] = []
    if isinstance(flow, dict):
        if flow.get("@class") == "Job":
            out.append({"name": flow.get("name", ""), "uuid": flow.get("uuid", "")})
            return out
        for value in flow.values():
            out += _flow_jobs(value)
    elif isinstance(flow, list):
        for value in flow:
            out += _flow_jobs(value)
    return out


class LocalJobs:
    """Reads the local backend's submission records and flows, the pw.x run directories and
    the process table; caches what does not change (a flow's job uuids, where its pw.x runs
    live) and follows each pw.x output incrementally."""

    def __init__(
        self,
        root: Path | None = None,
        runs_dir: Path | None = None,
        walltime_s: float | None = None,
        processes: Callable[[], Iterable[PwProcess]] = running_pw_processes,
    ):
        from dft.settings import DFTSettings

        settings = DFTSettings()
        self.root = Path(root or settings.home / "dft" / "local")
        self.runs_dir = Path(runs_dir or settings.runs_dir)
        self.walltime_s = walltime_s if walltime_s is not None else settings.walltime_s
        self._processes = processes
        self._jobs: dict[str, list[dict]] = {}
        self._followers: dict[Path, PwOutputFollower] = {}

    def _record(self, candidate_id: str) -> dict | None:
        from dft.backends import LocalBackend

        path = self.root / "submissions" / f"{LocalBackend.key(candidate_id)}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _flow_jobs(self, candidate_id: str) -> list[dict]:
        if candidate_id not in self._jobs:
            from dft.backends import LocalBackend

            path = self.root / "flows" / f"{LocalBackend.key(candidate_id)}.json"
            try:
                self._jobs[candidate_id] = _flow_jobs(json.loads(path.read_text()))
            except (OSError, ValueError):
                return []
        return self._jobs[candidate_id]

    def _done(self, job: dict) -> bool:
        """Whether a job of the flow has finished: the worker's store holds its output."""
        return bool(job["uuid"]) and (self.root / "store" / "outputs" / job["uuid"]).is_dir()

    def _run_dirs(self, uuid: str) -> list[Path]:
        return sorted(self.runs_dir.glob(f"*-{uuid}-*")) if uuid else []

    def _progress(self, attempt_dir: Path) -> PwProgress:
        out = attempt_dir / "pw.out"
        if out not in self._followers:
            self._followers[out] = PwOutputFollower(out)
        return self._followers[out].poll()

    def views(self, candidate_ids: Iterable[str]) -> list[JobView]:
        """A line per candidate, then one per elemental reference pw.x now runs."""
        now = time.time()
        running = {p.directory.resolve(): p for p in self._processes()}
        views = [self._candidate_view(cid, running, now) for cid in candidate_ids]
        references = (self.runs_dir / "references").resolve()
        for directory, proc in sorted(running.items(), key=lambda kv: kv[1].started_at):
            if directory.parent.parent != references:
                continue
            element = directory.parent.name.split("-", 1)[0]
            views.append(
                JobView(
                    label=f"ref {element}",
                    candidate_id=None,
                    stage="pw.x reference",
                    progress=self._progress(directory),
                    attempt=_attempt_index(directory),
                    elapsed_s=now - proc.started_at,
                    limit_s=self.walltime_s,
                )
            )
        return views

    def _candidate_view(self, cid: str, running: dict[Path, PwProcess], now: float) -> JobView:
        label = cid[:8]
        rec = self._record(cid)
        if rec is None:
            return JobView(label, cid, "not in the local backend")
        if rec["state"] != "running":
            return JobView(label, cid, rec["state"])
        worker_elapsed = now - float(rec.get("started_at") or now)
        jobs = self._flow_jobs(cid)
        pw_dirs = [
            (job, d)
            for job in jobs
            if "chgnet" not in job["name"]
            for d in self._run_dirs(job["uuid"])
        ]
        for job, run_dir in pw_dirs:
            for attempt_dir in sorted(run_dir.glob("attempt_*"), key=_attempt_index):
                proc = running.get(attempt_dir.resolve())
                if proc is None:
                    continue
                progress = self._progress(attempt_dir)
                calculation = progress.calculation or job["name"]
                return JobView(
                    label,
                    cid,
                    f"pw.x {calculation}",
                    progress=progress,
                    attempt=_attempt_index(attempt_dir),
                    elapsed_s=now - proc.started_at,
                    limit_s=self.walltime_s,
                )
        if pw_dirs:
            last = max(
                (a for _, d in pw_dirs for a in d.glob("attempt_*")),
                key=_attempt_index,
                default=None,
            )
            if last is not None and self._progress(last).finished:
                stage = "references"  # its elements' reference jobs run (own lines below)
            else:
                stage = "pw.x restarting"  # a corrective retry is being prepared
        elif any("chgnet" in job["name"] and not self._done(job) for job in jobs):
            stage = "CHGNet pre-relax"
        elif jobs:
            stage = "references"  # its elements' reference jobs run first (own lines below)
        else:
            stage = "starting"
        return JobView(label, cid, stage, elapsed_s=worker_elapsed)


def _attempt_index(directory: Path) -> int:
    match = _ATTEMPT.search(directory.name)
    return int(match.group(1)) if match else 0
