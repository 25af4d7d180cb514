"""A campaign's candidates in a compact, in-memory table, kept fresh from the event log.

Why: the candidates page sorts and filters on nested fields (generator, predicted mean) and the
campaign page groups by generator. The store indexes campaign/status/cycle only, and the
embedded backend evaluates nested-field filters in Python over every document - seconds at
100,000 candidates, on every page view. So the dashboard reads each candidate's few table
fields once (one projected scan), then follows the append-only event log, which names every
candidate whose status changed (``agent.store.transitions``: one event per transition, one per
insert): each refresh reads the newest events (an index-ordered query on campaign/time) and
re-reads only the candidates they name (primary-key lookups). As a safety net the per-status
counts (indexed) are compared with the digest's on every refresh; a mismatch, or more changes
than a re-read is worth, rebuilds it from a fresh scan.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    "created_at",
]
OVERLAP = timedelta(seconds=30)  # events can land a little after their timestamp
REBUILD_ABOVE = 20_000  # changed candidates: beyond this a fresh scan is cheaper
MIN_INTERVAL = 0.5  # seconds between two looks at the event log
REBUILD_AFTER = 900.0  # seconds: a periodic rescan heals what no event announced


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
    created_at: datetime | None

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
            created_at=doc.get("created_at"),
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class Digest:
    """The table rows of one campaign; ``fresh()`` brings them up to date and returns them."""

    def __init__(self, store: Any, campaign: str, prop: str = "formation_energy_per_atom"):
        self.store = store
        self.campaign = campaign
        self.prop = prop
        self.rows: dict[str, Row] = {}
        self.head: tuple[Any, Any] | None = None  # (time, _id) of the newest event seen
        self.built_at = 0.0
        self.checked_at = 0.0
        self.rebuilds = 0
        self.rereads = 0
        self._lock = threading.Lock()

    def fresh(self) -> dict[str, Row]:
        with self._lock:
            if time.monotonic() - self.checked_at >= MIN_INTERVAL:
                self._refresh()
                self.checked_at = time.monotonic()
            return self.rows

    # -- internals -----------------------------------------------------------------------
    def _newest(self, limit: int) -> list[dict]:
        return self.store.events(self.campaign, limit=limit)

    def _rebuild(self) -> None:
        newest = self._newest(1)
        docs = self.store.find_candidates(self.campaign, projection=PROJECTION)
        self.rows = {str(d["_id"]): Row.of(d, self.prop) for d in docs}
        self.head = (newest[0]["time"], newest[0]["_id"]) if newest else None
        self.built_at = time.monotonic()
        self.rebuilds += 1

    def _refresh(self) -> None:
        if (
            not self.rows and self.head is None
        ) or time.monotonic() - self.built_at > REBUILD_AFTER:
            self._rebuild()
            self._check_counts()
            return
        newest = self._newest(1)
        if not newest or (newest[0]["time"], newest[0]["_id"]) == self.head:
            return
        changed: set[str] = set()
        since = self.head[0] - OVERLAP if self.head else None
        limit = 500
        while True:
            events = self._newest(limit)
            reached = since is not None and events and events[-1]["time"] < since
            changed = {
                str(e["candidate_id"])
                for e in events
                if e.get("candidate_id") and (since is None or e["time"] >= since)
            }
            if reached or len(events) < limit:
                break
            if limit >= REBUILD_ABOVE:
                self._rebuild()
                return
            limit *= 4
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

    def _check_counts(self) -> None:
        """The indexed per-status counts must agree with the digest; if not, rescan."""
        counts = self.store.count_by_status(self.campaign)
        mine: dict[str, int] = {}
        for row in self.rows.values():
            mine[row.status] = mine.get(row.status, 0) + 1
        if any(mine.get(s, 0) != n for s, n in counts.items()):
            self._rebuild()


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
