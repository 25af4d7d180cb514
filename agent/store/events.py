"""The audit log (append-only events) and per-cycle statistics."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Any

from agent.store.connection import StoreConnection, now


class EventsMixin(StoreConnection):
    def log_event(
        self, campaign: str, kind: str, *, event_id: str | None = None, **fields: Any
    ) -> str:
        """Append an event (``event_id`` makes a retried or repeated write a no-op)."""
        event = {
            "_id": event_id or uuid.uuid4().hex,
            "campaign": campaign,
            "time": now(),
            "seq": time.time_ns(),
            "kind": kind,
            **fields,
        }
        self._retry(lambda: self._insert_idempotent("events", [event]), "log event")
        return event["_id"]

    def events(
        self,
        campaign: str,
        *,
        kind: str | None = None,
        candidate_id: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        newest_first: bool = True,
    ) -> list[dict]:
        spec: dict[str, Any] = {"campaign": campaign}
        if kind:
            spec["kind"] = kind
        if candidate_id:
            spec["candidate_id"] = candidate_id
        if since is not None:
            spec["time"] = {"$gt": since}
        return self._retry(
            lambda: list(
                self.c["events"].find(
                    spec,
                    sort=[("time", -1 if newest_first else 1), ("seq", -1 if newest_first else 1)],
                    limit=limit,
                )
            ),
            "read events",
        )

    def record_cycle(self, campaign: str, cycle: int, **stats: Any) -> None:
        """Upsert the statistics of one cycle (call repeatedly as the cycle progresses)."""
        t = now()
        self._retry(
            lambda: self.c["cycles"].update_one(
                {"_id": f"{campaign}:{cycle:06d}"},
                {
                    "$set": {**stats, "updated_at": t},
                    "$setOnInsert": {"campaign": campaign, "cycle": cycle, "started_at": t},
                },
                upsert=True,
            ),
            "record cycle",
        )

    def cycles(self, campaign: str) -> list[dict]:
        return self._retry(
            lambda: list(self.c["cycles"].find({"campaign": campaign}, sort=[("cycle", 1)])),
            "read cycles",
        )
