"""The campaigns list, a campaign's page and its candidates table, as ``Page`` objects.

Why separate from the web framework: each view is a function of the store (read-only) and
the request's parameters, so tests and the page-time benchmark call exactly what a request
runs, and ``agent.dashboard.app`` only maps URLs to views and renders.
"""

from __future__ import annotations

from typing import Any

from agent.dashboard import figures, summary, table
from agent.dashboard.hull_plot import hull_figure
from agent.dashboard.page import Page, cell, fmt, url
from agent.store import STATUSES

STATUS_LABELS = {"submitted": "queued"}


def campaign_nav(name: str) -> list[tuple[str, str]]:
    return [
        ("campaigns", "/"),
        (name, url("campaign", name)),
        ("candidates", url("campaign", name, "candidates")),
        ("DFT queue", url("campaign", name, "queue")),
        ("models", url("campaign", name, "models")),
        ("policies", url("campaign", name, "policies")),
    ]


def campaigns_page(store: Any) -> Page:
    page = Page(
        "Campaigns", api="/api/campaigns", nav=[("campaigns", "/"), ("policies", "/policies")]
    )
    rows = []
    for r in summary.campaigns(store):
        budget = f" / {r['dft_budget']}" if r["dft_budget"] else ""
        best = r["best"]
        rows.append(
            [
                cell(r["name"], url("campaign", r["name"])),
                cell(r["state"], cls="state-" + r["state"].split()[0].strip("?")),
                cell(r["daemon"]),
                cell(r["cycle"]),
                *[cell(r["counts"][s]) for s in STATUSES],
                {"t": f"{r['dft_used']}{budget}"},
                cell(r["discoveries"]),
                cell(
                    None if best is None else f"{best['formula']} {fmt(best['value'])}",
                    None if best is None else url("candidate", best["candidate_id"]),
                ),
                cell(r["model"]),
            ]
        )
    columns = ["campaign", "state", "daemon", "cycle"]
    columns += [STATUS_LABELS.get(s, s) for s in STATUSES]
    columns += ["DFT used / budget", "discoveries", "best (DFT, eV/atom)", "model"]
    page.table("campaigns", None, columns, rows, empty="no campaigns in this store yet")
    page.fields["where"] = store.describe()
    page.text(f"store: {store.describe()}")
    return page


def campaign_page(store: Any, digests: Any, name: str, system: str | None = None) -> Page:
    data = summary.campaign_detail(store, digests, name)
    query = {"system": system} if system else None
    page = Page(name, api=url("api", "campaign", name, query=query), nav=campaign_nav(name))
    if data is None:
        page.status = 404
        page.text(f"no campaign {name!r} in this store")
        return page
    s = data["summary"]
    prop = data["objective"]["property"]
    budget = s["dft_budget"]
    best = s["best"]
    page.cards(
        None,
        [
            ("state", "state", s["state"]),
            ("daemon", "daemon", s["daemon"] or "none"),
            ("cycle", "cycle", s["cycle"]),
            ("phase", "phase", s["phase"] or "-"),
            ("candidates", "candidates", s["total"]),
            (
                "dft_used",
                "DFT used / budget",
                f"{s['dft_used']}" + (f" / {budget}" if budget else ""),
            ),
            ("dft_completed", "DFT completed", data["dft_counts"]["completed"]),
            ("dft_failed", "DFT failed", data["dft_counts"]["failed"]),
            ("dft_running", "DFT running", data["dft_counts"]["running"]),
            ("dft_queued", "DFT queued", data["dft_counts"]["queued"]),
            ("discoveries", "discoveries", s["discoveries"]),
            (
                "best",
                f"best {prop}",
                "-" if best is None else f"{best['formula']} {fmt(best['value'])}",
            ),
            ("model", "model", s["model"] or "-"),
        ],
    )
    if s["error"]:
        page.text(f"failed: {s['error']}", heading="error")
    page.cards(
        "candidates per status",
        [(f"count_{st}", STATUS_LABELS.get(st, st), s["counts"][st]) for st in STATUSES],
    )
    cycles = data["cycles"]
    page.figure("cycles", figures.cycles_figure(cycles))
    page.figure("rejections", figures.rejections_figure(cycles))
    latest = cycles["latest"]
    done_latest = cycles["dft_completed"][-1] if cycles["dft_completed"] else 0
    page.figure("funnel", figures.funnel_figure(latest, done_latest))
    page.figure("best", figures.best_figure(data["best_vs_spent"], prop))
    page.figure("parity", figures.parity_figure(data["completed"], prop))
    hull = hull_figure(data["completed"], system)
    page.figure("hull", {"data": hull["data"], "layout": hull["layout"]})
    if hull["systems"]:
        page.links(
            "hull of another chemical system",
            [
                (f"{sys} ({n})", url("campaign", name, query={"system": sys}))
                for sys, n in hull["systems"][:30]
            ],
        )
    page.figure("generators", figures.generators_figure(data["generators"]))
    page.table(
        "generators",
        "yield per generator",
        ["generator", "candidates", "passed filters", "relaxed (DFT)", "discoveries"],
        [
            [
                cell(
                    g["generator"],
                    url("campaign", name, "candidates", query={"generator": g["generator"]}),
                ),
                cell(g["candidates"]),
                cell(g["passed"]),
                cell(g["relaxed"]),
                cell(g["discoveries"]),
            ]
            for g in data["generators"]
        ],
    )
    best_rows = sorted(
        (c for c in data["completed"] if isinstance(c.get(prop), int | float)),
        key=lambda c: c[prop],
    )[:10]
    page.table(
        "best",
        "best DFT results",
        ["formula", f"DFT {prop}", "predicted", "e above hull", "discovery", "candidate"],
        [
            [
                cell(c.get("formula")),
                cell(c.get(prop)),
                cell((c.get("predicted_formation_energy") or {}).get("mean")),
                cell(c.get("e_above_hull")),
                cell("yes" if c.get("discovery") else ("known" if c.get("known_match") else "no")),
                cell(str(c["candidate_id"])[:12], url("candidate", c["candidate_id"])),
            ]
            for c in best_rows
        ],
    )
    return page


