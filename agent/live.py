"""The live view of a running campaign: cycle and phase, the funnel, and each DFT job's pw.x.

A cycle's DFT phase can run for tens of minutes between two log lines; this view shows what
the daemon and pw.x are doing meanwhile. It reads only the store and the jobs' own files
(never the daemon's memory), so the daemon's terminal (``crystalloop run``) and any other
(``crystalloop status --watch``) show the same thing. Where no terminal is attached (a
detached daemon's log, a pipe) it writes one plain line per running job now and then instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from dft.live_jobs import JobView, LocalJobs

ACTIVE = ("submitted", "running")
# what the daemon does in each phase of a cycle (agent.loop.PHASES); after "submit" the cycle
# is "done" and the daemon harvests DFT results until the next cycle starts
PHASE_WORDS = {
    "generate": "generating candidates",
    "screen": "predicting and filtering",
    "select": "selecting",
    "submit": "submitting to DFT",
    "done": "waiting for DFT",
}


@dataclass
class Snapshot:
    name: str
    campaign: dict[str, Any] | None
    counts: dict[str, int] = field(default_factory=dict)
    cycle: dict[str, Any] = field(default_factory=dict)  # the current cycle's statistics
    jobs: list[JobView] = field(default_factory=list)
    formulas: dict[str, str] = field(default_factory=dict)
    daemon: str | None = None  # owner of a live lock, None when no daemon drives it
    error: str | None = None  # why the view could not be read this time


class CampaignWatcher:
    """Reads one campaign's snapshot from the store and, with the local backend, the jobs'
    files. Keep one per view: the job reader follows pw.x outputs incrementally."""

    def __init__(self, store: Any, name: str):
        self.store = store
        self.name = name
        self._jobs: LocalJobs | None = None
        self._backend: str | None = None

    def _job_reader(self, campaign: dict) -> LocalJobs | None:
        if self._backend is None:
            dft = (campaign.get("config") or {}).get("dft") or {}
            self._backend = dft.get("backend", "local")
            if self._backend == "local":
                self._jobs = LocalJobs(walltime_s=dft.get("max_seconds"))
        return self._jobs

    def snapshot(self) -> Snapshot:
        from agent.store.lock import is_stale

        store, name = self.store, self.name
        campaign = store.get_campaign(name)
        snap = Snapshot(name, campaign)
        if campaign is None:
            return snap
        snap.counts = store.count_by_status(name)
        cycles = store.cycles(name)
        snap.cycle = cycles[-1] if cycles else {}
        active = store.find_candidates(
            name, ACTIVE, sort=[("status_times.submitted", 1)], projection=["formula"]
        )
        snap.formulas = {d["_id"]: d.get("formula") or "?" for d in active}
        reader = self._job_reader(campaign)
        if reader is not None:
            snap.jobs = reader.views(snap.formulas)
        else:
            snap.jobs = [JobView(cid[:8], cid, f"on {self._backend}") for cid in snap.formulas]
        lock = store.lock_holder(name)
        snap.daemon = lock.get("owner") if lock and not is_stale(lock) else None
        return snap


# ----------------------------------------------------------------------------- formatting
def clock(seconds: float | None) -> str:
    """m:ss, or h:mm:ss from an hour on."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _energy(job: JobView) -> str:
    p = job.progress
    return "" if p is None or p.energy_ev is None else f"{p.energy_ev:.3f}"


def _force(job: JobView) -> str:
    p = job.progress
    return "" if p is None or p.total_force_ev_a is None else f"{p.total_force_ev_a:.3f}"


def _wall(job: JobView) -> str:
    if job.elapsed_s is None:
        return ""
    if job.limit_s is None or job.progress is None:
        return clock(job.elapsed_s)
    return f"{clock(job.elapsed_s)}/{clock(job.limit_s)}"


def header(snap: Snapshot) -> Text:
    doc = snap.campaign or {}
    config = doc.get("config") or {}
    max_cycles = (config.get("stopping") or {}).get("max_cycles")
    cycle = doc.get("cycle", 0)
    text = Text(snap.name, style="bold")
    text.append(f"  cycle {cycle}" + (f" of {max_cycles}" if max_cycles else ""))
    state = doc.get("state") or "not started"
    if state == "running":
        phase = doc.get("phase") or "done"
        text.append(f" · {PHASE_WORDS.get(phase, phase)}")
        if not snap.daemon:
            text.append(" · no daemon drives it", style="yellow")
    else:
        text.append(f" · {state}")
    return text


def funnel(snap: Snapshot) -> Text:
    """This cycle's funnel, then the campaign's DFT counts against the budget."""
    c = snap.cycle
    parts = []
    if c:
        extra = [
            f"{c[k]} {w}"
            for k, w in (("duplicates", "dup"), ("undecoded", "undecodable"))
            if c.get(k)
        ]
        gen = f"generated {c.get('generated', 0)}" + (f" ({', '.join(extra)})" if extra else "")
        parts = [gen]
        for key, word in (("rejected", "rejected"), ("pooled", "pooled"), ("selected", "selected")):
            if key in c:
                parts.append(f"{c[key]} {word}")
    n = snap.counts
    budget = ((snap.campaign or {}).get("config") or {}).get("budgets", {})
    budget_n = budget.get("max_dft_calculations")
    used = sum(n.get(s, 0) for s in ("submitted", "running", "completed", "failed"))
    text = Text()
    if parts:
        text.append(f"cycle {c.get('cycle')}: " + " → ".join(parts) + "\n")
    text.append(
        f"DFT {used}" + (f" of {budget_n}" if budget_n else "") + ": "
        f"{n.get('submitted', 0)} queued, {n.get('running', 0)} running, "
        f"{n.get('completed', 0)} done, {n.get('failed', 0)} failed · "
        f"pool {n.get('pooled', 0)}"
    )
    return text


