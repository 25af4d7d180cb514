"""A campaign's candidates in a compact, in-memory table, kept fresh from the event log.

Why: the candidates page sorts and filters on nested fields (generator, predicted mean) and the
campaign page groups by generator. The store indexes campaign/status/cycle only, and the
embedded backend evaluates nested-field filters in Python over every document - seconds at
100,000 candidates, on every page view. So the dashboard reads each candidate's few table
fields once (one projected scan), then follows the append-only event log, which names every
candidate whose status changed (``agent.store.transitions``: one event per transition, one per
insert): each refresh reads the newest events (an index-ordered query on campaign/time) and
re-reads only the candidates they name (primary-key lookups). As a safety net the per-status
counts (indexed) are compared with the digest's after every refresh; a mismatch that persists,
an hour's age, or more new events than are worth following trigger a fresh scan, run in the
background while requests go on with the rows they have. The dashboard builds every
campaign's digest when it starts (``app.Dashboard.prewarm``), so the first page need not wait.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

#: what one table row needs (everything else is read per page, for the page's rows only)
PROJECTION = [
    "status",
    "cycle",
    "selected_cycle",
    "provenance",
    "formula",
    "nsites",
    "score",
    "predictions",
    "filters",
]  # no dates: the embedded store decodes each with strptime, a third of a scan's time
OVERLAP = timedelta(seconds=5)  # an event can land a little after its timestamp
MAX_EVENTS = 256_000  # more new events than this: a fresh scan is cheaper than following them
MIN_INTERVAL = 0.5  # seconds between two looks at the event log
REBUILD_AFTER = 3600.0  # seconds: a periodic rescan (in the background) heals what no event told
SUSPECT_LIMIT = 3  # refreshes in a row whose counts disagree with the store before a rescan


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector around a pass that allocates ~100,000 objects: a
    digest holds ~100,000 long-lived rows, and each collection the pass triggers walks them
    all (measured: sorting 100,000 rows 1.2-1.6 s with collections, 0.5-0.7 s without). Only
    the thread that paused it resumes it, so overlapping passes cannot leave it paused."""
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


