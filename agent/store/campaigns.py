"""Campaigns: one document per campaign (config, state, cycle counter, stop request)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.store.connection import StoreConnection, now


class CampaignsMixin(StoreConnection):
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
