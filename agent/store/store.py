"""The campaign store: every piece of state the daemon and the dashboard need, in one database.

Collections (identical on MongoDB and on the embedded SQLite backend):

- ``campaigns``    ``_id`` = name; config, state, current cycle, stop request.
- ``candidates``   ``_id`` = candidate id; structure (pymatgen dict), fingerprint, formula,
                   provenance, predictions, filter verdicts, score, status, cycle, timestamps.
- ``calculations`` DFT task documents, ``candidate_id`` link, formation energy, e_above_hull.
- ``models``       surrogate versions: training size, hold-out metrics, weights id, deployed.
- ``events``       append-only audit log: one document per status transition (and more kinds).
- ``cycles``       per-cycle statistics.
- ``locks``        one document per campaign driven by a daemon (see ``agent.store.lock``).

Why the transition protocol looks the way it does: a candidate's status is changed only by a
conditional update (``status in from_statuses``), so two writers can never both move it, and a
daemon killed at any instant leaves each candidate in exactly one status. Every transition
carries a fresh token (``transition_id``); the audit event is written after the update with
``_id = "<candidate>:<token>"``. A retried write therefore never duplicates, and a crash
between the update and its event is healed by ``repair_events`` (the token and the from/to
statuses live in ``last_transition`` on the candidate).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar

from pymongo.errors import BulkWriteError

from agent.store.fingerprint import fingerprint as compute_fingerprint
from agent.store.retry import retrying
from agent.store.settings import StoreSettings

T = TypeVar("T")


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

COLLECTIONS = ("campaigns", "candidates", "calculations", "models", "events", "cycles", "locks")

#: (collection, keys, unique) - what the daemon and the dashboard query.
INDEXES: tuple[tuple[str, list[tuple[str, int]], bool], ...] = (
    ("candidates", [("campaign", 1), ("fingerprint", 1)], True),
    ("candidates", [("campaign", 1), ("status", 1)], False),
    ("candidates", [("campaign", 1), ("cycle", 1)], False),
    ("candidates", [("transition_id", 1)], False),
    ("calculations", [("campaign", 1), ("state", 1)], False),
    ("calculations", [("candidate_id", 1)], False),
    ("models", [("campaign", 1), ("kind", 1), ("version", 1)], True),
    ("models", [("campaign", 1), ("deployed", 1)], False),
    ("events", [("campaign", 1), ("time", 1)], False),
    ("events", [("candidate_id", 1)], False),
    ("cycles", [("campaign", 1), ("cycle", 1)], True),
)


class InvalidTransition(ValueError):
    """A status change the lifecycle does not allow (a programming error, not a race)."""


def now() -> datetime:
    """Aware UTC, truncated to milliseconds: what BSON keeps, so both backends round-trip it."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


@dataclass
class InsertReport:
    """What ``insert_candidates`` did: ids stored, and duplicates (new id -> existing id)."""

    inserted: list[str] = field(default_factory=list)
    duplicates: dict[str, str] = field(default_factory=dict)