COLUMNS = [
    ("id", None),
    ("status", "status"),
    ("generator", "generator"),
    ("cycle", "cycle"),
    ("formula", "formula"),
    ("sites", "nsites"),
    ("predicted", "predicted"),
    ("sigma", "sigma"),
    ("score", "score"),
    ("DFT", "dft"),
    ("e above hull", None),
    ("rejected by", None),
]


def candidates_page(store: Any, digests: Any, name: str, q: table.Query) -> Page:
    campaign = store.get_campaign(name)
    api = url("api", "campaign", name, "candidates", query=q.params())
    page = Page(f"{name}: candidates", api=api, nav=campaign_nav(name))
    if campaign is None:
        page.status = 404
        page.text(f"no campaign {name!r} in this store")
        return page
    prop = summary.objective_of(campaign)["property"]
    data = table.page(store, digests, name, q, prop)
    page.fields["total"] = str(data["total"])
    page.fields["all"] = str(data["all"])
    page.fields["page"] = f"page {data['page']} of {data['pages']}"
    page.add(
        {
            "kind": "filters",
            "action": url("campaign", name, "candidates"),
            "statuses": list(STATUSES),
            "chosen": q.status,
            "generators": data["generators"],
            "reasons": data["reasons"],
            "q": q,
            "csv": url("campaign", name, "candidates.csv", query=q.params()),
            "cif": url("campaign", name, "candidates.zip", query=q.params()),
        }
    )
    base = url("campaign", name, "candidates")
    links = []
    for _, key in COLUMNS:
        if key is None:
            links.append(None)
            continue
        descending = not q.descending if q.sort == key else True
        links.append(base + "?" + _qs(q.params(sort=key, descending=descending, page=1)))
    rows = [
        [
            cell(r["id"][:12], url("candidate", r["id"])),
            cell(r["status"], cls=f"st-{r['status']}"),
            cell(r["generator"]),
            cell(r["cycle"]),
            cell(r["formula"]),
            cell(r["nsites"]),
            cell(r["predicted"]),
            cell(r["sigma"]),
            cell(r["score"]),
            cell(r["dft"]),
            cell(r["e_above_hull"]),
            cell(r["rejected_by"] or None),
        ]
        for r in data["rows"]
    ]
    page.table(
        "candidates", None, [c for c, _ in COLUMNS], rows, links, empty="no candidate matches"
    )
    pager = []
    if data["page"] > 1:
        pager.append(("previous", base + "?" + _qs(q.params(page=data["page"] - 1))))
    if data["page"] < data["pages"]:
        pager.append(("next", base + "?" + _qs(q.params(page=data["page"] + 1))))
    page.add({"kind": "pager", "items": pager})
    return page


def _qs(params: list[tuple[str, str]]) -> str:
    from urllib.parse import urlencode

    return urlencode(params)
