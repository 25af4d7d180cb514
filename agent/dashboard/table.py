"""The candidates table: filter, sort and paginate a campaign's candidates; CSV and CIF exports.

Why from the digest: its rows hold exactly the table's columns, so any filter and any sort
order over 100,000 candidates is a pass over small in-memory rows, and only the page's own
documents are read from the store (their DFT results through the indexed ``candidate_id``).
DFT values come from the ``calculations`` collection, which holds one document per DFT run
(hundreds to thousands), read with a projection.
"""

from __future__ import annotations

import csv
import io
import re
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from agent.dashboard.digest import no_gc
from agent.store import STATUSES

SORTS = {
    "cycle": lambda r, d: (r.cycle is None, r.cycle),
    "status": lambda r, d: (False, STATUSES.index(r.status) if r.status in STATUSES else 99),
    "generator": lambda r, d: (r.generator is None, r.generator or ""),
    "formula": lambda r, d: (r.formula is None, r.formula or ""),
    "nsites": lambda r, d: (r.nsites is None, r.nsites),
    "predicted": lambda r, d: (r.pred_mean is None, r.pred_mean),
    "sigma": lambda r, d: (r.pred_std is None, r.pred_std),
    "score": lambda r, d: (r.score is None, r.score),
    "dft": lambda r, d: (d.get(r.id) is None, d.get(r.id)),
}
MAX_PER_PAGE = 200


@dataclass
class Query:
    """The table's state, as the page's URL carries it."""

    status: list[str] = field(default_factory=list)
    cycle: int | None = None
    generator: str | None = None
    formula: str | None = None
    reason: str | None = None
    sort: str = "cycle"
    descending: bool = True
    page: int = 1
    per_page: int = 50

    @classmethod
    def parse(cls, params: Any) -> Query:
        def text(key: str) -> str | None:
            value = (params.get(key) or "").strip()
            return value or None

        def number(key: str, default: int | None) -> int | None:
            try:
                return int(params.get(key)) if params.get(key) not in (None, "") else default
            except ValueError:
                return default

        status = [s for s in params.getlist("status") if s in STATUSES]
        sort = params.get("sort") or "cycle"
        return cls(
            status=status,
            cycle=number("cycle", None),
            generator=text("generator"),
            formula=text("formula"),
            reason=text("reason"),
            sort=sort if sort in SORTS else "cycle",
            descending=(params.get("dir") or "desc") != "asc",
            page=max(1, number("page", 1) or 1),
            per_page=min(MAX_PER_PAGE, max(1, number("per_page", 50) or 50)),
        )

    def params(self, **change: Any) -> list[tuple[str, str]]:
        """The query string of this state with some fields changed (for links)."""
        state = {**self.__dict__, **change}
        out = [("status", s) for s in state["status"]]
        for key in ("cycle", "generator", "formula", "reason"):
            if state[key] not in (None, ""):
                out.append((key, str(state[key])))
        out += [
            ("sort", state["sort"]),
            ("dir", "desc" if state["descending"] else "asc"),
            ("page", str(state["page"])),
            ("per_page", str(state["per_page"])),
        ]
        return out


def dft_values(store: Any, campaign: str, prop: str) -> dict[str, dict]:
    calcs = store.find_calculations(
        campaign, projection=["candidate_id", "state", prop, "e_above_hull", "discovery"]
    )
    return {c["candidate_id"]: c for c in calcs}


def select(rows: dict, dft: dict[str, dict], q: Query, prop: str) -> list[Any]:
    """The rows matching the query, in its order."""
    wanted = set(q.status)
    formula = (q.formula or "").lower()
    out = [
        r
        for r in rows.values()
        if (not wanted or r.status in wanted)
        and (q.cycle is None or r.cycle == q.cycle)
        and (q.generator is None or r.generator == q.generator)
        and (not formula or formula in (r.formula or "").lower())
        and (q.reason is None or q.reason in r.reasons)
    ]
    values = {cid: c.get(prop) for cid, c in dft.items() if isinstance(c.get(prop), int | float)}
    key = SORTS[q.sort]
    keyed = [(key(r, values), r) for r in out]
    present = [((k[1], r.id), r) for k, r in keyed if not k[0]]
    missing = sorted((r for k, r in keyed if k[0]), key=lambda r: r.id)  # always last
    present.sort(key=lambda kr: kr[0], reverse=q.descending)
    return [r for _, r in present] + missing


_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _cached(key: tuple, compute: Any) -> Any:
    """A small LRU: a page polled every few seconds, or paged through, sorts only once per
    change of the digest or of the DFT results."""
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    value = compute()
    with _CACHE_LOCK:
        _CACHE[key] = value
        while len(_CACHE) > 32:
            _CACHE.popitem(last=False)
    return value


