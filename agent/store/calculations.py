"""Calculations: DFT results per candidate (an upsert per calculation id)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent.store.connection import StoreConnection, now


class CalculationsMixin(StoreConnection):
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
