"""MongoDB filters, projections and updates compiled to SQLite over JSON documents.

Only what SQL can decide exactly is compiled (top-level equality, ``$in``, ranges, plain
``$set``); the embedded collection evaluates anything else with montydb's engine on the rows
SQL returns, so a filter SQL cannot express is slower, never wrong.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.errors import OperationFailure

from agent.store.embedded_json import encode, json_default, key_of

FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCALAR = (str, int, float)


def json_path(field: str) -> str:
    parts = field.split(".")
    if not all(FIELD_NAME.match(part) for part in parts):
        raise OperationFailure(f"embedded store: unsupported field name {field!r}")
    return "$." + ".".join(f'"{part}"' for part in parts)


def _translatable(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, _SCALAR) and not isinstance(value, bool)


class SqlPlan:
    """A filter as SQL: ``where`` selects a superset of the matches; ``exact`` says SQL alone
    decides (no Python check needed). Fields that ever held an array in this collection
    (``arrays``) get a guard, because MongoDB's ``{"f": v}`` also matches arrays containing v;
    other fields compile to plain comparisons the expression indexes serve."""

    def __init__(self, spec: Mapping[str, Any], arrays: set[str] = frozenset()):
        self.clauses: list[str] = []
        self.params: list[Any] = []
        self.exact = True
        for field, cond in spec.items():
            if field.startswith("$") or not FIELD_NAME.match(field):  # operators, dotted, odd names
                self.exact = False
                continue
            if field == "_id":
                if _translatable(cond) or isinstance(cond, ObjectId):
                    self.clauses.append("id = ?")
                    self.params.append(key_of(cond))
                elif (values := _in_list(cond)) is not None:
                    self.clauses.append(f"id IN ({','.join('?' * len(values))})")
                    self.params.extend(key_of(v) for v in values)
                else:
                    self.exact = False
                continue
            expr = f"json_extract(doc, '{json_path(field)}')"
            if cond is None:
                clause, params = f"{expr} IS NULL", []
            elif _translatable(cond):
                clause, params = f"{expr} = ?", [cond]
            elif (values := _in_list(cond)) is not None:
                clause, params = f"{expr} IN ({','.join('?' * len(values))})", values
            elif (ranges := _range(cond)) is not None:
                kind, bounds = ranges
                if kind == "date":
                    date = f"json_extract(doc, '{json_path(field)}.\"$date\"')"
                    terms = [f"{date} {op} ?" for op, _ in bounds]
                else:  # numbers compare only with numbers, as in MongoDB
                    terms = [f"json_type(doc, '{json_path(field)}') IN ('integer', 'real')"]
                    terms += [f"{expr} {op} ?" for op, _ in bounds]
                clause, params = " AND ".join(terms), [v for _, v in bounds]
            else:
                self.exact = False
                continue
            if field in arrays:  # superset; montydb's engine decides these rows
                clause = f"({clause} OR json_type(doc, '{json_path(field)}') IS 'array')"
                self.exact = False
            self.clauses.append(clause)
            self.params.extend(params)

    @property
    def where(self) -> str:
        return (" WHERE " + " AND ".join(self.clauses)) if self.clauses else ""


def sql_projection(projection: Any) -> tuple[str, list[Any]] | None:
    """A top-level inclusion or exclusion projection as an SQL expression over ``doc``."""
    if not projection:
        return None
    if isinstance(projection, list | tuple):
        projection = dict.fromkeys(projection, 1)
    fields = {k: bool(v) for k, v in projection.items() if not isinstance(v, Mapping)}
    if len(fields) != len(projection) or any("." in f or not FIELD_NAME.match(f) for f in fields):
        return None
    include = {f for f, on in fields.items() if on and f != "_id"}
    exclude = {f for f, on in fields.items() if not on and f != "_id"}
    if include and exclude:
        return None
    with_id = fields.get("_id", True)
    if include or (not exclude and with_id):  # inclusion (or {"_id": 1} alone)
        keys = include | ({"_id"} if with_id else set())
        marks = ",".join("?" * len(keys))
        return (
            f"(SELECT json_group_object(key, value) FROM json_each(doc) WHERE key IN ({marks}))",
            sorted(keys),
        )
    removed = sorted(exclude | (set() if with_id else {"_id"}))
    return "json_remove(doc, " + ", ".join(f"'{json_path(f)}'" for f in removed) + ")", []


@functools.lru_cache(maxsize=256)
def _set_expr(fields: tuple[str, ...]) -> str | None:
    """The ``json_set`` expression for ``$set`` of these fields (values bound as parameters)."""
    parents: list[str] = []
    for field in fields:
        parts = field.split(".")
        if field == "_id" or not all(FIELD_NAME.match(p) for p in parts):
            return None
        for k in range(1, len(parts)):
            prefix = ".".join(parts[:k])
            if prefix in fields:  # conflicting paths: let montydb raise MongoDB's error
                return None
            if prefix not in parents:
                parents.append(prefix)
    # Missing sub-documents first, one nested json_set per level: SQLite (before 3.45) does not
    # descend into nodes that the same json_set call inserted.
    expr = "doc"
    for prefix in sorted(parents, key=lambda p: p.count(".")):
        path = json_path(prefix)
        expr = f"json_set({expr}, '{path}', json(coalesce(doc -> '{path}', '{{}}')))"
    return f"json_set({expr}, " + ", ".join(f"'{json_path(f)}', json(?)" for f in fields) + ")"


def sql_set(update: Mapping[str, Any]) -> tuple[str, list[Any], set[str]] | None:
    """A pure ``$set`` as a ``json_set`` expression (SQLite does the update in C), with the
    top-level fields that receive arrays; None when montydb's ``Updator`` must do it."""
    if list(update) != ["$set"] or not isinstance(update["$set"], Mapping) or not update["$set"]:
        return None
    fields = update["$set"]
    expr = _set_expr(tuple(fields))
    if expr is None:
        return None
    arrays = {f for f, v in fields.items() if "." not in f and isinstance(v, list | tuple)}
    return expr, [encode(v) for v in fields.values()], arrays


_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _range(cond: Any) -> tuple[str, list[tuple[str, Any]]] | None:
    """``{"$gt": x, "$lte": y}`` on numbers or datetimes as SQL comparisons, else None."""
    if not isinstance(cond, Mapping) or not cond or not set(cond) <= set(_OPS):
        return None
    values = list(cond.values())
    if all(isinstance(v, datetime) for v in values):
        return "date", [(_OPS[op], json_default(v)["$date"]) for op, v in cond.items()]
    if all(_translatable(v) and not isinstance(v, str) for v in values):
        return "number", [(_OPS[op], v) for op, v in cond.items()]
    return None


def _in_list(cond: Any) -> list[Any] | None:
    if isinstance(cond, Mapping) and list(cond) == ["$in"]:
        values = list(cond["$in"])
        if values and all(_translatable(v) for v in values) and len(values) < 30000:
            return values
    return None
