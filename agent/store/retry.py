"""Retry store operations while the store is unreachable, with exponential backoff.

A daemon runs for days; a MongoDB restart or a backup holding the SQLite file must stall it,
not kill it. Only *transient* errors are retried: pymongo's ``AutoReconnect`` family (which
includes ``NotPrimaryError`` and network timeouts), ``ServerSelectionTimeoutError``, and
SQLite's "database is locked" / "busy". Every operation the store retries is safe to repeat:
an aborted SQLite transaction rolled back; a MongoDB write that may have been applied is
written idempotently (fixed ``_id``\\s, conditional updates with a transition token).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

from pymongo.errors import AutoReconnect, ServerSelectionTimeoutError

T = TypeVar("T")
log = logging.getLogger("crystalloop.store")


class StoreUnavailable(RuntimeError):
    """The store stayed unreachable for longer than the configured retry window."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, AutoReconnect | ServerSelectionTimeoutError):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "locked" in text or "busy" in text
    return False


def retrying(
    operation: Callable[[], T],
    window: float,
    *,
    what: str = "store operation",
    on_retry: Callable[[BaseException, int], None] | None = None,
    first_delay: float = 0.05,
    max_delay: float = 5.0,
) -> T:
    """Run ``operation``; on a transient error sleep (0.05 s doubling to 5 s, jittered) and
    try again until ``window`` seconds have passed, then raise ``StoreUnavailable``."""
    deadline = time.monotonic() + window
    delay = first_delay
    attempt = 0
    while True:
        try:
            return operation()
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreUnavailable(
                    f"{what}: store unreachable for {window:.0f} s ({exc})"
                ) from exc
            if on_retry is not None:
                on_retry(exc, attempt)
            # A lock met once or twice is routine (two processes opening one SQLite file);
            # only a store that stays busy is worth the user's attention.
            level = logging.WARNING if attempt >= 3 else logging.DEBUG
            log.log(level, "%s: %s; retry %d in %.2f s", what, exc, attempt, delay)
            time.sleep(min(delay * (0.75 + random.random() / 2), remaining))
            delay = min(delay * 2, max_delay)
