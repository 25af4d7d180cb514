"""One candidate in full, the DFT queue, the model registry and the policy comparison.

Why the DFT attempts come partly from disk: the daemon stores one calculation document per
candidate with its outcome (``agent.loop``: energies, n_attempts, warnings, wall time, the
error of a failed run) but not each pw.x attempt; ``dft.runner`` writes those, with their
corrective actions, to ``attempts.json`` in the QE task directory, beside each attempt's
``pw.out``. When that directory is readable from the dashboard's machine (the local backend),
the page shows every attempt and the tail of its log; otherwise it says where they are.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG_LINES = 25
PER_QUEUE = 200


def _tail(path: Path, lines: int = LOG_LINES) -> str | None:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 16_384))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    return "\n".join(text.splitlines()[-lines:])


def attempts_of(calc: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """(attempts with log tails, the task directory) of a calculation, as far as readable."""
    task = calc.get("task_doc") or {}
    folder = task.get("qe_task_dir") or task.get("dir_name") or calc.get("qe_task_dir")
    attempts = task.get("attempts")
    if not attempts and folder:
        try:
            attempts = json.loads((Path(folder) / "attempts.json").read_text())
        except (OSError, ValueError):
            attempts = None
    out = []
    for a in attempts or []:
        if not isinstance(a, dict):
            continue
        directory = a.get("directory")
        out.append({**a, "log": _tail(Path(directory) / "pw.out") if directory else None})
    return out, folder


def candidate(store: Any, candidate_id: str) -> dict[str, Any] | None:
    doc = store.get_candidate(candidate_id)
    if doc is None:
        return None
    from agent.dashboard.viewer import structure_figure

    calc = store.calculations_for([candidate_id]).get(candidate_id)
    attempts, folder = attempts_of(calc) if calc else ([], None)
    relaxed = (calc or {}).get("structure")
    figures = {"generated": structure_figure(doc["structure"], "generated")}
    if isinstance(relaxed, dict) and "lattice" in relaxed:
        figures["relaxed"] = structure_figure(relaxed, "DFT-relaxed")
    events = store.events(doc["campaign"], candidate_id=candidate_id, newest_first=False, limit=500)
    if calc:
        calc = {k: v for k, v in calc.items() if k not in ("task_doc", "structure")}
    return {
        "doc": {k: v for k, v in doc.items() if k not in ("structure",)},
        "calc": calc,
        "attempts": attempts,
        "task_dir": folder,
        "figures": figures,
        "events": events,
    }


def _elapsed(since: Any) -> float | None:
    if not isinstance(since, datetime):
        return None
    return round((datetime.now(UTC) - since).total_seconds(), 1)


def queue(store: Any, campaign: str) -> dict[str, Any]:
    """Running, queued and failed calculations with their attempts, times and worker."""
    hide = {"structure": 0, "fingerprint": 0, "predictions": 0, "provenance": 0, "filters": 0}
    active = store.find_candidates(
        campaign, ["submitted", "running"], projection=hide, limit=PER_QUEUE
    )
    failed = store.find_candidates(
        campaign, "failed", projection=hide, sort=[("updated_at", -1)], limit=PER_QUEUE
    )
    ids = [d["_id"] for d in active + failed]
    calcs = store.calculations_for(ids) if ids else {}
    counts = store.count_by_status(campaign)

    def row(doc: dict[str, Any]) -> dict[str, Any]:
        calc = calcs.get(doc["_id"]) or {}
        handle = doc.get("dft_handle") or {}
        times = doc.get("status_times") or {}
        since = times.get(doc["status"])
        worker = handle.get("backend")
        if handle.get("fw_ids"):
            worker = f"{worker} fw {', '.join(map(str, handle['fw_ids']))}"
        elif handle.get("flow_uuid"):
            worker = f"{worker} flow {str(handle['flow_uuid'])[:8]}"
        return {
            "id": doc["_id"],
            "formula": doc.get("formula"),
            "state": {"submitted": "queued"}.get(doc["status"], doc["status"]),
            "since": since,
            "elapsed_s": _elapsed(since) if doc["status"] != "failed" else None,
            "attempts": calc.get("n_attempts"),
            "wall_time_s": calc.get("wall_time_s"),
            "worker": worker,
            "error": calc.get("error") or (doc.get("last_transition") or {}).get("reason"),
        }

    return {
        "running": [row(d) for d in active if d["status"] == "running"],
        "queued": [row(d) for d in active if d["status"] == "submitted"],
        "failed": [row(d) for d in failed],
        "counts": {
            "running": counts["running"],
            "queued": counts["submitted"],
            "failed": counts["failed"],
            "completed": counts["completed"],
        },
    }


HEAD = "formation_energy_per_atom"


def maes(metrics: dict[str, Any]) -> tuple[Any, Any, Any, list[str]]:
    """(MAE before, MAE after, anchor MAE after, per-head verdicts) from either form of
    ``holdout_metrics``: flat (``old_mae``/``new_mae``, one hold-out split) or per head
    (``policies.finetune.HeadVerdict``: campaign cross-validation plus a fixed anchor slice)."""
    if "old_mae" in metrics or "new_mae" in metrics:
        return metrics.get("old_mae"), metrics.get("new_mae"), None, []
    heads = {h: v for h, v in metrics.items() if isinstance(v, dict) and "campaign_new" in v}
    if not heads:
        return None, None, None, []
    v = heads.get(HEAD) or heads[sorted(heads)[0]]
    verdicts = [
        f"{h}: {'passed' if x.get('passed') else 'failed'}"
        + (f" ({x['reason']})" if x.get("reason") else "")
        for h, x in sorted(heads.items())
    ]
    return (
        (v.get("campaign_old") or {}).get("mae"),
        (v.get("campaign_new") or {}).get("mae"),
        (v.get("anchor_new") or {}).get("mae"),
        verdicts,
    )


def models(store: Any, campaign: str) -> list[dict[str, Any]]:
    out = []
    for m in store.list_models(campaign):
        metrics = m.get("holdout_metrics") or {}
        state = m.get("state") or ("deployed" if m.get("deployed") else "registered")
        verdict = {
            "deployed": "passed the gate: deployed",
            "rejected": "refused by the validation gate",
            "training": "training",
        }.get(state, state)
        before, after, anchor, heads = maes(metrics)
        if heads:
            verdict += "; " + "; ".join(heads)
        out.append(
            {
                "version": m.get("version"),
                "kind": m.get("kind"),
                "state": state,
                "verdict": verdict,
                "deployed": bool(m.get("deployed")),
                "training_size": m.get("training_size"),
                "holdout_size": len(m.get("holdout_ids") or []) or m.get("folds"),
                "old_mae": before,
                "new_mae": after,
                "anchor_mae": anchor,
                "previous": m.get("previous"),
                "created_at": m.get("created_at"),
            }
        )
    return out


def load_replay(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def selections(rows: dict, pool_limit: int = 3000) -> tuple[list[Any], list[Any]]:
    """(a deterministic sample of the pool, every selected candidate) from the digest."""
    pool = sorted((r for r in rows.values() if r.status == "pooled"), key=lambda r: r.id)
    picked = [r for r in rows.values() if r.selected_cycle is not None]
    picked.sort(key=lambda r: (r.selected_cycle, r.id))
    return pool[:pool_limit], picked
