"""How the embedded store writes documents as JSON text and reads them back.

BSON types the store's documents carry (aware datetimes, ObjectIds) and floats JSON has no
word for (NaN, Infinity) are tagged the way MongoDB's extended JSON tags them, so a document
round-trips equal and SQLite's JSON functions can still read every other field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # Fixed width and millisecond precision, like BSON: sorts as text, round-trips equal.
        return {"$date": value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"}
    if isinstance(value, ObjectId):
        return {"$oid": str(value)}
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a document")


def _hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if "$float" in obj:
            return float(obj["$float"])
        if "$date" in obj:
            return datetime.strptime(obj["$date"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        if "$oid" in obj:
            return ObjectId(obj["$oid"])
    return obj


def _finite(value: Any) -> Any:
    """NaN/Infinity are not JSON (SQLite's JSON functions reject them): tag them."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def encode(doc: Any) -> str:
    text = json.dumps(doc, default=json_default, separators=(",", ":"), allow_nan=True)
    if "NaN" in text or "Infinity" in text:  # rare: only then walk the document
        text = json.dumps(
            _finite(doc), default=json_default, separators=(",", ":"), allow_nan=False
        )
    return text


def decode(text: str) -> Any:
    return json.loads(text, object_hook=_hook)


def key_of(value: Any) -> str:
    """The primary-key text of an ``_id``: its canonical JSON (str, ObjectId, int, ...)."""
    return json.dumps(value, default=json_default, separators=(",", ":"), sort_keys=True)