def matching(digest: Any, dft: dict[str, dict], q: Query, prop: str) -> list[Any]:
    rows = digest.fresh()
    signature = hash(tuple(sorted((cid, c.get(prop)) for cid, c in dft.items())))
    filters = (tuple(sorted(q.status)), q.cycle, q.generator, q.formula, q.reason)
    key = ("select", id(digest), digest.version, signature, filters, q.sort, q.descending)

    def compute() -> list[Any]:
        with no_gc():
            return select(rows, dft, q, prop)

    return _cached(key, compute)


def options(digest: Any) -> dict[str, list]:
    """The values the filter form offers (generators, rejecting filters, cycles)."""

    def compute() -> dict[str, list]:
        rows = digest.rows.values()
        return {
            "generators": sorted({r.generator for r in rows if r.generator}),
            "reasons": sorted({x for r in rows for x in r.reasons}),
            "cycles": sorted({r.cycle for r in rows if r.cycle is not None}),
        }

    return _cached(("options", id(digest), digest.version), compute)


def row_dict(r: Any, calc: dict | None, prop: str) -> dict[str, Any]:
    calc = calc or {}
    return {
        "id": r.id,
        "status": r.status,
        "generator": r.generator,
        "cycle": r.cycle,
        "selected_cycle": r.selected_cycle,
        "formula": r.formula,
        "nsites": r.nsites,
        "predicted": r.pred_mean,
        "sigma": r.pred_std,
        "score": r.score,
        "dft": calc.get(prop),
        "dft_state": calc.get("state"),
        "e_above_hull": calc.get("e_above_hull"),
        "discovery": bool(calc.get("discovery")),
        "rejected_by": ", ".join(r.reasons) if r.status == "rejected" else "",
    }


def page(store: Any, digests: Any, campaign: str, q: Query, prop: str) -> dict[str, Any]:
    digest = digests.get(store, campaign, prop)
    dft = dft_values(store, campaign, prop)
    matched = matching(digest, dft, q, prop)
    rows = digest.rows
    pages = max(1, -(-len(matched) // q.per_page))
    q.page = min(q.page, pages)
    start = (q.page - 1) * q.per_page
    shown = matched[start : start + q.per_page]
    return {
        "rows": [row_dict(r, dft.get(r.id), prop) for r in shown],
        "total": len(matched),
        "all": len(rows),
        "page": q.page,
        "pages": pages,
        **options(digest),
    }


CSV_COLUMNS = [
    "id",
    "status",
    "generator",
    "cycle",
    "selected_cycle",
    "formula",
    "nsites",
    "predicted",
    "sigma",
    "score",
    "dft",
    "dft_state",
    "e_above_hull",
    "discovery",
    "rejected_by",
]


def to_csv(store: Any, digests: Any, campaign: str, q: Query, prop: str) -> str:
    """Every row the query matches (not only one page)."""
    digest = digests.get(store, campaign, prop)
    dft = dft_values(store, campaign, prop)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS)
    writer.writeheader()
    for r in matching(digest, dft, q, prop):
        writer.writerow(row_dict(r, dft.get(r.id), prop))
    return buffer.getvalue()


def safe_name(text: str) -> str:
    """A file name made only of harmless characters (formulas and ids come from the store)."""
    return re.sub(r"[^A-Za-z0-9()._-]", "_", text)[:80] or "candidate"


def cif_of(structure: dict[str, Any]) -> str:
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    return str(CifWriter(Structure.from_dict(structure)))


def to_cif_zip(store: Any, digests: Any, campaign: str, q: Query, prop: str) -> bytes:
    """The CIFs of the current page: generated, and DFT-relaxed where a result exists."""
    digest = digests.get(store, campaign, prop)
    dft = dft_values(store, campaign, prop)
    matched = matching(digest, dft, q, prop)
    start = (q.page - 1) * q.per_page
    ids = [r.id for r in matched[start : start + q.per_page]]
    docs = store.find_candidates(
        campaign, extra={"_id": {"$in": ids}}, projection=["structure", "formula"]
    )
    calcs = store.calculations_for(ids) if ids else {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for doc in sorted(docs, key=lambda d: ids.index(d["_id"])):
            stem = safe_name(f"{doc.get('formula') or 'X'}_{str(doc['_id'])[:12]}")
            archive.writestr(f"{stem}.cif", cif_of(doc["structure"]))
            relaxed = (calcs.get(doc["_id"]) or {}).get("structure")
            if isinstance(relaxed, dict) and "lattice" in relaxed:
                archive.writestr(f"{stem}_relaxed.cif", cif_of(relaxed))
    return buffer.getvalue()