@dataclass(slots=True)
class Row:
    id: str
    status: str
    cycle: int | None
    selected_cycle: int | None
    generator: str | None
    formula: str | None
    nsites: int | None
    score: float | None
    pred_mean: float | None
    pred_std: float | None
    reasons: tuple[str, ...]

    @classmethod
    def of(cls, doc: dict[str, Any], prop: str) -> Row:
        pred = (doc.get("predictions") or {}).get(prop) or {}
        if not isinstance(pred, dict):
            pred = {"mean": pred}
        return cls(
            id=str(doc["_id"]),
            status=doc.get("status") or "?",
            cycle=doc.get("cycle"),
            selected_cycle=doc.get("selected_cycle"),
            generator=(doc.get("provenance") or {}).get("generator"),
            formula=doc.get("formula"),
            nsites=doc.get("nsites"),
            score=_number(doc.get("score")),
            pred_mean=_number(pred.get("mean")),
            pred_std=_number(pred.get("std")),
            reasons=tuple(sorted((doc.get("filters") or {}).keys())),
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class Digest:
    """The table rows of one campaign; ``fresh()`` brings them up to date and returns them.

    Only the first build blocks a request; later rescans (periodic, or when the counts keep
    disagreeing) run in a background thread and swap the rows in when done. A rescan notes
    the newest event before it starts, so what changes during the scan is re-read after it.
    """

    def __init__(self, store: Any, campaign: str, prop: str = "formation_energy_per_atom"):
        self.store = store
        self.campaign = campaign
        self.prop = prop
        self.rows: dict[str, Row] = {}
        self.head: tuple[Any, Any] | None = None  # (time, _id) of the newest event seen
        self.built = False
        self.built_at = 0.0
        self.checked_at = 0.0
        self.rebuilds = 0
        self.rereads = 0
        self.version = 0  # changes whenever the rows do (caches key on it)
        self.suspect = 0
        self._lock = threading.Lock()
        self._background: threading.Thread | None = None

    def fresh(self) -> dict[str, Row]:
        with self._lock:
            if not self.built:
                self.rows, self.head = self._scan()
                self.built = True
                self.version += 1
            elif time.monotonic() - self.checked_at >= MIN_INTERVAL:
                self._refresh()
            self.checked_at = time.monotonic()
            if time.monotonic() - self.built_at > REBUILD_AFTER or self.suspect >= SUSPECT_LIMIT:
                self._rescan_in_background()
            return self.rows

    def wait(self, timeout: float = 600.0) -> None:
        """Until a background rescan has finished (tests, benchmarks)."""
        thread = self._background
        if thread is not None:
            thread.join(timeout)

    # -- internals -----------------------------------------------------------------------
    def _newest(self, limit: int) -> list[dict]:
        return self.store.events(self.campaign, limit=limit)

    def _scan(self) -> tuple[dict[str, Row], tuple[Any, Any] | None]:
        newest = self._newest(1)
        with no_gc():
            docs = self.store.find_candidates(self.campaign, projection=PROJECTION)
            rows = {str(d["_id"]): Row.of(d, self.prop) for d in docs}
            del docs
        self.built_at = time.monotonic()
        self.rebuilds += 1
        self.suspect = 0
        return rows, ((newest[0]["time"], newest[0]["_id"]) if newest else None)

    def _rescan_in_background(self) -> None:
        if self._background is not None and self._background.is_alive():
            return
        self.built_at = time.monotonic()  # no second rescan while this one runs

        def run() -> None:
            try:
                rows, head = self._scan()
                with self._lock:
                    self.rows, self.head = rows, head
                    self.version += 1
                    self.checked_at = 0.0  # the next request follows the events since head
            finally:
                close = getattr(self.store, "close_thread", None)
                if close is not None:
                    close()

        self._background = threading.Thread(target=run, name=f"digest-{self.campaign}")
        self._background.daemon = True
        self._background.start()

    def _refresh(self) -> None:
        if self.head is None:  # no event at the last scan: the campaign was empty then
            self.rows, self.head = self._scan()
            self.version += 1
            return
        newest = self._newest(1)
        if not newest or (newest[0]["time"], newest[0]["_id"]) == self.head:
            return
        since = self.head[0] - OVERLAP
        limit = 1000
        while True:  # newest first, in pages growing 4x, back to OVERLAP before the head
            events = self._newest(limit)
            if len(events) < limit or events[-1]["time"] < since:
                break
            if limit >= MAX_EVENTS:
                self._rescan_in_background()
                return
            limit *= 4
        changed = {
            str(e["candidate_id"]) for e in events if e.get("candidate_id") and e["time"] >= since
        }
        self.head = (newest[0]["time"], newest[0]["_id"])
        self._reread(sorted(changed))
        self._check_counts()

    def _reread(self, ids: list[str]) -> None:
        for i in range(0, len(ids), 500):
            batch = ids[i : i + 500]
            docs = self.store.find_candidates(
                self.campaign, extra={"_id": {"$in": batch}}, projection=PROJECTION
            )
            for d in docs:
                self.rows[str(d["_id"])] = Row.of(d, self.prop)
        self.rereads += len(ids)
        if ids:
            self.version += 1

    def _check_counts(self) -> None:
        """The indexed per-status counts should agree with the digest. An event lands just
        after its status change, so one disagreement is normal; several in a row mean a
        change without an event, and a background rescan follows."""
        counts = self.store.count_by_status(self.campaign)
        mine: dict[str, int] = {}
        for row in self.rows.values():
            mine[row.status] = mine.get(row.status, 0) + 1
        if any(mine.get(s, 0) != n for s, n in counts.items()):
            self.suspect += 1
        else:
            self.suspect = 0


class Digests:
    """One digest per campaign, shared by all requests."""

    def __init__(self) -> None:
        self._by_campaign: dict[str, Digest] = {}
        self._lock = threading.Lock()

    def get(self, store: Any, campaign: str, prop: str = "formation_energy_per_atom") -> Digest:
        with self._lock:
            digest = self._by_campaign.get(campaign)
            if digest is None or digest.store is not store or digest.prop != prop:
                digest = self._by_campaign[campaign] = Digest(store, campaign, prop)
        return digest
