"""A maggma Store that keeps every document in its own JSON file, for the local backend.

Why: the local backend runs several detached worker processes that all write jobflow outputs
at the same time. montydb's SQLite files (the previous store) are not safe for that: its own
documentation calls its writes non-atomic between processes, and collections created by one
process are missing in another ("no such table"). Here one document is one file, written to a
temporary name and moved into place with `os.replace`, so writers never share a file, a reader
sees either the old or the new document and never half of one, and a worker killed mid-write
leaves at most an orphaned temporary file. No locks, no server.

Layout: `<path>/<first key>/<other keys>.json`, e.g. `outputs/<job uuid>/<index>.json`, so
the queries jobflow makes (by job uuid, by blob uuid) read one folder; any other query reads
every document and filters with mongomock's implementation of MongoDB's query language.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bson import json_util
from maggma.core import Sort, Store

_MISSING = object()


def _get(doc: dict, field: str) -> Any:
    value: Any = doc
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _put(doc: dict, field: str, value: Any) -> None:
    parts = field.split(".")
    for part in parts[:-1]:
        doc = doc.setdefault(part, {})
    doc[parts[-1]] = value


def _project(doc: dict, properties: dict | list | None) -> dict:
    if not properties:
        return doc
    if isinstance(properties, dict):
        wanted = [k for k, v in properties.items() if v]
        dropped = [k for k, v in properties.items() if not v]
        if dropped and not wanted:
            out = dict(doc)
            for field in dropped:
                out.pop(field, None)
            return out
    else:
        wanted = list(properties)
    out: dict = {}
    for field in wanted:
        value = _get(doc, field)
        if value is not _MISSING:
            _put(out, field, value)
    return out


def _sort_key(value: Any) -> tuple:
    # documents lacking the field sort first, as in MongoDB; mixed types by type name
    if value is _MISSING or value is None:
        return (0, "", 0)
    if isinstance(value, bool | int | float):
        return (1, "", value)
    return (2, type(value).__name__, str(value))


class JSONFileStore(Store):
    """Documents as files under `path`, one per distinct value of the `layout` fields (the
    fields that identify a document; default: `key`, maggma's own key, which JobStore resets
    to "uuid" on its stores and so cannot carry the layout)."""

    def __init__(
        self,
        path: str | Path,
        layout: list[str] | None = None,
        key: str = "task_id",
        **kwargs: Any,
    ):
        self.path = str(path)
        self.layout = list(layout or [key])
        self.keys = self.layout
        super().__init__(key=key, **kwargs)
        self.kwargs = kwargs

    # -- maggma plumbing -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"jsonfiles://{self.path}"

    @property
    def _collection(self) -> JSONFileStore:
        return self

    def connect(self, force_reset: bool = False) -> None:
        Path(self.path).mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        pass

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JSONFileStore) and (self.path, self.keys) == (
            other.path,
            other.keys,
        )

    def __hash__(self) -> int:
        return hash((self.path, tuple(self.keys)))

    def ensure_index(self, key: str, unique: bool = False) -> bool:
        return True  # the layout is the index

    # -- files -----------------------------------------------------------------------------
    def _file(self, doc: dict) -> Path:
        values = []
        for field in self.keys:
            value = _get(doc, field)
            if value is _MISSING:
                raise KeyError(f"document has no key field {field!r}")
            values.append(quote(str(value), safe="") or "_")
        stem = "_".join(values[1:]) or "doc"
        return Path(self.path) / values[0] / f"{stem}.json"

    def _folders(self, criteria: dict) -> list[Path]:
        root = Path(self.path)
        wanted = criteria.get(self.keys[0], _MISSING)
        if isinstance(wanted, dict) and set(wanted) == {"$in"}:
            return [root / (quote(str(v), safe="") or "_") for v in wanted["$in"]]
        if wanted is not _MISSING and not isinstance(wanted, dict):
            return [root / (quote(str(wanted), safe="") or "_")]
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def _documents(self, criteria: dict | None) -> Iterator[tuple[Path, dict]]:
        from mongomock.filtering import filter_applies

        criteria = criteria or {}
        for folder in self._folders(criteria):
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("[!.]*.json")):
                try:
                    doc = json_util.loads(path.read_text())
                except FileNotFoundError:  # removed since the listing
                    continue
                if filter_applies(criteria, doc):
                    yield path, doc

    # -- the Store API ---------------------------------------------------------------------
    def count(self, criteria: dict | None = None) -> int:
        return sum(1 for _ in self._documents(criteria))

    def query(
        self,
        criteria: dict | None = None,
        properties: dict | list | None = None,
        sort: dict[str, Sort | int] | None = None,
        skip: int = 0,
        limit: int = 0,
    ) -> Iterator[dict]:
        docs = [doc for _, doc in self._documents(criteria)]
        for field, order in reversed(list((sort or {}).items())):
            descending = (order.value if isinstance(order, Sort) else order) < 0
            docs.sort(key=lambda d, f=field: _sort_key(_get(d, f)), reverse=descending)
        docs = docs[skip:]
        if limit:
            docs = docs[:limit]
        for doc in docs:
            yield _project(doc, properties)

    def update(self, docs: list[dict] | dict, key: list | str | None = None) -> None:
        """Write (replace) each document in its own file, atomically."""
        if key is not None and ([key] if isinstance(key, str) else list(key)) != self.keys:
            raise ValueError(f"{self.name} is keyed by {self.keys}, not {key}")
        for doc in [docs] if isinstance(docs, dict) else docs:
            if self.validator is not None:
                self.validator.is_valid(doc)
            path = self._file(doc)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            with open(tmp, "w") as handle:
                handle.write(json_util.dumps(doc))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)

    def remove_docs(self, criteria: dict) -> None:
        for path, _ in list(self._documents(criteria)):
            path.unlink(missing_ok=True)

    def groupby(
        self,
        keys: list[str] | str,
        criteria: dict | None = None,
        properties: dict | list | None = None,
        sort: dict[str, Sort | int] | None = None,
        skip: int = 0,
        limit: int = 0,
    ) -> Iterator[tuple[dict, list[dict]]]:
        keys = [keys] if isinstance(keys, str) else list(keys)
        groups: dict[str, tuple[dict, list[dict]]] = {}
        for doc in self.query(criteria, None, sort, skip, limit):
            ident: dict = {}
            for field in keys:
                value = _get(doc, field)
                if value is not _MISSING:
                    _put(ident, field, value)
            groups.setdefault(json_util.dumps(ident, sort_keys=True), (ident, []))[1].append(
                _project(doc, properties)
            )
        yield from groups.values()


def make_file_jobstore(path: Path) -> Any:
    """JobStore for the local backend: outputs and the `data` blobs atomate2 jobs write, each
    document in its own file."""
    from jobflow import JobStore

    path.mkdir(parents=True, exist_ok=True)
    return JobStore(
        JSONFileStore(path / "outputs", layout=["uuid", "index"], key="uuid"),
        additional_stores={"data": JSONFileStore(path / "data", key="blob_uuid")},
    )