def jobs_table(snap: Snapshot) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1), collapse_padding=True
    )
    table.add_column("job", no_wrap=True)
    table.add_column("formula", no_wrap=True, max_width=12, overflow="ellipsis")
    table.add_column("pw.x step")
    table.add_column("E (eV)", justify="right", no_wrap=True)
    table.add_column("|F| eV/Å", justify="right", no_wrap=True)
    table.add_column("wall/limit", justify="right", no_wrap=True)
    for job in snap.jobs:
        formula = snap.formulas.get(job.candidate_id or "", "")
        if job.candidate_id is None:  # an elemental reference: the element is its formula
            formula = job.label.removeprefix("ref ")
        table.add_row(job.label, formula, job.step_text(), _energy(job), _force(job), _wall(job))
    return table


def render(snap: Snapshot) -> RenderableType:
    if snap.campaign is None:
        return Text(f"{snap.name}: waiting for the campaign to start ...")
    parts: list[RenderableType] = [header(snap), funnel(snap)]
    if snap.jobs:
        parts.append(jobs_table(snap))
    if snap.error:
        parts.append(Text(f"live view: {snap.error}", style="yellow"))
    return Group(*parts)


def plain_lines(snap: Snapshot) -> list[str]:
    """One line per calculation, for logs (no terminal to redraw): a pw.x job's step, energy,
    force and wall time; a candidate's stage (CHGNet pre-relax, waiting for references) when
    no pw.x of its own runs, so a log never goes quiet while references are computed."""
    lines = []
    for job in snap.jobs:
        name = job.label
        if job.candidate_id is not None:
            name = f"{job.label} {snap.formulas.get(job.candidate_id, '')}".rstrip()
        if job.progress is None:
            if job.stage in ("queued", "completed", "done", "failed"):
                continue
            wall = f", {_wall(job)}" if _wall(job) else ""
            lines.append(f"{name}: {job.stage}{wall}")
            continue
        energy = f", E {_energy(job)} eV" if _energy(job) else ""
        force = f", |F| {_force(job)} eV/Å" if _force(job) else ""
        lines.append(f"{name}: {job.step_text()}{energy}{force}, {_wall(job)}")
    return lines


# ----------------------------------------------------------------------------- drivers
class LiveProgress:
    """While the daemon runs in this process: a sampling thread reads a snapshot every
    `interval` seconds (from its own store connection) and redraws a rich Live view below the
    log lines; without a terminal it logs `plain_lines` every `plain_every` seconds."""

    def __init__(
        self,
        console: Console,
        name: str,
        open_store: Callable[[], Any],
        interval: float = 1.0,
        plain_every: float = 60.0,
        live: bool | None = None,
    ):
        self.console = console
        self.name = name
        self.open_store = open_store
        self.interval = interval
        self.plain_every = plain_every
        self.live_mode = console.is_terminal if live is None else live
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Any = None

    def log(self, message: str) -> None:
        self.console.log(message)

    def __enter__(self) -> LiveProgress:
        if self.live_mode:
            from rich.live import Live

            self._live = Live(Text(""), console=self.console, auto_refresh=False, transient=True)
            self._live.start()
        self._thread = threading.Thread(target=self._sample, name="live-view", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._live is not None:
            self._live.stop()

    def _sample(self) -> None:
        store = None
        last_plain = time.monotonic()
        try:
            store = self.open_store()
            watcher = CampaignWatcher(store, self.name)
            while not self._stop.wait(self.interval):
                try:
                    snap = watcher.snapshot()
                except Exception as exc:  # noqa: BLE001 - the view must never stop the run
                    snap = Snapshot(self.name, {"state": "?"}, error=f"{type(exc).__name__}")
                if self._live is not None:
                    self._live.update(render(snap), refresh=True)
                elif time.monotonic() - last_plain >= self.plain_every:
                    last_plain = time.monotonic()
                    for line in plain_lines(snap):
                        self.console.log(line)
        except Exception as exc:  # noqa: BLE001 - no store for the view: the run goes on
            self.console.log(f"live view unavailable: {type(exc).__name__}: {exc}")
        finally:
            if store is not None:
                store.close_thread()
                store.close()


def watch(
    store: Any,
    name: str,
    console: Console,
    interval: float = 2.0,
    grace: float = 30.0,
) -> Snapshot:
    """Redraw `name`'s view until no daemon drives it; returns the last snapshot. A campaign
    with no daemon yet (just started with --detach) gets `grace` seconds to acquire one."""
    from rich.live import Live

    watcher = CampaignWatcher(store, name)
    started = time.monotonic()
    snap = watcher.snapshot()
    with Live(render(snap), console=console, auto_refresh=False) as live:
        while True:
            state = (snap.campaign or {}).get("state")
            if snap.daemon is None and (
                state in ("completed", "failed", "stopped") or time.monotonic() - started > grace
            ):
                break
            time.sleep(interval)
            snap = watcher.snapshot()
            live.update(render(snap), refresh=True)
    return snap
