"""The dashboard's plots as plotly.js figure dicts (``{"data": [...], "layout": {...}}``).

Why plain dicts: the browser's plotly.js draws them (served locally, see ``agent.dashboard.app``)
and pages refresh them with ``Plotly.react`` from the JSON endpoints, so the server only has to
produce JSON - no plotting library on the request path. Text that comes from the store
(formulas, names) is HTML-escaped, because plotly.js renders a subset of HTML in labels.
"""

from __future__ import annotations

import html
import math
from typing import Any

COLOURS = {
    "generated": "#636efa",
    "rejected": "#ef553b",
    "pooled": "#00cc96",
    "selected": "#ab63fa",
    "dft_completed": "#19d3f3",
    "dft_failed": "#ff6692",
    "discoveries": "#fecb52",
}


def _layout(title: str, x: str, y: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "xaxis": {"title": {"text": x}},
        "yaxis": {"title": {"text": y}},
        "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
        "height": 340,
        "legend": {"orientation": "h", "y": -0.25},
        **extra,
    }


def _esc(values: list[Any]) -> list[str]:
    return [html.escape(str(v)) if v is not None else "" for v in values]


def cycles_figure(series: dict[str, Any]) -> dict[str, Any]:
    x = series["cycle"]
    traces = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": label,
            "x": x,
            "y": series[key],
            "line": {"color": COLOURS[key]},
        }
        for key, label in (
            ("generated", "generated"),
            ("rejected", "rejected"),
            ("pooled", "pooled"),
            ("selected", "selected"),
            ("dft_completed", "DFT completed"),
            ("dft_failed", "DFT failed"),
        )
    ]
    layout = _layout("Candidates per cycle", "cycle", "candidates")
    layout["xaxis"]["dtick"] = 1
    return {"data": traces, "layout": layout}


def rejections_figure(series: dict[str, Any]) -> dict[str, Any]:
    traces = [
        {"type": "bar", "name": html.escape(reason), "x": series["cycle"], "y": counts}
        for reason, counts in series["rejections"].items()
    ]
    layout = _layout("Rejected, by filter", "cycle", "candidates", barmode="stack")
    layout["xaxis"]["dtick"] = 1
    return {"data": traces, "layout": layout}


def funnel_figure(latest: dict[str, Any] | None, dft_completed: int) -> dict[str, Any]:
    if not latest:
        return {"data": [], "layout": _layout("Funnel of the latest cycle (none yet)", "", "")}
    stages = [
        ("generated", latest.get("generated", 0)),
        ("passed filters", latest.get("pooled", 0)),
        ("selected", latest.get("selected", 0)),
        ("submitted", latest.get("submitted", 0)),
        ("DFT completed", dft_completed),
    ]
    trace = {
        "type": "funnel",
        "y": [s for s, _ in stages],
        "x": [n for _, n in stages],
        "textinfo": "value",
        "marker": {"color": ["#636efa", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3"]},
    }
    layout = _layout(f"Funnel of cycle {latest.get('cycle')}", "candidates", "")
    layout["margin"]["l"] = 110
    return {"data": [trace], "layout": layout}


def parity_figure(completed: list[dict], prop: str) -> dict[str, Any]:
    """Predicted (mean, error bar = the ensemble's std) against DFT, one point per result."""
    xs, ys, errs, text = [], [], [], []
    for calc in completed:
        pred = calc.get("predicted") if prop != "formation_energy_per_atom" else None
        pred = pred or calc.get("predicted_formation_energy") or {}
        if not isinstance(pred, dict):
            pred = {}
        dft = calc.get(prop)
        if isinstance(pred.get("mean"), int | float) and isinstance(dft, int | float):
            xs.append(pred["mean"])
            ys.append(dft)
            errs.append(pred.get("std") or 0.0)
            text.append(f"{calc.get('formula')} ({str(calc['candidate_id'])[:8]})")
    lo = min(xs + ys, default=-1.0)
    hi = max(xs + ys, default=0.0)
    pad = 0.05 * (hi - lo or 1.0)
    mae = sum(abs(a - b) for a, b in zip(xs, ys, strict=True)) / len(xs) if xs else None
    title = f"Predicted vs DFT ({len(xs)} results"
    title += f", MAE {mae:.3f} eV/atom)" if mae is not None else ")"
    traces = [
        {
            "type": "scatter",
            "mode": "markers",
            "name": "results",
            "x": xs,
            "y": ys,
            "text": _esc(text),
            "error_x": {"type": "data", "array": errs, "visible": True},
            "marker": {"size": 8, "color": "#636efa"},
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": "y = x",
            "x": [lo - pad, hi + pad],
            "y": [lo - pad, hi + pad],
            "line": {"dash": "dash", "color": "#888"},
        },
    ]
    layout = _layout(title, f"predicted {prop} (eV/atom)", f"DFT {prop} (eV/atom)")
    layout["meta"] = {"n": len(xs), "mae": mae}
    return {"data": traces, "layout": layout}


def best_figure(best: dict[str, list], prop: str) -> dict[str, Any]:
    trace = {
        "type": "scatter",
        "mode": "lines+markers",
        "line": {"shape": "hv", "color": "#19d3f3"},
        "name": "best so far",
        "x": best["spent"],
        "y": best["best"],
        "text": _esc(best["formula"]),
    }
    layout = _layout("Best DFT value vs DFT calculations spent", "DFT calculations finished", prop)
    layout["xaxis"]["rangemode"] = "tozero"
    return {"data": [trace], "layout": layout}


def generators_figure(yields: list[dict[str, Any]]) -> dict[str, Any]:
    names = _esc([g["generator"] for g in yields])
    traces = [
        {"type": "bar", "name": label, "x": names, "y": [g[key] for g in yields]}
        for key, label in (
            ("candidates", "candidates"),
            ("passed", "passed filters"),
            ("relaxed", "relaxed (DFT)"),
            ("discoveries", "discoveries"),
        )
    ]
    layout = _layout("Yield per generator", "generator", "candidates", barmode="group")
    if max((g["candidates"] for g in yields), default=0) > 1000:  # keep small bars visible
        layout["yaxis"]["type"] = "log"
    return {"data": traces, "layout": layout}


def models_figure(models: list[dict[str, Any]]) -> dict[str, Any]:
    done = [m for m in models if m.get("new_mae") is not None]
    versions = _esc([m["version"] for m in done])
    colour = {"deployed": "#00cc96", "rejected": "#ef553b"}
    traces = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "hold-out MAE before (deployed model)",
            "x": versions,
            "y": [m.get("old_mae") for m in done],
            "line": {"dash": "dot", "color": "#888"},
        },
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "hold-out MAE after (fine-tuned)",
            "x": versions,
            "y": [m.get("new_mae") for m in done],
            "marker": {"size": 11, "color": [colour.get(m.get("state"), "#636efa") for m in done]},
            "text": _esc([m.get("state") for m in done]),
        },
    ]
    layout = _layout("Surrogate versions: hold-out MAE and gate verdict", "version", "eV/atom")
    return {"data": traces, "layout": layout}


