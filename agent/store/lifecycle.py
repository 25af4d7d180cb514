"""The candidate lifecycle: the statuses a candidate moves through and the moves allowed."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    GENERATED = "generated"
    REJECTED = "rejected"
    POOLED = "pooled"
    SELECTED = "selected"
    SUBMITTED = "submitted"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


STATUSES: tuple[str, ...] = tuple(s.value for s in Status)

#: The lifecycle. ``selected -> pooled`` lets a selection be withdrawn before submission (budget
#: exhausted); ``submitted -> completed|failed`` covers jobs that finish before the daemon sees
#: them running; ``pooled -> rejected`` lets a later filter (novelty vs. new DFT) drop a pooled one.
TRANSITIONS: dict[str, frozenset[str]] = {
    "generated": frozenset({"rejected", "pooled"}),
    "pooled": frozenset({"selected", "rejected"}),
    "selected": frozenset({"submitted", "pooled"}),
    "submitted": frozenset({"running", "completed", "failed"}),
    "running": frozenset({"completed", "failed"}),
    "rejected": frozenset(),
    "completed": frozenset(),
    "failed": frozenset(),
}


class InvalidTransition(ValueError):
    """A status change the lifecycle does not allow (a programming error, not a race)."""