class Store:
    """The crystalloop database. Open with ``Store.connect()``; all methods retry while the
    store is unreachable (``StoreSettings.retry_seconds``), then raise ``StoreUnavailable``."""

    def __init__(
        self,
        client: Any,
        database: str,
        backend: Literal["mongodb", "embedded"],
        settings: StoreSettings | None = None,
    ):
        self.client = client
        self.db = client[database]
        self.database = database
        self.backend = backend
        self.settings = settings or StoreSettings()
        self.retries = 0  # transient failures survived; tests and `status` read it
        self.c = {name: self.db[name] for name in COLLECTIONS}
        self._retry(self._ensure_schema, "create indexes")

    # -- connection --------------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        uri: str | None = None,
        database: str | None = None,
        settings: StoreSettings | None = None,
    ) -> Store:
        """MongoDB when a ``mongodb://`` (or ``mongodb+srv://``) URI is given - as argument,
        in ``settings`` or in ``CRYSTALLOOP_MONGO_URI`` - else the embedded store under
        ``CRYSTALLOOP_HOME/store``."""
        settings = settings or StoreSettings()
        uri = uri or settings.uri
        database = database or settings.database
        if uri:
            if not uri.startswith(("mongodb://", "mongodb+srv://")):
                raise ValueError(f"store uri must start with mongodb:// (got {uri!r})")
            from pymongo import MongoClient

            client = MongoClient(
                uri,
                tz_aware=True,
                serverSelectionTimeoutMS=settings.server_selection_timeout_ms,
                retryWrites=True,
            )
            return cls(client, database, "mongodb", settings)
        from agent.store.embedded import EmbeddedClient

        client = EmbeddedClient(settings.path, busy_timeout=settings.busy_timeout)
        return cls(client, database, "embedded", settings)

    def describe(self) -> str:
        if self.backend == "embedded":
            return f"embedded store {self.db.path}"
        return f"MongoDB {self.settings.uri or ''} database {self.database}".replace("  ", " ")

    def close(self) -> None:
        self.client.close()

    def close_thread(self) -> None:
        """Release what the calling thread holds (the embedded backend's SQLite connection);
        threads that use the store call it before they end."""
        if self.backend == "embedded":
            self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _retry(self, operation: Callable[[], T], what: str) -> T:
        def count(exc: BaseException, attempt: int) -> None:
            self.retries += 1

        return retrying(operation, self.settings.retry_seconds, what=what, on_retry=count)

    def _ensure_schema(self) -> None:
        for name, keys, unique in INDEXES:
            self.c[name].create_index(keys, unique=unique)

    def _update_each(self, collection: str, ops: Sequence[tuple[dict, dict]]) -> None:
        """Many single-document conditional updates as one round trip / one transaction."""
        if not ops:
            return
        coll = self.c[collection]
        if self.backend == "embedded":
            coll.update_each(ops)
        else:
            from pymongo import UpdateOne

            coll.bulk_write([UpdateOne(f, u) for f, u in ops], ordered=False)

    def _insert_idempotent(self, collection: str, docs: list[dict[str, Any]]) -> None:
        """insert_many where a document whose ``_id`` exists already counts as written."""
        if not docs:
            return
        try:
            self.c[collection].insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            other = [e for e in exc.details.get("writeErrors", []) if e.get("code") != 11000]
            if other:
                raise

    # -- campaigns ---------------------------------------------------------------------------
    def ensure_campaign(self, name: str, config: Mapping[str, Any] | None = None) -> dict:
        """Create the campaign if new (cycle 0, state 'created'); store ``config`` if given."""
        t = now()
        update: dict[str, Any] = {
            "$setOnInsert": {  # _id comes from the filter, on both backends
                "name": name,
                "created_at": t,
                "cycle": 0,
                "state": "created",
                "stop_requested": False,
            },
            "$set": {"updated_at": t},
        }
        if config is not None:
            update["$set"]["config"] = dict(config)
        from pymongo import ReturnDocument

        return self._retry(
            lambda: self.c["campaigns"].find_one_and_update(
                {"_id": name}, update, upsert=True, return_document=ReturnDocument.AFTER
            ),
            "ensure campaign",
        )

    def get_campaign(self, name: str) -> dict | None:
        return self._retry(lambda: self.c["campaigns"].find_one({"_id": name}), "get campaign")

    def list_campaigns(self) -> list[dict]:
        return self._retry(
            lambda: list(self.c["campaigns"].find({}, sort=[("_id", 1)])), "list campaigns"
        )

    def update_campaign(self, name: str, **fields: Any) -> None:
        fields["updated_at"] = now()
        self._retry(
            lambda: self.c["campaigns"].update_one({"_id": name}, {"$set": fields}),
            "update campaign",
        )

    def advance_cycle(self, name: str) -> int:
        """Atomically increment and return the campaign's cycle number."""
        from pymongo import ReturnDocument

        doc = self._retry(
            lambda: self.c["campaigns"].find_one_and_update(
                {"_id": name},
                {"$inc": {"cycle": 1}, "$set": {"updated_at": now()}},
                return_document=ReturnDocument.AFTER,
            ),
            "advance cycle",
        )
        if doc is None:
            raise KeyError(f"no campaign {name!r}")
        return int(doc["cycle"])

    def request_stop(self, name: str, requested: bool = True) -> bool:
        """Ask the daemon driving ``name`` to stop after its current step (False: no such
        campaign)."""
        result = self._retry(
            lambda: self.c["campaigns"].update_one(
                {"_id": name}, {"$set": {"stop_requested": requested, "updated_at": now()}}
            ),
            "request stop",
        )
        if requested and result.matched_count:
            self.log_event(name, "stop_requested")
        return bool(result.matched_count)

    def stop_requested(self, name: str) -> bool:
        doc = self._retry(
            lambda: self.c["campaigns"].find_one({"_id": name}, {"stop_requested": 1}),
            "read stop flag",
        )
        return bool(doc and doc.get("stop_requested"))

    # -- candidates --------------------------------------------------------------------------
    @staticmethod
    def candidate_document(
        candidate: Any, campaign: str, cycle: int, status: str = "generated"
    ) -> dict[str, Any]:
        """The stored form of a ``generators.candidate.Candidate`` (or of a dict with at
        least ``structure``; ``id``, ``provenance``, ``validity``, ``fingerprint``,
        ``predictions``, ``filters``, ``score`` are taken when present)."""
        from pymatgen.core import Structure

        if isinstance(candidate, Mapping):
            data = dict(candidate)
            structure = data.pop("structure")
        else:  # a Candidate: keep its Structure object, dump the rest
            data = candidate.model_dump(exclude={"structure"})
            structure = candidate.structure
        if isinstance(structure, Mapping):
            structure = Structure.from_dict(structure)
        cid = str(data.pop("id", None) or data.pop("_id", None) or uuid.uuid4().hex)
        t = now()
        for reserved in ("campaign", "cycle", "status", "status_times", "created_at"):
            data.pop(reserved, None)
        return {
            **data,  # extra fields of a dict candidate; the canonical ones below win
            "_id": cid,
            "campaign": campaign,
            "cycle": int(cycle),
            "status": status,
            "fingerprint": data.pop("fingerprint", None) or compute_fingerprint(structure),
            "formula": structure.composition.reduced_formula,
            "nsites": len(structure),
            "structure": structure.as_dict(),
            "provenance": data.pop("provenance", None) or {},
            "validity": data.pop("validity", None) or {},
            "predictions": data.pop("predictions", None) or {},
            "filters": data.pop("filters", None) or {},
            "score": data.pop("score", None),
            "created_at": t,
            "updated_at": t,
            "status_times": {status: t},
            "transition_id": None,
            "last_transition": None,
        }

    def insert_candidates(
        self, campaign: str, cycle: int, candidates: Iterable[Any], status: str = "generated"
    ) -> InsertReport:
        """Store a cycle's candidates in one bulk write. A candidate whose fingerprint the
        campaign already holds is not stored; ``report.duplicates`` maps it to the holder."""
        if status not in ("generated", "pooled", "rejected"):
            raise InvalidTransition(
                f"new candidates start as generated/pooled/rejected, not {status}"
            )
        docs = [self.candidate_document(c, campaign, cycle, status) for c in candidates]
        return self._insert_documents(campaign, docs)

    def _insert_documents(self, campaign: str, docs: list[dict[str, Any]]) -> InsertReport:
        report = InsertReport()
        first_by_fp: dict[str, str] = {}
        unique = []
        for doc in docs:  # duplicates inside the batch: the first one wins
            held = first_by_fp.setdefault(doc["fingerprint"], doc["_id"])
            if held != doc["_id"]:
                report.duplicates[doc["_id"]] = held
            else:
                unique.append(doc)

        def insert() -> list[int]:
            try:
                self.c["candidates"].insert_many(unique, ordered=False)
                return []
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(e.get("code") != 11000 for e in errors):
                    raise
                return [e["index"] for e in errors]

        failed = [unique[i] for i in sorted(set(self._retry(insert, "insert candidates")))]
        if failed:
            coll = self.c["candidates"]
            fps = [d["fingerprint"] for d in failed]
            ids = [d["_id"] for d in failed]
            by_fp = {
                d["fingerprint"]: d["_id"]
                for d in self._retry(
                    lambda: list(
                        coll.find(
                            {"campaign": campaign, "fingerprint": {"$in": fps}}, {"fingerprint": 1}
                        )
                    ),
                    "find duplicate holders",
                )
            }
            by_id = {
                d["_id"]: d
                for d in self._retry(
                    lambda: list(coll.find({"_id": {"$in": ids}}, {"campaign": 1})),
                    "find id holders",
                )
            }
            for doc in failed:
                holder = by_fp.get(doc["fingerprint"])
                if holder is not None and holder != doc["_id"]:
                    report.duplicates[doc["_id"]] = holder
                elif holder is None:  # the id, not the structure, is taken
                    other = by_id.get(doc["_id"], {}).get("campaign")
                    raise ValueError(
                        f"candidate id {doc['_id']} is already stored (campaign {other!r}); "
                        "give each stored candidate a fresh id"
                    )
                # else: our own write, applied before a reconnect - it counts as inserted
        report.inserted = [d["_id"] for d in unique if d["_id"] not in report.duplicates]
        # Duplicates within the batch can point at a sibling that lost to an older holder.
        for dup, held in list(report.duplicates.items()):
            report.duplicates[dup] = report.duplicates.get(held, held)
        inserted = set(report.inserted)
        events = [
            {
                "_id": f"{d['_id']}:created",
                "campaign": campaign,
                "time": d["created_at"],
                "kind": "transition",
                "candidate_id": d["_id"],
                "cycle": d["cycle"],
                "from": None,
                "to": d["status"],
                "reason": "inserted",
            }
            for d in unique
            if d["_id"] in inserted
        ]
        self._retry(lambda: self._insert_idempotent("events", events), "log insert events")
        return report

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

    def update_candidates(self, updates: Mapping[str, Mapping[str, Any]]) -> None:
        """Set fields (predictions, filter verdicts, score, ...) on many candidates in one
        bulk write, without touching their status."""
        ops = []
        t = now()
        for cid, fields in updates.items():
            if "status" in fields or "_id" in fields:
                raise InvalidTransition("update_candidates cannot change status; use transition")
            ops.append(({"_id": cid}, {"$set": {**fields, "updated_at": t}}))
        self._retry(lambda: self._update_each("candidates", ops), "update candidates")

    def get_candidate(self, candidate_id: str) -> dict | None:
        return self._retry(
            lambda: self.c["candidates"].find_one({"_id": candidate_id}), "get candidate"
        )

    def find_candidates(
        self,
        campaign: str,
        status: str | Sequence[str] | None = None,
        *,
        cycle: int | None = None,
        limit: int = 0,
        sort: Sequence[tuple[str, int]] | None = None,
        projection: Mapping[str, Any] | Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> list[dict]:
        """Candidates of a campaign, optionally by status (one or several) and cycle."""
        spec: dict[str, Any] = {"campaign": campaign}
        if status is not None:
            spec["status"] = status if isinstance(status, str) else {"$in": list(status)}
        if cycle is not None:
            spec["cycle"] = cycle
        spec.update(extra or {})
        return self._retry(
            lambda: list(
                self.c["candidates"].find(
                    spec, projection, sort=list(sort) if sort else None, limit=limit
                )
            ),
            "find candidates",
        )

    def count_by_status(self, campaign: str, cycle: int | None = None) -> dict[str, int]:
        """Candidates per status (every status listed, zeros included)."""
        base: dict[str, Any] = {"campaign": campaign}
        if cycle is not None:
            base["cycle"] = cycle
        coll = self.c["candidates"]
        return self._retry(
            lambda: {s: coll.count_documents({**base, "status": s}) for s in STATUSES},
            "count candidates",
        )

    def fingerprints(self, campaign: str) -> dict[str, str]:
        """fingerprint -> candidate id for every candidate of the campaign (for filters)."""
        docs = self._retry(
            lambda: list(self.c["candidates"].find({"campaign": campaign}, {"fingerprint": 1})),
            "read fingerprints",
        )
        return {d["fingerprint"]: d["_id"] for d in docs}

    @staticmethod
    def structure_of(doc: Mapping[str, Any]) -> Any:
        from pymatgen.core import Structure

        return Structure.from_dict(doc["structure"])

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

    # -- calculations ------------------------------------------------------------------------
    def save_calculation(
        self, candidate_id: str, campaign: str, calc_id: str | None = None, **fields: Any
    ) -> str:
        """Create or update the calculation ``calc_id`` (default: the candidate id, i.e. one
        DFT calculation per candidate) - an upsert, so repeating it is harmless."""
        calc_id = calc_id or candidate_id
        t = now()
        self._retry(
            lambda: self.c["calculations"].update_one(
                {"_id": calc_id},
                {
                    "$set": {**fields, "updated_at": t},
                    "$setOnInsert": {
                        "candidate_id": candidate_id,
                        "campaign": campaign,
                        "created_at": t,
                    },
                },
                upsert=True,
            ),
            "save calculation",
        )
        return calc_id

    def get_calculation(self, calc_id: str) -> dict | None:
        return self._retry(
            lambda: self.c["calculations"].find_one({"_id": calc_id}), "get calculation"
        )

    def find_calculations(
        self,
        campaign: str,
        state: str | Sequence[str] | None = None,
        *,
        limit: int = 0,
        sort: Sequence[tuple[str, int]] | None = None,
        projection: Mapping[str, Any] | Sequence[str] | None = None,
    ) -> list[dict]:
        spec: dict[str, Any] = {"campaign": campaign}
        if state is not None:
            spec["state"] = state if isinstance(state, str) else {"$in": list(state)}
        return self._retry(
            lambda: list(
                self.c["calculations"].find(
                    spec, projection, sort=list(sort) if sort else None, limit=limit
                )
            ),
            "find calculations",
        )

    def calculations_for(self, candidate_ids: Iterable[str]) -> dict[str, dict]:
        """candidate id -> its calculation document (the latest updated, if several)."""
        ids = list(candidate_ids)
        if not ids:
            return {}
        docs = self._retry(
            lambda: list(
                self.c["calculations"].find(
                    {"candidate_id": {"$in": ids}}, sort=[("updated_at", 1)]
                )
            ),
            "calculations for candidates",
        )
        return {d["candidate_id"]: d for d in docs}

    def count_calculations(self, campaign: str, state: str | None = None) -> int:
        spec: dict[str, Any] = {"campaign": campaign}
        if state is not None:
            spec["state"] = state
        return self._retry(
            lambda: self.c["calculations"].count_documents(spec), "count calculations"
        )

    def best_materials(
        self, campaign: str, key: str = "formation_energy_per_atom", limit: int = 5
    ) -> list[dict]:
        """Completed calculations with the lowest ``key`` (formation energy, e_above_hull)."""
        docs = self._retry(
            lambda: list(
                self.c["calculations"].find(
                    {"campaign": campaign, "state": "completed"}, {"task_doc": 0}
                )
            ),
            "best materials",
        )
        docs = [d for d in docs if isinstance(d.get(key), int | float)]
        return sorted(docs, key=lambda d: d[key])[:limit]

    # -- models ------------------------------------------------------------------------------
    def put_model_weights(self, data: bytes, filename: str = "weights.pt") -> str:
        """Store a weights file; returns its id (GridFS on MongoDB, a checksummed file under
        ``<store>/models`` on the embedded backend)."""
        digest = hashlib.sha256(data).hexdigest()
        if self.backend == "embedded":
            folder = Path(self.settings.path) / "models"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{digest}.bin"
            if not path.exists():
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_bytes(data)
                os.replace(tmp, path)  # atomic: a crash never leaves a half file
            return f"sha256:{digest}"
        import gridfs

        fs = gridfs.GridFS(self.db, collection="model_weights")
        file_id = self._retry(
            lambda: fs.put(data, filename=filename, metadata={"sha256": digest}),
            "put weights",
        )
        return str(file_id)

    def get_model_weights(self, weights_id: str) -> bytes:
        """The bytes of a stored weights file, checksum verified."""
        if weights_id.startswith("sha256:"):
            digest = weights_id.removeprefix("sha256:")
            data = (Path(self.settings.path) / "models" / f"{digest}.bin").read_bytes()
            expected = digest
        else:
            import gridfs
            from bson import ObjectId

            fs = gridfs.GridFS(self.db, collection="model_weights")
            grid_out = self._retry(lambda: fs.get(ObjectId(weights_id)), "get weights")
            data = grid_out.read()
            expected = (grid_out.metadata or {}).get("sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise OSError(f"model weights {weights_id} are corrupt (checksum mismatch)")
        return data

    def register_model(
        self,
        campaign: str,
        version: str,
        *,
        kind: str = "surrogate",
        training_size: int,
        holdout_metrics: Mapping[str, float],
        weights_id: str | None = None,
        deployed: bool = False,
        **extra: Any,
    ) -> str:
        """Record a model version (idempotent per campaign/kind/version)."""
        model_id = f"{campaign}:{kind}:{version}"
        t = now()
        doc = {
            "campaign": campaign,
            "kind": kind,
            "version": version,
            "training_size": int(training_size),
            "holdout_metrics": dict(holdout_metrics),
            "weights_id": weights_id,
            "updated_at": t,
            **extra,
        }
        self._retry(  # re-registering a version updates it but never undeploys it
            lambda: self.c["models"].update_one(
                {"_id": model_id},
                {"$set": doc, "$setOnInsert": {"created_at": t, "deployed": False}},
                upsert=True,
            ),
            "register model",
        )
        self.log_event(campaign, "model_registered", model_id=model_id, version=version)
        if deployed:
            self.deploy_model(model_id)
        return model_id

    def update_model(self, model_id: str, **fields: Any) -> None:
        """Set fields of a model document (metrics, weights id, state, pid, ...)."""
        if "deployed" in fields:
            raise ValueError("use deploy_model to change which version is deployed")
        fields["updated_at"] = now()
        self._retry(
            lambda: self.c["models"].update_one({"_id": model_id}, {"$set": fields}),
            "update model",
        )

    def get_model(self, model_id: str) -> dict | None:
        return self._retry(lambda: self.c["models"].find_one({"_id": model_id}), "get model")

    def deploy_model(self, model_id: str) -> None:
        """Make ``model_id`` the deployed version of its campaign/kind. Deploys first, then
        withdraws the others: a crash in between leaves two flagged, and ``deployed_model``
        picks the most recently deployed - never none."""
        doc = self._retry(lambda: self.c["models"].find_one({"_id": model_id}), "read model")
        if doc is None:
            raise KeyError(f"no model {model_id!r}")
        t = now()
        self._retry(
            lambda: self.c["models"].update_one(
                {"_id": model_id}, {"$set": {"deployed": True, "deployed_at": t}}
            ),
            "deploy model",
        )
        others = [
            d["_id"]
            for d in self._retry(
                lambda: list(
                    self.c["models"].find(
                        {"campaign": doc["campaign"], "kind": doc["kind"], "deployed": True},
                        {"_id": 1},
                    )
                ),
                "find deployed",
            )
            if d["_id"] != model_id
        ]
        if others:
            self._retry(
                lambda: self.c["models"].update_many(
                    {"_id": {"$in": others}}, {"$set": {"deployed": False}}
                ),
                "withdraw models",
            )
        self.log_event(doc["campaign"], "model_deployed", model_id=model_id, version=doc["version"])

    def deployed_model(self, campaign: str, kind: str = "surrogate") -> dict | None:
        docs = self._retry(
            lambda: list(
                self.c["models"].find({"campaign": campaign, "kind": kind, "deployed": True})
            ),
            "deployed model",
        )
        return max(docs, key=lambda d: d.get("deployed_at") or d["updated_at"], default=None)

    def list_models(self, campaign: str, kind: str | None = None) -> list[dict]:
        spec: dict[str, Any] = {"campaign": campaign}
        if kind:
            spec["kind"] = kind
        return self._retry(
            lambda: list(self.c["models"].find(spec, sort=[("created_at", 1)])), "list models"
        )

    # -- events and cycles -------------------------------------------------------------------
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

    # -- locks (see agent.store.lock) -------------------------------------------------------
    def acquire_lock(self, campaign: str, owner: str | None = None, ttl: float = 60.0) -> Any:
        from agent.store.lock import acquire_lock

        return acquire_lock(self, campaign, owner=owner, ttl=ttl)

    def heartbeat(self, campaign: str, owner: str, ttl: float = 60.0) -> None:
        from agent.store.lock import heartbeat

        heartbeat(self, campaign, owner, ttl=ttl)

    def release_lock(self, campaign: str, owner: str) -> bool:
        from agent.store.lock import release_lock

        return release_lock(self, campaign, owner)

    def lock_holder(self, campaign: str) -> dict | None:
        return self._retry(lambda: self.c["locks"].find_one({"_id": campaign}), "read lock")
