"""Candidates: storing a cycle's candidates (deduplicated by structure fingerprint) and reading
and annotating them. Status changes go through ``agent.store.transitions`` only."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import BulkWriteError

from agent.store.connection import StoreConnection, now
from agent.store.fingerprint import fingerprint as compute_fingerprint
from agent.store.lifecycle import STATUSES, InvalidTransition


@dataclass
class InsertReport:
    """What ``insert_candidates`` did: ids stored, and duplicates (new id -> existing id)."""

    inserted: list[str] = field(default_factory=list)
    duplicates: dict[str, str] = field(default_factory=dict)


class CandidatesMixin(StoreConnection):
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
