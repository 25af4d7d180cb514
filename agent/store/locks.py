"""The store side of the campaign lock (the protocol is in ``agent.store.lock``)."""

from __future__ import annotations

from typing import Any

from agent.store.connection import StoreConnection


class LocksMixin(StoreConnection):
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
