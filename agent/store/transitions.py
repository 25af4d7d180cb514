"""The candidate state machine: conditional, atomic status changes with their audit events.

Why the transition protocol looks the way it does: a candidate's status is changed only by a
conditional update (``status in from_statuses``), so two writers can never both move it, and a
daemon killed at any instant leaves each candidate in exactly one status. Every transition
carries a fresh token (``transition_id``); the audit event is written after the update with
``_id = "<candidate>:<token>"``. A retried write therefore never duplicates, and a crash
between the update and its event is healed by ``repair_events`` (the token and the from/to
statuses live in ``last_transition`` on the candidate).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent.store.connection import StoreConnection, now
from agent.store.lifecycle import TRANSITIONS, InvalidTransition


class TransitionsMixin(StoreConnection):
    @staticmethod
    def _check_transition(from_statuses: Sequence[str] | str, to_status: str) -> list[str]:
        froms = [from_statuses] if isinstance(from_statuses, str) else list(from_statuses)
        if to_status not in TRANSITIONS:
            raise InvalidTransition(f"unknown status {to_status!r}")
        for status in froms:
            if to_status not in TRANSITIONS.get(status, ()):
                raise InvalidTransition(f"{status} -> {to_status} is not an allowed transition")
        return froms

    @staticmethod
    def _transition_update(
        token: str, froms: list[str], to_status: str, reason: str | None, fields: Mapping
    ) -> dict[str, Any]:
        if "status" in fields or "_id" in fields:
            raise InvalidTransition("fields may not set status or _id; use the to_status argument")
        t = now()
        return {
            "$set": {
                **fields,
                "status": to_status,
                "updated_at": t,
                f"status_times.{to_status}": t,
                "transition_id": token,
                "last_transition": {"id": token, "to": to_status, "at": t, "reason": reason},
            }
        }

    def _transition_events(
        self, docs: Iterable[Mapping[str, Any]], reason: str | None = None
    ) -> None:
        events = []
        for doc in docs:
            last = doc["last_transition"]
            events.append(
                {
                    "_id": f"{doc['_id']}:{last['id']}",
                    "campaign": doc["campaign"],
                    "time": last["at"],
                    "seq": time.time_ns(),
                    "kind": "transition",
                    "candidate_id": doc["_id"],
                    "cycle": doc.get("cycle"),
                    "from": last.get("from"),
                    "to": last["to"],
                    "reason": last.get("reason", reason),
                }
            )
        self._retry(lambda: self._insert_idempotent("events", events), "log transitions")

    def transition(
        self,
        candidate_id: str,
        from_statuses: Sequence[str] | str,
        to_status: str,
        *,
        reason: str | None = None,
        **fields: Any,
    ) -> dict | None:
        """Move one candidate to ``to_status`` if (and only if) its status is one of
        ``from_statuses``, setting ``fields`` in the same atomic update, and log the event.
        Returns the updated document, or None when the candidate was not in a from-status."""
        from pymongo import ReturnDocument

        froms = self._check_transition(from_statuses, to_status)
        coll = self.c["candidates"]
        for _ in range(5):  # the status may change between our read and our write
            token = uuid.uuid4().hex
            current = self._retry(
                lambda: coll.find_one({"_id": candidate_id}, {"status": 1}), "read status"
            )
            if current is None or current["status"] not in froms:
                return None
            update = self._transition_update(token, froms, to_status, reason, fields)
            update["$set"]["last_transition"]["from"] = current["status"]

            def apply(update=update, token=token, status=current["status"]) -> dict | None:
                doc = coll.find_one_and_update(
                    {"_id": candidate_id, "status": status},
                    update,
                    projection={"structure": 0},
                    return_document=ReturnDocument.AFTER,
                )
                if doc is None:  # lost a race - or our write landed before a reconnect
                    doc = coll.find_one(
                        {"_id": candidate_id, "transition_id": token}, {"structure": 0}
                    )
                return doc

            doc = self._retry(apply, "transition")
            if doc is not None:
                self._transition_events([doc])
                return doc
        return None

    def transition_many(
        self,
        candidate_ids: Iterable[str],
        from_statuses: Sequence[str] | str,
        to_status: str,
        *,
        reason: str | None = None,
        fields: Mapping[str, Any] | None = None,
        per_candidate: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[str]:
        """Bulk ``transition``: every listed candidate whose status is in ``from_statuses``
        moves to ``to_status`` (each update conditional and atomic on its own), with
        ``fields`` for all and ``per_candidate[id]`` for one. Returns the ids that moved."""
        froms = self._check_transition(from_statuses, to_status)
        ids = list(dict.fromkeys(candidate_ids))
        if not ids:
            return []
        token = uuid.uuid4().hex
        coll = self.c["candidates"]
        before = {
            d["_id"]: d["status"]
            for d in self._retry(
                lambda: list(coll.find({"_id": {"$in": ids}}, {"status": 1})), "read statuses"
            )
        }
        movable = [i for i in ids if before.get(i) in froms]
        by_from: dict[str, list[str]] = {}
        for cid in movable:
            by_from.setdefault(before[cid], []).append(cid)

        def apply() -> None:
            for status, group in by_from.items():
                base = self._transition_update(token, froms, to_status, reason, fields or {})
                base["$set"]["last_transition"]["from"] = status
                if per_candidate:
                    ops = []
                    for cid in group:
                        update = {"$set": {**base["$set"], **dict(per_candidate.get(cid, {}))}}
                        if "status" in update["$set"] and update["$set"]["status"] != to_status:
                            raise InvalidTransition("per_candidate fields may not set status")
                        ops.append(({"_id": cid, "status": status}, update))
                    self._update_each("candidates", ops)
                else:
                    coll.update_many({"_id": {"$in": group}, "status": status}, base)

        self._retry(apply, "transition many")
        moved = self._retry(
            lambda: list(
                coll.find(
                    {"_id": {"$in": movable}, "transition_id": token},
                    {"campaign": 1, "cycle": 1, "last_transition": 1},
                )
            ),
            "read moved",
        )
        self._transition_events(moved)
        moved_ids = {d["_id"] for d in moved}
        return [i for i in ids if i in moved_ids]

    def repair_events(self, campaign: str) -> int:
        """Write the audit events a crash between a transition and its event left missing."""
        docs = self._retry(
            lambda: list(
                self.c["candidates"].find(
                    {"campaign": campaign},
                    {"campaign": 1, "cycle": 1, "last_transition": 1, "transition_id": 1},
                )
            ),
            "read transitions",
        )
        wanted = {f"{d['_id']}:{d['transition_id']}": d for d in docs if d.get("transition_id")}
        if not wanted:
            return 0
        have = {
            e["_id"]
            for e in self._retry(
                lambda: list(self.c["events"].find({"_id": {"$in": list(wanted)}}, {"_id": 1})),
                "read events",
            )
        }
        missing = [d for key, d in wanted.items() if key not in have]
        self._transition_events(missing, reason="repaired after crash")
        return len(missing)
