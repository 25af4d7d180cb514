"""The embedded, file-persistent store: pymongo's collection API over one SQLite file.

Why not plain montydb (the obvious choice, and installed): measured here with 1,000-candidate
cycles (benchmarks/agent_store.py --montydb), montydb decodes every document of a collection
for every query - it has no indexes - so after 5 cycles one ``count_documents`` took 0.5 s and
one ``update_many`` over 500 ids 3.8 s; it has no unique indexes and no aggregation, and its
``find_one_and_update`` reads and writes through two separate SQLite connections, so it is not
atomic between processes. This module keeps montydb's *query engine* (``QueryFilter``,
``Updator``, ``Projector``, ``ordering`` provide MongoDB semantics) and replaces its storage:

- one SQLite file (WAL journal) per database, one table per collection,
  ``(id TEXT PRIMARY KEY, doc TEXT)`` with the document as JSON;
- ``create_index`` makes real (unique) expression indexes on ``json_extract(doc, field)``;
  top-level equality / ``$in`` / range conditions compile to SQL that uses them, and when SQL
  decides the whole filter, sorting, limit, projection and ``$set`` updates run in SQLite too
  (``json_set`` / ``json_remove`` / ``json_each``); any other filter is evaluated by montydb's
  engine on the superset of rows SQL returns;
- MongoDB's ``{"f": v}`` also matches arrays containing v: fields that ever held an array are
  recorded (table ``_array_fields``) and only those get the slower, array-aware treatment;
- every read-modify-write runs in one ``BEGIN IMMEDIATE`` transaction: atomic between
  threads and processes, and a process killed mid-write leaves no half-written change;
- errors and results are pymongo's (``DuplicateKeyError``, ``BulkWriteError``, ...).

Documents are written by `embedded_json` and filters compiled by `embedded_sql`. Only the
subset of the collection API the store uses is implemented; the same tests run it,
mongomock and (when configured) a real MongoDB, plus a comparison with montydb's engine.
Differences that remain: dates and ObjectIds round-trip through ``{"$date": ...}`` /
``{"$oid": ...}`` (aware UTC datetimes, millisecond precision like BSON); NaN/Infinity through
``{"$float": ...}``; SQL sorts top-level fields in SQLite's type order (BSON's differs only for
fields mixing types); a unique index accepts several documents that lack the key (MongoDB
would refuse the second); ``$set`` through a field holding a scalar is ignored, not an error.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bson import ObjectId
from montydb.engine.field_walker import FieldWalker
from montydb.engine.project import Projector
from montydb.engine.queries import QueryFilter, ordering
from montydb.engine.update import Updator
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.results import DeleteResult, InsertManyResult, InsertOneResult, UpdateResult

from agent.store.embedded_json import decode, encode, key_of
from agent.store.embedded_sql import FIELD_NAME, SqlPlan, json_path, sql_projection, sql_set


class EmbeddedCollection:
    """A pymongo-compatible collection (the subset crystalloop uses) in one SQLite table."""

    def __init__(self, database: EmbeddedDatabase, name: str):
        if not FIELD_NAME.match(name):
            raise ValueError(f"invalid collection name {name!r}")
        self.database = database
        self.name = name
        self._table = f"c_{name}"
        database._ensure_table(self._table)

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def _conn(self) -> sqlite3.Connection:
        return self.database._connection()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    def _arrays(self, conn: sqlite3.Connection) -> set[str]:
        """Top-level fields that held an array in some document (shared by all processes)."""
        rows = conn.execute("SELECT field FROM _array_fields WHERE coll = ?", (self.name,))
        return {field for (field,) in rows}

    def _note_arrays(self, conn: sqlite3.Connection, fields: Iterable[str]) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO _array_fields(coll, field) VALUES (?, ?)",
            [(self.name, f) for f in fields],
        )

    def _encode_doc(self, doc: Mapping[str, Any], arrays: set[str]) -> str:
        for field, value in doc.items():
            if isinstance(value, list | tuple) and field not in arrays:
                arrays.add(field)
                self._note_arrays(self._conn, [field])
        return encode(doc)

    def _rows(
        self,
        spec: Mapping[str, Any],
        sort: Sequence[tuple[str, int]] | None = None,
        conn: sqlite3.Connection | None = None,
        projection: Any = None,
        limit: int = 0,
        skip: int = 0,
    ) -> Iterator[dict[str, Any]]:
        """Documents matching ``spec`` (projected), SQL deciding whatever it can: filter,
        order, limit and projection run in SQLite unless montydb's engine must check rows."""
        conn = conn or self._conn
        plan = SqlPlan(spec, self._arrays(conn))
        sql_proj = sql_projection(projection) if plan.exact else None
        column, proj_params = sql_proj if sql_proj else ("doc", [])
        sql = f"SELECT {column} FROM [{self._table}]{plan.where}"
        if sort:
            order = ", ".join(
                f"json_extract(doc, '{json_path(f)}') {'ASC' if d >= 0 else 'DESC'}"
                for f, d in sort
            )
            sql += f" ORDER BY {order}"
        if plan.exact and (limit or skip):
            sql += f" LIMIT {int(abs(limit)) if limit else -1} OFFSET {int(skip)}"
            limit = skip = 0
        rows = conn.execute(sql, [*proj_params, *plan.params]).fetchall()
        qfilter = None if plan.exact else QueryFilter(dict(spec))
        index = count = 0
        for (text,) in rows:
            doc = decode(text)
            if qfilter is not None and not qfilter(doc):
                continue
            index += 1
            if index <= skip:
                continue
            if limit and count >= abs(limit):
                break
            count += 1
            yield doc if sql_proj else _project(doc, projection, spec)

    # -- indexes -----------------------------------------------------------------------------
    def create_index(
        self, keys: str | Sequence[tuple[str, int]], unique: bool = False, name: str | None = None
    ) -> str:
        if isinstance(keys, str):
            keys = [(keys, 1)]
        fields = [f for f, _ in keys]
        name = name or "_".join(f"{f}_{d}" for f, d in keys)
        exprs = ", ".join(f"json_extract(doc, '{json_path(f)}')" for f in fields)
        index = f"ix_{self.name}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
        with self._transaction() as conn:
            conn.execute(
                f"CREATE {'UNIQUE ' if unique else ''}INDEX IF NOT EXISTS [{index}] "
                f"ON [{self._table}]({exprs})"
            )
        return name

    # -- writes ------------------------------------------------------------------------------
    def insert_one(self, document: dict[str, Any]) -> InsertOneResult:
        document.setdefault("_id", ObjectId())
        with self._transaction() as conn:
            try:
                conn.execute(
                    f"INSERT INTO [{self._table}](id, doc) VALUES (?, ?)",
                    (key_of(document["_id"]), self._encode_doc(document, self._arrays(conn))),
                )
            except sqlite3.IntegrityError as exc:
                raise DuplicateKeyError(f"E11000 duplicate key: {exc}", 11000) from exc
        return InsertOneResult(document["_id"], True)

    def insert_many(
        self, documents: Iterable[dict[str, Any]], ordered: bool = True
    ) -> InsertManyResult:
        docs = list(documents)
        ids: list[Any] = []
        errors: list[dict[str, Any]] = []
        sql = f"INSERT INTO [{self._table}](id, doc) VALUES (?, ?)"
        with self._transaction() as conn:
            arrays = self._arrays(conn)
            for index, doc in enumerate(docs):
                doc.setdefault("_id", ObjectId())
                try:
                    conn.execute(sql, (key_of(doc["_id"]), self._encode_doc(doc, arrays)))
                except sqlite3.IntegrityError as exc:
                    errors.append({"index": index, "code": 11000, "errmsg": f"E11000 {exc}"})
                    if ordered:
                        break
                    continue
                ids.append(doc["_id"])
        if errors:
            raise BulkWriteError(
                {
                    "writeErrors": errors,
                    "writeConcernErrors": [],
                    "nInserted": len(ids),
                    "nUpserted": 0,
                    "nMatched": 0,
                    "nModified": 0,
                    "nRemoved": 0,
                    "upserted": [],
                }
            )
        return InsertManyResult(ids, True)

    def _apply(
        self,
        conn: sqlite3.Connection,
        spec: Mapping[str, Any],
        update: Mapping[str, Any],
        many: bool,
        arrays: set[str] | None = None,
        count: bool = True,
    ) -> tuple[int, int]:
        """Update matching documents inside the caller's transaction: (matched, modified);
        without ``count`` matched is not computed (-1) - bulk callers only need modified."""
        arrays = self._arrays(conn) if arrays is None else arrays
        plan = SqlPlan(spec, arrays)
        fast = sql_set(update) if plan.exact else None
        if fast is not None:
            expr, params, new_arrays = fast
            if new_arrays - arrays:
                self._note_arrays(conn, new_arrays - arrays)
                arrays |= new_arrays
            where = plan.where
            if not many and not where.startswith(" WHERE id = ?"):
                where = f" WHERE id = (SELECT id FROM [{self._table}]{plan.where} LIMIT 1)"
            matched = -1
            if count:
                (matched,) = conn.execute(
                    f"SELECT COUNT(*) FROM [{self._table}]{where}", plan.params
                ).fetchone()
                if not matched:
                    return 0, 0
            cur = conn.execute(
                f"UPDATE [{self._table}] SET doc = {expr}{where}"
                f"{' AND' if where else ' WHERE'} {expr} IS NOT doc",
                [*params, *plan.params, *params],
            )
            return matched, cur.rowcount
        updator = Updator(dict(update), None)
        matched = modified = 0
        changed = []
        for doc in self._rows(spec, conn=conn):
            matched += 1
            walker = FieldWalker(doc)
            if updator(walker):
                modified += 1
                changed.append((self._encode_doc(walker.doc, arrays), key_of(doc["_id"])))
            if not many:
                break
        conn.executemany(f"UPDATE [{self._table}] SET doc = ? WHERE id = ?", changed)
        return matched, modified

    def _update(
        self, spec: Mapping[str, Any], update: Mapping[str, Any], many: bool, upsert: bool
    ) -> UpdateResult:
        upserted = None
        with self._transaction() as conn:
            try:
                matched, modified = self._apply(conn, spec, update, many)
                if not matched and upsert:
                    upserted = self._upsert(conn, spec, Updator(dict(update), None))
            except sqlite3.IntegrityError as exc:
                raise DuplicateKeyError(f"E11000 duplicate key: {exc}", 11000) from exc
        raw = {"n": matched or int(upserted is not None), "nModified": modified}
        if upserted is not None:
            raw["upserted"] = upserted
        return UpdateResult(raw, True)

    def _upsert(self, conn: sqlite3.Connection, spec: Mapping[str, Any], updator: Updator) -> Any:
        doc = {k: v for k, v in spec.items() if not k.startswith("$") and "." not in k}
        doc = {k: v for k, v in doc.items() if not (isinstance(v, Mapping) and _has_op(v))}
        doc.setdefault("_id", ObjectId())
        walker = FieldWalker(doc)
        updator(walker, do_insert=True)
        conn.execute(
            f"INSERT INTO [{self._table}](id, doc) VALUES (?, ?)",
            (key_of(walker.doc["_id"]), self._encode_doc(walker.doc, self._arrays(conn))),
        )
        return walker.doc["_id"]

    def update_one(
        self, filter: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False
    ) -> UpdateResult:
        return self._update(filter, update, many=False, upsert=upsert)

    def update_many(
        self, filter: Mapping[str, Any], update: Mapping[str, Any], upsert: bool = False
    ) -> UpdateResult:
        return self._update(filter, update, many=True, upsert=upsert)

    def update_each(self, operations: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> int:
        """Many single-document updates in ONE transaction (pymongo: ``bulk_write``); returns
        how many documents matched. Consecutive ``$set``-by-``_id`` operations on the same
        fields share one prepared statement (``executemany``)."""
        matched = 0
        with self._transaction() as conn:
            arrays = self._arrays(conn)
            batch_sql, batch = "", []

            def flush() -> int:
                if not batch:
                    return 0
                n = conn.executemany(batch_sql, batch).rowcount
                batch.clear()
                return n

            try:
                for spec, update in operations:
                    plan = SqlPlan(spec, arrays)
                    fast = sql_set(update) if plan.exact else None
                    if (
                        fast is None
                        or not plan.where.startswith(" WHERE id = ?")
                        or (fast[2] - arrays)
                    ):
                        matched += flush()
                        matched += self._apply(conn, spec, update, False, arrays, count=False)[1]
                        continue
                    sql = f"UPDATE [{self._table}] SET doc = {fast[0]}{plan.where}"
                    if sql != batch_sql:
                        matched += flush()
                        batch_sql = sql
                    batch.append([*fast[1], *plan.params])
                matched += flush()
            except sqlite3.IntegrityError as exc:
                raise DuplicateKeyError(f"E11000 duplicate key: {exc}", 11000) from exc
        return matched

    def find_one_and_update(
        self,
        filter: Mapping[str, Any],
        update: Mapping[str, Any],
        projection: Any = None,
        sort: Sequence[tuple[str, int]] | None = None,
        return_document: bool = False,
        upsert: bool = False,
    ) -> dict[str, Any] | None:
        updator = Updator(dict(update), None)
        with self._transaction() as conn:
            docs = list(self._rows(filter, conn=conn, limit=0 if sort else 1))
            if sort:
                docs = [w.doc for w in ordering([FieldWalker(d) for d in docs], dict(sort))]
            before = docs[0] if docs else None
            if before is None:
                if not upsert:
                    return None
                new_id = self._upsert(conn, filter, updator)
                after = decode(
                    conn.execute(
                        f"SELECT doc FROM [{self._table}] WHERE id = ?", (key_of(new_id),)
                    ).fetchone()[0]
                )
                return _project(after, projection, filter) if return_document else None
            walker = FieldWalker(decode(encode(before)))
            if updator(walker):
                try:
                    conn.execute(
                        f"UPDATE [{self._table}] SET doc = ? WHERE id = ?",
                        (self._encode_doc(walker.doc, self._arrays(conn)), key_of(before["_id"])),
                    )
                except sqlite3.IntegrityError as exc:
                    raise DuplicateKeyError(f"E11000 duplicate key: {exc}", 11000) from exc
        result = walker.doc if return_document else before
        return _project(result, projection, filter)

    def _delete(self, spec: Mapping[str, Any], many: bool) -> DeleteResult:
        with self._transaction() as conn:
            ids = []
            for doc in self._rows(spec, conn=conn, projection={"_id": 1}):
                ids.append((key_of(doc["_id"]),))
                if not many:
                    break
            conn.executemany(f"DELETE FROM [{self._table}] WHERE id = ?", ids)
        return DeleteResult({"n": len(ids)}, True)

    def delete_one(self, filter: Mapping[str, Any]) -> DeleteResult:
        return self._delete(filter, many=False)

    def delete_many(self, filter: Mapping[str, Any]) -> DeleteResult:
        return self._delete(filter, many=True)

    # -- reads -------------------------------------------------------------------------------
    def find(
        self,
        filter: Mapping[str, Any] | None = None,
        projection: Any = None,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int = 0,
        skip: int = 0,
    ) -> Iterator[dict[str, Any]]:
        spec = dict(filter or {})
        sort = list(sort or [])
        if sort and not all(FIELD_NAME.match(f) for f, _ in sort):  # nested paths: montydb order
            docs = [w.doc for w in ordering([FieldWalker(d) for d in self._rows(spec)], dict(sort))]
            docs = docs[skip:]
            docs = docs[: abs(limit)] if limit else docs
            return iter([_project(d, projection, spec) for d in docs])
        return iter(list(self._rows(spec, sort, projection=projection, limit=limit, skip=skip)))

    def find_one(
        self, filter: Mapping[str, Any] | None = None, projection: Any = None, **kwargs: Any
    ) -> dict[str, Any] | None:
        return next(self.find(filter, projection, limit=1, **kwargs), None)

    def count_documents(self, filter: Mapping[str, Any]) -> int:
        conn = self._conn
        plan = SqlPlan(filter, self._arrays(conn))
        if plan.exact:
            sql = f"SELECT COUNT(*) FROM [{self._table}]{plan.where}"
            return conn.execute(sql, plan.params).fetchone()[0]
        return sum(1 for _ in self._rows(filter, conn=conn))

    def distinct(self, key: str, filter: Mapping[str, Any] | None = None) -> list[Any]:
        values: list[Any] = []
        for doc in self._rows(filter or {}):
            walker = FieldWalker(doc).go(key).get()
            for value in walker.value.iter_flat():
                if value not in values:
                    values.append(value)
        return values

    def drop(self) -> None:
        with self._transaction() as conn:
            conn.execute(f"DELETE FROM [{self._table}]")


def _has_op(value: Mapping[str, Any]) -> bool:
    return any(str(k).startswith("$") for k in value)


def _project(doc: dict[str, Any], projection: Any, spec: Mapping[str, Any]) -> dict[str, Any]:
    if not projection:
        return doc
    if isinstance(projection, list | tuple):
        projection = dict.fromkeys(projection, 1)
    walker = FieldWalker(doc)
    Projector(dict(projection), QueryFilter(dict(spec)))(walker)
    return walker.doc


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: takes SQLite's write lock up front, so a
    read-modify-write cannot interleave with another writer (thread or process)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


class EmbeddedDatabase:
    """One SQLite file (WAL journal) holding every collection of a database."""

    def __init__(self, client: EmbeddedClient, name: str):
        if not FIELD_NAME.match(name):
            raise ValueError(f"invalid database name {name!r}")
        self.client = client
        self.name = name
        self.path = client.path / f"{name}.sqlite"
        self._local = threading.local()
        self._tables: set[str] = set()
        self._collections: dict[str, EmbeddedCollection] = {}

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(
                self.path, timeout=self.client.busy_timeout, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _ensure_table(self, table: str) -> None:
        if table in self._tables:
            return
        conn = self._connection()
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS [{table}] (id TEXT PRIMARY KEY, doc TEXT NOT NULL)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _array_fields "
            "(coll TEXT NOT NULL, field TEXT NOT NULL, PRIMARY KEY (coll, field))"
        )
        self._tables.add(table)

    def __getitem__(self, name: str) -> EmbeddedCollection:
        if name not in self._collections:
            self._collections[name] = EmbeddedCollection(self, name)
        return self._collections[name]

    def list_collection_names(self) -> list[str]:
        rows = self._connection().execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'c\\_%' ESCAPE '\\'"
        )
        return sorted(name[2:] for (name,) in rows)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class EmbeddedClient:
    """Stands where ``pymongo.MongoClient`` stands: ``client[database][collection]``."""

    def __init__(self, path: str | Path, busy_timeout: float = 5.0):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.busy_timeout = busy_timeout
        self._databases: dict[str, EmbeddedDatabase] = {}

    def __getitem__(self, name: str) -> EmbeddedDatabase:
        if name not in self._databases:
            self._databases[name] = EmbeddedDatabase(self, name)
        return self._databases[name]

    def close(self) -> None:
        for db in self._databases.values():
            db.close()