def replay_figure(replay: dict[str, Any]) -> dict[str, Any]:
    """Discoveries vs oracle calls per policy: the mean over seeds with a one-std band."""
    traces: list[dict[str, Any]] = []
    for i, (policy, runs) in enumerate(sorted((replay.get("curves") or {}).items())):
        if not runs:
            continue
        n = min(len(r) for r in runs)
        mean = [sum(r[k] for r in runs) / len(runs) for k in range(n)]
        std = [math.sqrt(sum((r[k] - mean[k]) ** 2 for r in runs) / len(runs)) for k in range(n)]
        x = list(range(1, n + 1))
        colour = f"hsl({(i * 360) // 7}, 70%, 45%)"
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "x": x + x[::-1],
                "y": [m + s for m, s in zip(mean, std, strict=True)]
                + [m - s for m, s in zip(mean, std, strict=True)][::-1],
                "fill": "toself",
                "line": {"width": 0},
                "fillcolor": colour.replace("hsl", "hsla").replace(")", ", 0.15)"),
                "hoverinfo": "skip",
                "showlegend": False,
                "name": html.escape(policy) + " ±1 std",
            }
        )
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "x": x,
                "y": [round(m, 3) for m in mean],
                "name": html.escape(policy),
                "line": {"color": colour},
            }
        )
    layout = _layout("Replay benchmark: discoveries vs oracle calls", "oracle calls", "discoveries")
    layout["height"] = 420
    return {"data": traces, "layout": layout}


def selection_figure(pool: list[Any], selected: list[Any], prop: str) -> dict[str, Any]:
    """The policy's picks against the surrogate: predicted mean vs std, picks highlighted."""

    def trace(rows: list[Any], name: str, colour: str, size: int) -> dict[str, Any]:
        return {
            "type": "scatter",
            "mode": "markers",
            "name": name,
            "x": [r.pred_mean for r in rows],
            "y": [r.pred_std for r in rows],
            "text": _esc([f"{r.formula} score {r.score}" for r in rows]),
            "marker": {"size": size, "color": colour, "opacity": 0.8},
        }

    data = [
        trace(pool, f"pooled ({len(pool)} shown)", "#bbbbbb", 5),
        trace(selected, f"selected ({len(selected)})", "#ab63fa", 9),
    ]
    layout = _layout(
        "Selections against the surrogate's predictions",
        f"predicted {prop} (mean)",
        "predicted std (uncertainty)",
    )
    return {"data": data, "layout": layout}
