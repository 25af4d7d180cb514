"""Opening the store (MongoDB or the embedded backend), its collections and indexes, and the
retry wrapper every operation goes through. The per-collection operations live in mixins on
top of this class (campaigns, candidates, transitions, calculations, models, events, locks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, Self, TypeVar

from pymongo.errors import BulkWriteError

from agent.store.retry import retrying
from agent.store.settings import StoreSettings

T = TypeVar("T")

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


def now() -> datetime:
    """Aware UTC, truncated to milliseconds: what BSON keeps, so both backends round-trip it."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


class StoreConnection:
    """The database handle and what every operation shares; ``agent.store.Store`` adds the
    operations."""

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
        # Opening a collection creates its table on the embedded backend: a write that can
        # meet another process's lock, so it is retried like every other operation.
        self.c = self._retry(
            lambda: {name: self.db[name] for name in COLLECTIONS}, "open collections"
        )
        self._retry(self._ensure_schema, "create indexes")

    # -- connection --------------------------------------------------------------------------
    @classmethod
    def connect(
        cls,
        uri: str | None = None,
        database: str | None = None,
        settings: StoreSettings | None = None,
    ) -> Self:
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

    def __enter__(self) -> Self:
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
