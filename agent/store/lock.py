"""One daemon per campaign: a lease in the ``locks`` collection.

The lock document (``_id`` = campaign) names its owner, host and pid and carries an expiry
that the holder pushes forward with ``heartbeat``. Another daemon may take the lock over only
when it is *stale*: expired, or held by a process on this host that no longer runs (a dead or
zombie pid - what ``kill -9`` leaves). Every change is one conditional write on the document
(insert, or update matching the last seen ``token``), so two contenders can never both win,
on MongoDB and on the embedded backend alike (its writes are SQLite transactions).

Limits: expiry compares wall clocks, so hosts sharing a MongoDB need roughly synchronised
clocks (the ttl should dwarf the skew); a recycled pid on the same host looks alive until the
lease expires - the takeover then waits for the ttl.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pymongo.errors import DuplicateKeyError

from agent.store.connection import now
from dft.processes import pid_alive

if TYPE_CHECKING:
    from agent.store.store import Store


class LockHeld(RuntimeError):
    """Another live daemon drives this campaign."""

    def __init__(self, campaign: str, holder: dict[str, Any]):
        self.campaign = campaign
        self.holder = holder
        super().__init__(
            f"campaign {campaign!r} is driven by {holder.get('owner')} "
            f"(host {holder.get('host')}, pid {holder.get('pid')}, "
            f"lease until {holder.get('expires_at')})"
        )


class LockLost(RuntimeError):
    """Our lease was taken over (we were presumed dead); stop writing."""


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def is_stale(doc: dict[str, Any]) -> bool:
    if doc["expires_at"] <= now():
        return True
    return doc.get("host") == socket.gethostname() and not pid_alive(int(doc.get("pid", -1)))


@dataclass
class CampaignLock:
    """A held lease; use as a context manager to heartbeat in a thread and release on exit."""

    store: Store
    campaign: str
    owner: str
    ttl: float
    took_over: dict[str, Any] | None = None
    lost: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def heartbeat(self) -> None:
        heartbeat(self.store, self.campaign, self.owner, self.ttl)

    def release(self) -> bool:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        return release_lock(self.store, self.campaign, self.owner)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(self.ttl / 3):
                try:
                    self.heartbeat()
                except LockLost:
                    self.lost.set()
                    return
                except Exception:  # store hiccup: the next beat retries; the lease has slack
                    continue
        finally:
            self.store.close_thread()

    def __enter__(self) -> CampaignLock:
        self._thread = threading.Thread(
            target=self._beat, name=f"lock-heartbeat-{self.campaign}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _lease(campaign: str, owner: str, ttl: float) -> dict[str, Any]:
    t = now()
    return {
        "_id": campaign,
        "owner": owner,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": uuid.uuid4().hex,
        "acquired_at": t,
        "heartbeat_at": t,
        "expires_at": t + timedelta(seconds=ttl),
    }


def acquire_lock(
    store: Store, campaign: str, owner: str | None = None, ttl: float = 60.0
) -> CampaignLock:
    """Take the campaign's lease, or raise ``LockHeld`` naming the live holder."""
    owner = owner or default_owner()
    locks = store.c["locks"]
    for _ in range(5):
        lease = _lease(campaign, owner, ttl)
        try:
            store._retry(lambda lease=lease: locks.insert_one(dict(lease)), "acquire lock")
            store.log_event(campaign, "lock_acquired", owner=owner)
            return CampaignLock(store, campaign, owner, ttl)
        except DuplicateKeyError:
            pass
        held = store.lock_holder(campaign)
        if held is None:
            continue  # released between our insert and our read: try again
        if held["owner"] == owner:
            heartbeat(store, campaign, owner, ttl)
            return CampaignLock(store, campaign, owner, ttl)
        if not is_stale(held):
            raise LockHeld(campaign, held)
        lease.pop("_id")
        taken = store._retry(
            lambda held=held, lease=lease: locks.find_one_and_update(
                {"_id": campaign, "token": held["token"]}, {"$set": lease}
            ),
            "take over lock",
        )
        if taken is not None:
            store.log_event(campaign, "lock_taken_over", owner=owner, previous_owner=held["owner"])
            return CampaignLock(store, campaign, owner, ttl, took_over=held)
    held = store.lock_holder(campaign) or {}
    raise LockHeld(campaign, held)


def heartbeat(store: Store, campaign: str, owner: str, ttl: float = 60.0) -> None:
    """Extend our lease by ``ttl``; ``LockLost`` if someone took it over."""
    t = now()
    result = store._retry(
        lambda: store.c["locks"].update_one(
            {"_id": campaign, "owner": owner},
            {"$set": {"heartbeat_at": t, "expires_at": t + timedelta(seconds=ttl)}},
        ),
        "heartbeat",
    )
    if result.matched_count == 0:
        raise LockLost(f"lease on campaign {campaign!r} no longer held by {owner}")


def release_lock(store: Store, campaign: str, owner: str) -> bool:
    """Give the lease back (only ours); True if we held it."""
    result = store._retry(
        lambda: store.c["locks"].delete_one({"_id": campaign, "owner": owner}), "release lock"
    )
    if result.deleted_count:
        store.log_event(campaign, "lock_released", owner=owner)
    return bool(result.deleted_count)
