"""The numbers of the campaigns list and of one campaign's page, read from the store.

Why here and not in ``agent.store_cli``: the dashboard needs more than ``status`` prints (the
daemon's liveness, discoveries, per-cycle series) and must stay cheap with big campaigns, so
everything is an indexed count, the small ``calculations`` collection, or the digest
(``agent.dashboard.digest``). DFT "used" counts what the daemon counts against the budget
(``agent.loop``: submitted, running, completed, failed).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from agent.store import STATUSES

DFT_USED = ("submitted", "running", "completed", "failed")
CALC_FIELDS = [
    "candidate_id",
    "state",
    "formula",
    "formation_energy_per_atom",
    "e_above_hull",
    "discovery",
    "known_match",
    "predicted",
    "predicted_formation_energy",
    "cycle",
    "references",
    "settings_key",
    "energy_per_atom",
    "anion_correction_per_atom",
    "wall_time_s",
    "n_attempts",
    "error",
    "created_at",
    "updated_at",
]


def objective_of(campaign: dict[str, Any]) -> dict[str, Any]:
    objective = dict((campaign.get("config") or {}).get("objective") or {})
    objective.setdefault("property", "formation_energy_per_atom")
    objective.setdefault("goal", "minimise")
    return objective


def daemon_of(store: Any, name: str) -> dict[str, Any]:
    """Who drives the campaign: the lease holder, and whether its lease is still valid."""
    lock = store.lock_holder(name)
    if not lock:
        return {"owner": None, "alive": False, "until": None}
    expires = lock.get("expires_at")
    alive = bool(expires and expires > datetime.now(UTC))
    return {"owner": lock.get("owner"), "alive": alive, "until": expires}


def state_label(campaign: dict[str, Any], daemon: dict[str, Any]) -> str:
    state = campaign.get("state") or "created"
    if state == "running" and not daemon["alive"]:
        return "running? (no live daemon)"
    return {"completed": "done"}.get(state, state)


def completed_calcs(store: Any, name: str) -> list[dict]:
    return store.find_calculations(name, "completed", projection=CALC_FIELDS)


def campaign_row(
    store: Any, campaign: dict[str, Any], calcs: list[dict] | None = None
) -> dict[str, Any]:
    """One row of the campaigns list (``calcs``: its completed calculations, if read already)."""
    name = campaign["_id"]
    counts = store.count_by_status(name)
    daemon = daemon_of(store, name)
    calcs = completed_calcs(store, name) if calcs is None else calcs
    prop = objective_of(campaign)["property"]
    scored = [c for c in calcs if isinstance(c.get(prop), int | float)]
    best = min(scored, key=lambda c: c[prop], default=None)
    model = store.deployed_model(name)
    budget = ((campaign.get("config") or {}).get("budgets") or {}).get("max_dft_calculations")
    return {
        "name": name,
        "state": state_label(campaign, daemon),
        "daemon": daemon["owner"] if daemon["alive"] else None,
        "cycle": campaign.get("cycle", 0),
        "phase": campaign.get("phase"),
        "counts": counts,
        "total": sum(counts.values()),
        "dft_used": sum(counts[s] for s in DFT_USED),
        "dft_budget": budget,
        "discoveries": sum(1 for c in calcs if c.get("discovery")),
        "best": None
        if best is None
        else {
            "formula": best.get("formula"),
            "value": best[prop],
            "candidate_id": best["candidate_id"],
        },
        "property": prop,
        "model": (model or {}).get("version"),
        "error": campaign.get("error"),
        "updated_at": campaign.get("updated_at"),
    }


def campaigns(store: Any) -> list[dict[str, Any]]:
    return [campaign_row(store, c) for c in store.list_campaigns()]


def cycle_series(store: Any, name: str, calcs_all: list[dict], selected: dict[str, int]) -> dict:
    """Per-cycle counts from the ``cycles`` documents, plus DFT outcomes by selection cycle."""
    docs = store.cycles(name)
    cycles = [int(d["cycle"]) for d in docs]
    reasons = sorted({r for d in docs for r in (d.get("rejections") or {})})
    done: dict[int, int] = {}
    failed: dict[int, int] = {}
    for calc in calcs_all:
        cycle = selected.get(calc["candidate_id"], calc.get("cycle"))
        if cycle is None:
            continue
        target = done if calc.get("state") == "completed" else failed
        if calc.get("state") in ("completed", "failed"):
            target[int(cycle)] = target.get(int(cycle), 0) + 1
    return {
        "cycle": cycles,
        "generated": [d.get("generated", 0) for d in docs],
        "duplicates": [d.get("duplicates", 0) for d in docs],
        "rejected": [d.get("rejected", 0) for d in docs],
        "rejections": {r: [(d.get("rejections") or {}).get(r, 0) for d in docs] for r in reasons},
        "pooled": [d.get("pooled", 0) for d in docs],
        "selected": [d.get("selected", 0) for d in docs],
        "dft_completed": [done.get(c, 0) for c in cycles],
        "dft_failed": [failed.get(c, 0) for c in cycles],
        "discoveries": [d.get("discoveries", 0) for d in docs],
        "latest": docs[-1] if docs else None,
    }


def best_vs_spent(calcs_all: list[dict], prop: str, goal: str) -> dict[str, list]:
    """The best DFT value so far after each finished calculation (in the order they finished)."""
    finished = [c for c in calcs_all if c.get("state") in ("completed", "failed")]
    # created_at: when the result was first stored (updated_at moves with every hull update)
    finished.sort(key=lambda c: c.get("created_at") or datetime.min.replace(tzinfo=UTC))
    spent, best, formulas = [], [], []
    current: float | None = None
    holder = None
    for i, calc in enumerate(finished, 1):
        value = calc.get(prop)
        if calc.get("state") == "completed" and isinstance(value, int | float):
            if current is None or value < current:
                current, holder = float(value), calc.get("formula")
        spent.append(i)
        best.append(current)
        formulas.append(holder)
    return {"spent": spent, "best": best, "formula": formulas}


def generator_yield(rows: dict, calcs: list[dict]) -> list[dict[str, Any]]:
    """Per generator: candidates, how many passed the filters, were relaxed, were discoveries."""
    out: dict[str, dict[str, Any]] = {}
    # one C-level pass over the rows (100,000 of them in a big campaign), then a few sums
    tally = Counter((row.generator or "?", row.status) for row in rows.values())
    for (generator, status), n in tally.items():
        g = out.setdefault(
            generator,
            {"generator": generator, "candidates": 0, "passed": 0, "relaxed": 0, "discoveries": 0},
        )
        g["candidates"] += n
        if status not in ("generated", "rejected"):
            g["passed"] += n
        if status == "completed":
            g["relaxed"] += n
    for calc in calcs:
        row = rows.get(calc["candidate_id"])
        if row is not None and calc.get("discovery"):
            out[row.generator or "?"]["discoveries"] += 1
    return sorted(out.values(), key=lambda g: -g["candidates"])


def campaign_detail(store: Any, digests: Any, name: str) -> dict[str, Any] | None:
    campaign = store.get_campaign(name)
    if campaign is None:
        return None
    objective = objective_of(campaign)
    prop = objective["property"]
    calcs_all = store.find_calculations(name, projection=CALC_FIELDS)
    completed = [c for c in calcs_all if c.get("state") == "completed"]
    row = campaign_row(store, campaign, completed)
    rows = digests.get(store, name, prop).fresh()
    selected = {
        c["candidate_id"]: int(r.selected_cycle)
        for c in calcs_all
        if (r := rows.get(c["candidate_id"])) is not None and r.selected_cycle is not None
    }
    return {
        "name": name,
        "summary": row,
        "objective": objective,
        "config": campaign.get("config") or {},
        "cycles": cycle_series(store, name, calcs_all, selected),
        "best_vs_spent": best_vs_spent(calcs_all, prop, objective["goal"]),
        "completed": completed,
        "dft_counts": {
            "completed": row["counts"]["completed"],
            "failed": row["counts"]["failed"],
            "running": row["counts"]["running"],
            "queued": row["counts"]["submitted"],
        },
        "generators": generator_yield(rows, completed),
        "statuses": list(STATUSES),
    }
