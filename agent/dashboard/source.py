"""The dashboard's only door to the store: a read-only view, opened lazily.

Why a wrapper and not the ``Store`` itself: the dashboard must never write, so its routes get
an object that has only the read methods (a write method is an ``AttributeError``, not a
convention). On the embedded backend each thread's SQLite connection is also switched to
``PRAGMA query_only``, so even a read method that wrote would fail in SQLite.

Why lazily: ``crystalloop dashboard`` may start before the first campaign has created the
embedded store; like ``crystalloop status`` it must not create one, so pages say "no store
yet" until the daemon has written it, and the next request connects.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

READ_METHODS = (
    "list_campaigns",
    "get_campaign",
    "count_by_status",
    "find_candidates",
    "get_candidate",
    "calculations_for",
    "find_calculations",
    "get_calculation",
    "count_calculations",
    "best_materials",
    "deployed_model",
    "list_models",
    "get_model",
    "lock_holder",
    "events",
    "cycles",
)


class ReadOnlyStore:
    """The read half of ``agent.store.Store``: the methods in ``READ_METHODS`` and no other."""

    def __init__(self, store: Any):
        self._store = store
        self._guarded = threading.local()
        self.backend = store.backend

    def describe(self) -> str:
        return self._store.describe()

    def _guard(self) -> None:
        if self.backend != "embedded" or getattr(self._guarded, "done", False):
            return
        # the calling thread's connection (the embedded store keeps one per thread)
        self._store.db._connection().execute("PRAGMA query_only = ON")
        self._guarded.done = True

    def __getattr__(self, name: str) -> Any:
        if name not in READ_METHODS:
            raise AttributeError(f"the dashboard's store is read-only: no {name!r}")
        method = getattr(self._store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self._guard()
            return method(*args, **kwargs)

        return call

    def close_thread(self) -> None:
        """Release the calling thread's connection (threads that end call it)."""
        self._store.close_thread()

    def close(self) -> None:
        self._store.close()


class StoreSource:
    """Connects on first use (and again while the embedded store does not exist yet)."""

    def __init__(self, uri: str | None = None, database: str | None = None):
        from agent.store import StoreSettings

        self.settings = StoreSettings()
        self.uri = uri or self.settings.uri
        self.database = database or self.settings.database
        self._store: ReadOnlyStore | None = None
        self._lock = threading.Lock()

    @property
    def embedded_file(self) -> Path | None:
        if self.uri:
            return None
        return Path(self.settings.path) / f"{self.database}.sqlite"

    def where(self) -> str:
        if self._store is not None:
            return self._store.describe()
        return str(self.embedded_file) if self.embedded_file else f"MongoDB {self.uri}"

    def get(self) -> ReadOnlyStore | None:
        """The store, or None while the embedded store has not been created."""
        if self._store is not None:
            return self._store
        with self._lock:
            if self._store is None:
                file = self.embedded_file
                if file is not None and not file.exists():
                    return None
                from agent.store import Store

                settings = self.settings.model_copy(update={"retry_seconds": 10})
                self._store = ReadOnlyStore(Store.connect(self.uri, self.database, settings))
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
