"""The candidate page, the DFT queue, the models and the policies pages, as ``Page`` objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.dashboard import detail, figures, summary
from agent.dashboard.page import Page, cell, fmt, seconds, url
from agent.dashboard.views import campaign_nav


def candidate_page(store: Any, candidate_id: str) -> Page:
    data = detail.candidate(store, candidate_id)
    page = Page(f"candidate {candidate_id[:12]}", api=url("api", "candidate", candidate_id))
    if data is None:
        page.status = 404
        page.nav = [("campaigns", "/")]
        page.text(f"no candidate {candidate_id!r} in this store")
        return page
    doc, calc = data["doc"], data["calc"] or {}
    page.title = f"{doc.get('formula')} ({candidate_id[:12]})"
    page.nav = campaign_nav(doc["campaign"])
    prov = doc.get("provenance") or {}
    page.cards(
        None,
        [
            ("formula", "formula", doc.get("formula")),
            ("status", "status", doc.get("status")),
            ("generator", "generator", prov.get("generator")),
            ("cycle", "cycle generated", doc.get("cycle")),
            ("selected_cycle", "cycle selected", doc.get("selected_cycle")),
            ("nsites", "sites", doc.get("nsites")),
            ("score", "acquisition score", doc.get("score")),
            ("dft", "DFT formation energy (eV/atom)", calc.get("formation_energy_per_atom")),
            ("e_above_hull", "e above hull (eV/atom)", calc.get("e_above_hull")),
            ("discovery", "discovery", bool(calc.get("discovery")) if calc else None),
        ],
    )
    page.links(
        "downloads",
        [
            ("generated structure (CIF)", url("candidate", candidate_id, "generated.cif")),
            *(
                [("DFT-relaxed structure (CIF)", url("candidate", candidate_id, "relaxed.cif"))]
                if "relaxed" in data["figures"]
                else []
            ),
        ],
    )
    page.add({"kind": "row"})
    page.figure("generated", data["figures"]["generated"])
    if "relaxed" in data["figures"]:
        page.figure("relaxed", data["figures"]["relaxed"])
    else:
        page.text("no DFT-relaxed structure yet", heading="DFT-relaxed")
    page.add({"kind": "endrow"})
    preds = doc.get("predictions") or {}
    page.table(
        "predictions",
        "surrogate predictions",
        ["property", "mean", "sigma", "other"],
        [
            [
                cell(prop),
                cell((p or {}).get("mean") if isinstance(p, dict) else p),
                cell((p or {}).get("std") if isinstance(p, dict) else None),
                cell(
                    ", ".join(
                        f"{k} {fmt(v)}" for k, v in (p or {}).items() if k not in ("mean", "std")
                    )
                    if isinstance(p, dict)
                    else None
                ),
            ]
            for prop, p in sorted(preds.items())
        ],
        empty="no predictions (not screened yet)",
    )
    verdicts = doc.get("filters") or {}
    validity = doc.get("validity") or {}
    page.table(
        "filters",
        "filter verdicts",
        ["filter", "verdict"],
        [[cell(k), cell(str(v))] for k, v in sorted(verdicts.items())]
        + [
            [cell(f"validity: {k}"), cell("pass" if v else "fail")]
            for k, v in sorted(validity.items())
        ],
        empty="passed every filter" if doc.get("status") != "generated" else "not screened yet",
    )
    page.text(json.dumps(prov, indent=1, default=str), heading="provenance", pre=True)
    page.table(
        "dft",
        "DFT calculation",
        [
            "state",
            "E_form (eV/atom)",
            "raw",
            "anion corr.",
            "pressure (kbar)",
            "ionic steps",
            "attempts",
            "wall time",
            "warnings / error",
        ],
        [
            [
                cell(calc.get("state")),
                cell(calc.get("formation_energy_per_atom")),
                cell(calc.get("formation_energy_per_atom_raw")),
                cell(calc.get("anion_correction_per_atom")),
                cell(calc.get("pressure_kbar"), digits=1),
                cell(calc.get("ionic_steps")),
                cell(calc.get("n_attempts")),
                {"t": seconds(calc.get("wall_time_s"))},
                cell("; ".join(calc.get("warnings") or []) or calc.get("error")),
            ]
        ]
        if calc
        else [],
        empty="no DFT calculation",
    )
    attempts = data["attempts"]
    page.table(
        "attempts",
        "pw.x attempts",
        ["#", "status", "message", "corrective action", "wall time"],
        [
            [
                cell(a.get("index")),
                cell(a.get("status")),
                cell(a.get("message") or None),
                cell(json.dumps(a.get("correction")) if a.get("correction") else None),
                {"t": seconds(a.get("wall_time_s"))},
            ]
            for a in attempts
        ],
        empty=(
            f"attempt records not readable here (task directory {data['task_dir']})"
            if data["task_dir"]
            else "no attempts recorded"
        ),
    )
    for a in attempts:
        if a.get("log"):
            page.text(
                a["log"], heading=f"pw.out of attempt {a.get('index')} (last lines)", pre=True
            )
    page.table(
        "events",
        "event history",
        ["time", "kind", "from", "to", "reason"],
        [
            [
                cell(e.get("time")),
                cell(e.get("kind")),
                cell(e.get("from")),
                cell(e.get("to")),
                cell(e.get("reason")),
            ]
            for e in data["events"]
        ],
    )
    return page


def queue_page(store: Any, name: str) -> Page:
    page = Page(
        f"{name}: DFT queue", api=url("api", "campaign", name, "queue"), nav=campaign_nav(name)
    )
    if store.get_campaign(name) is None:
        page.status = 404
        page.text(f"no campaign {name!r} in this store")
        return page
    q = detail.queue(store, name)
    page.cards(None, [(k, k, v) for k, v in q["counts"].items()])
    columns = [
        "candidate",
        "formula",
        "state",
        "since",
        "elapsed",
        "attempts",
        "wall time",
        "worker",
        "error",
    ]
    for key in ("running", "queued", "failed"):
        page.table(
            key,
            key,
            columns,
            [
                [
                    cell(r["id"][:12], url("candidate", r["id"])),
                    cell(r["formula"]),
                    cell(r["state"]),
                    cell(r["since"]),
                    {"t": seconds(r["elapsed_s"])},
                    cell(r["attempts"]),
                    {"t": seconds(r["wall_time_s"])},
                    cell(r["worker"]),
                    cell(r["error"]),
                ]
                for r in q[key]
            ],
            empty=f"none {key}",
        )
    return page


def models_page(store: Any, name: str) -> Page:
    page = Page(
        f"{name}: models", api=url("api", "campaign", name, "models"), nav=campaign_nav(name)
    )
    if store.get_campaign(name) is None:
        page.status = 404
        page.text(f"no campaign {name!r} in this store")
        return page
    models = detail.models(store, name)
    deployed = next((m for m in reversed(models) if m["deployed"]), None)
    page.cards(
        None,
        [
            ("versions", "versions", len(models)),
            ("deployed", "deployed", (deployed or {}).get("version") or "shipped default"),
        ],
    )
    page.figure("models", figures.models_figure(models))
    page.table(
        "models",
        "versions",
        [
            "version",
            "kind",
            "created",
            "training size",
            "hold-out size / folds",
            "MAE before",
            "MAE after",
            "anchor MAE after",
            "gate verdict",
            "deployed",
            "previous",
        ],
        [
            [
                cell(m["version"]),
                cell(m["kind"]),
                cell(m["created_at"]),
                cell(m["training_size"]),
                cell(m["holdout_size"]),
                cell(m["old_mae"]),
                cell(m["new_mae"]),
                cell(m["anchor_mae"]),
                cell(m["verdict"], cls=f"st-{m['state']}"),
                cell(m["deployed"]),
                cell(m["previous"]),
            ]
            for m in models
        ],
        empty="no model versions registered (the shipped surrogate is in use)",
    )
    return page


def policies_page(
    store: Any | None, digests: Any, replay_path: Path | None, name: str | None
) -> Page:
    api = url("api", "campaign", name, "policies") if name else "/api/policies"
    page = Page(f"{name}: policies" if name else "Policies", api=api)
    page.nav = campaign_nav(name) if name else [("campaigns", "/"), ("policies", "/policies")]
    replay = detail.load_replay(replay_path)
    if name and store is not None:
        campaign = store.get_campaign(name)
        if campaign is None:
            page.status = 404
            page.text(f"no campaign {name!r} in this store")
            return page
        config = campaign.get("config") or {}
        policy = (config.get("acquisition") or {}).get("policy", "-")
        prop = summary.objective_of(campaign)["property"]
        pool, picked = detail.selections(digests.get(store, name, prop).fresh())
        page.cards(
            None,
            [
                ("policy", "this campaign's policy", policy),
                ("selected", "selected so far", len(picked)),
            ],
        )
        page.figure("selection", figures.selection_figure(pool, picked, prop))
    if replay is None:
        page.text(f"no replay benchmark results at {replay_path} (run benchmarks/replay.py)")
        return page
    page.figure("replay", figures.replay_figure(replay), wide=True)
    page.table(
        "replay",
        f"replay benchmark: {replay.get('pool_size')} crystals, {replay.get('n_hits')} hits",
        ["policy", "oracle calls", "discoveries (mean)", "std", "calls per discovery", "vs random"],
        [
            [
                cell(p),
                cell(s.get("oracle_calls")),
                cell(s.get("discoveries_mean"), digits=1),
                cell(s.get("discoveries_std"), digits=1),
                cell(s.get("oracle_calls_per_discovery"), digits=2),
                cell(s.get("enhancement_factor_vs_random"), digits=2),
            ]
            for p, s in sorted(
                (replay.get("summary") or {}).items(),
                key=lambda kv: -kv[1].get("discoveries_mean", 0),
            )
        ],
    )
    return page
