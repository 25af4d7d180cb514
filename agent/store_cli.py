"""CLI: `crystalloop init | status | candidates` - write a campaign file, read the store.

These commands only read the store (never the daemon's memory), so they show the same truth
whether a daemon runs, crashed or finished, on this machine or against a shared MongoDB.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()

URI_HELP = "mongodb:// URI of the store (default: $CRYSTALLOOP_MONGO_URI, else the embedded store)"
DB_HELP = "database name (default: crystalloop or $CRYSTALLOOP_STORE_DATABASE)"


def _open_store(uri: str | None, database: str | None, must_exist: bool = True) -> Any:
    """Connect, or exit with one line; an embedded store that does not exist yet is not
    created by a read-only command."""
    from agent.store import Store, StoreSettings, StoreUnavailable

    settings = StoreSettings()
    if not (uri or settings.uri):
        db_file = Path(settings.path) / f"{database or settings.database}.sqlite"
        if must_exist and not db_file.exists():
            console.print(
                f"no store yet at {db_file} - run a campaign first (crystalloop run FILE.yaml)"
            )
            raise typer.Exit(0)
    try:
        return Store.connect(
            uri, database, settings=settings.model_copy(update={"retry_seconds": 10})
        )
    except (ValueError, StoreUnavailable) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def init(
    path: Path = typer.Argument(Path("campaign.yaml"), help="where to write the example"),
    name: str | None = typer.Option(None, help="campaign name to put in the file"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write a commented example campaign file to edit, then `crystalloop run PATH`."""
    from agent.config import TEMPLATE, CampaignConfig, ConfigError

    if path.exists() and not force:
        console.print(f"[red]error:[/red] {path} exists; use --force to overwrite it")
        raise typer.Exit(1)
    text = TEMPLATE.read_text()
    if name is not None:
        text = text.replace("name: my-campaign ", f"name: {name} ", 1)
        try:
            CampaignConfig.from_dict({"name": name})
        except ConfigError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    console.print(f"wrote {path} - edit it, then: crystalloop run {path}")


def _campaign_summary(store: Any, campaign: dict[str, Any]) -> dict[str, Any]:
    name = campaign["_id"]
    counts = store.count_by_status(name)
    best = store.best_materials(name, "formation_energy_per_atom", limit=5)
    formulas = {}
    if best:
        ids = [b["candidate_id"] for b in best]
        formulas = {
            d["_id"]: d
            for d in store.find_candidates(
                name, extra={"_id": {"$in": ids}}, projection=["formula", "predictions"]
            )
        }
    model = store.deployed_model(name)
    lock = store.lock_holder(name)
    config = campaign.get("config") or {}
    return {
        "campaign": name,
        "state": campaign.get("state"),
        "error": campaign.get("error"),
        "cycle": campaign.get("cycle", 0),
        "counts": counts,
        "dft": {
            "queued": counts.get("submitted", 0),
            "running": counts.get("running", 0),
            "completed": counts.get("completed", 0),
            "failed": counts.get("failed", 0),
            "budget": (config.get("budgets") or {}).get("max_dft_calculations"),
        },
        "best": [
            {
                "candidate_id": b["candidate_id"],
                "formula": b.get("formula") or formulas.get(b["candidate_id"], {}).get("formula"),
                "formation_energy_per_atom": b.get("formation_energy_per_atom"),
                "e_above_hull": b.get("e_above_hull"),
                "discovery": bool(b.get("discovery")),  # agent.hull.is_discovery's verdict
                "known_match": b.get("known_match"),
                "predicted": (
                    (formulas.get(b["candidate_id"], {}).get("predictions") or {}).get(
                        "formation_energy_per_atom", {}
                    )
                    or {}
                ).get("mean"),
            }
            for b in best
        ],
        "model": (model or {}).get("version"),
        "daemon": (lock or {}).get("owner"),
        "daemon_until": str(lock["expires_at"]) if lock else None,
    }


def status(
    campaign: str | None = typer.Argument(None, help="one campaign (default: all)"),
    uri: str | None = typer.Option(None, help=URI_HELP),
    database: str | None = typer.Option(None, help=DB_HELP),
    json_out: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    watch: bool = typer.Option(
        False,
        "--watch",
        "-w",
        help="follow one running campaign live (phase, funnel, each pw.x job) until its "
        "daemon stops; waits briefly for one just started with --detach",
    ),
) -> None:
    """Show each campaign's progress, read from the store."""
    if watch and (campaign is None or json_out):
        console.print("[red]error:[/red] --watch follows one campaign: give its name, no --json")
        raise typer.Exit(2)
    store = _open_store(uri, database, must_exist=not watch)
    with store:
        if campaign is not None:
            doc = store.get_campaign(campaign)
            if doc is None and watch:
                doc = _wait_for_campaign(store, campaign)
            if doc is None:
                known = ", ".join(c["_id"] for c in store.list_campaigns()) or "none"
                console.print(f"[red]error:[/red] no campaign {campaign!r} (known: {known})")
                raise typer.Exit(1)
            campaigns = [doc]
        else:
            campaigns = store.list_campaigns()
        if watch:
            from agent.live import watch as follow

            try:
                follow(store, campaign, console)
            except KeyboardInterrupt:
                return
            campaigns = [store.get_campaign(campaign)]
        summaries = [_campaign_summary(store, c) for c in campaigns]
        where = store.describe()
    if json_out:
        print(json.dumps(summaries, indent=2, default=str))
        return
    if not summaries:
        console.print(f"no campaigns in {where}")
        return
    console.print(f"[dim]{where}[/dim]")
    for s in summaries:
        _print_status(s)


def _wait_for_campaign(store: Any, name: str, seconds: float = 30.0) -> dict | None:
    """A campaign started with --detach appears once its daemon has checked its settings."""
    import time

    deadline = time.monotonic() + seconds
    with console.status(f"waiting for campaign {name!r} to start ..."):
        while time.monotonic() < deadline:
            doc = store.get_campaign(name)
            if doc is not None:
                return doc
            time.sleep(1.0)
    return None


# status headers, short enough for eight columns in 80; the legend spells them out
STATUS_ABBREVIATIONS = {
    "generated": "gen",
    "rejected": "rej",
    "pooled": "pool",
    "selected": "sel",
    "submitted": "queued",
    "running": "run",
    "completed": "done",
    "failed": "fail",
}


def _print_status(s: dict[str, Any]) -> None:
    from rich import box

    from agent.store import STATUSES

    title = f"{s['campaign']}  (cycle {s['cycle']}, {s['state']})"
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for st in STATUSES:
        table.add_column(STATUS_ABBREVIATIONS[st], justify="right")
    table.add_row(*(str(s["counts"][st]) for st in STATUSES))
    console.print(table)
    console.print(
        "[dim]"
        + ", ".join(f"{STATUS_ABBREVIATIONS[st]} = {st}" for st in STATUSES)
        + " (candidates)[/dim]"
    )
    if s.get("error"):
        console.print(f"[red]failed:[/red] {s['error']}")
    dft = s["dft"]
    budget = f" of {dft['budget']}" if dft["budget"] else ""
    console.print(
        f"DFT: {dft['queued']} queued, {dft['running']} running, "
        f"{dft['completed']} completed{budget}, {dft['failed']} failed"
    )
    console.print(f"model: {s['model'] or '-'}   daemon: {s['daemon'] or 'none'}")
    if s["best"]:
        best = Table(title="best so far (DFT, eV/atom)", box=box.SIMPLE_HEAD, title_justify="left")
        for col in ("formula", "E_form", "predicted", "E_hull", "discovery", "candidate"):
            best.add_column(col, justify="left" if col in ("formula", "candidate") else "right")
        for b in s["best"]:
            best.add_row(
                b["formula"] or "?",
                _fmt(b["formation_energy_per_atom"]),
                _fmt(b["predicted"]),
                _fmt(b["e_above_hull"]),
                "yes" if b.get("discovery") else ("known" if b.get("known_match") else "no"),
                b["candidate_id"][:12],
            )
        console.print(best)
        console.print(
            "discovery: new against filters.known_sources, below the elements and within "
            "objective.hull_tolerance of the campaign's hull"
        )


def _flatten(doc: dict[str, Any], calc: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": doc["_id"],
        "campaign": doc["campaign"],
        "cycle": doc.get("cycle"),
        "status": doc.get("status"),
        "formula": doc.get("formula"),
        "nsites": doc.get("nsites"),
        "fingerprint": doc.get("fingerprint"),
        "generator": (doc.get("provenance") or {}).get("generator"),
        "selected_cycle": doc.get("selected_cycle"),
        "score": doc.get("score"),
    }
    for prop, pred in sorted((doc.get("predictions") or {}).items()):
        if isinstance(pred, dict):
            row[f"pred_{prop}_mean"] = pred.get("mean")
            row[f"pred_{prop}_std"] = pred.get("std")
        else:
            row[f"pred_{prop}"] = pred
    row["dft_formation_energy_per_atom"] = (calc or {}).get("formation_energy_per_atom")
    row["dft_e_above_hull"] = (calc or {}).get("e_above_hull")
    row["filters"] = json.dumps(doc.get("filters") or {}, default=str)
    return row


def candidates(
    campaign: str = typer.Argument(..., help="campaign name"),
    status_: list[str] = typer.Option(
        [], "--status", "-s", help="only these statuses (repeat the option for several)"
    ),
    cycle: int | None = typer.Option(None, help="only this cycle"),
    limit: int = typer.Option(20, help="rows to show/export; 0 = all"),
    sort: str = typer.Option(
        "-created_at", help="sort field, '-' prefix for descending (e.g. -score, formula)"
    ),
    export_cif: Path | None = typer.Option(None, help="write one CIF per candidate here"),
    export_csv: Path | None = typer.Option(None, help="write the listed candidates as CSV"),
    uri: str | None = typer.Option(None, help=URI_HELP),
    database: str | None = typer.Option(None, help=DB_HELP),
) -> None:
    """List, filter and export a campaign's candidates."""
    from agent.store import STATUSES

    bad = [s for s in status_ if s not in STATUSES]
    if bad:
        raise typer.BadParameter(f"unknown status {bad}; choose from {', '.join(STATUSES)}")
    field = sort.lstrip("-")
    direction = -1 if sort.startswith("-") else 1
    store = _open_store(uri, database)
    with store:
        if store.get_campaign(campaign) is None and not store.find_candidates(campaign, limit=1):
            console.print(f"[red]error:[/red] no campaign {campaign!r}")
            raise typer.Exit(1)
        docs = store.find_candidates(
            campaign,
            status_ or None,
            cycle=cycle,
            limit=limit,
            sort=[(field, direction), ("_id", 1)],
        )
        calcs = store.calculations_for(d["_id"] for d in docs)
    rows = [_flatten(d, calcs.get(d["_id"])) for d in docs]
    _print_candidates(campaign, rows)
    if export_csv is not None:
        import pandas as pd

        export_csv.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(export_csv, index=False)
        console.print(f"wrote {len(rows)} rows to {export_csv}")
    if export_cif is not None:
        written = _export_cifs(docs, calcs, export_cif)
        console.print(f"wrote {written} CIF file(s) to {export_cif}")


# generator names as the candidates table shows them (a legend under it spells them out)
GENERATOR_ABBREVIATIONS = {"voxel-vae": "vae", "dataset": "data", "fingerprint": "fp"}


def _print_candidates(campaign: str, rows: list[dict[str, Any]]) -> None:
    """One row per candidate in 80 columns: where it came from (generator, the cycle that
    generated it, the cycle that selected it), its status and its energies (eV/atom)."""
    from rich import box

    table = Table(
        title=f"{campaign}: {len(rows)} candidate(s)", box=box.SIMPLE_HEAD, title_justify="left"
    )
    table.add_column("id", no_wrap=True)
    table.add_column("gen")
    table.add_column("cyc", justify="right")
    table.add_column("sel", justify="right")
    table.add_column("status")
    table.add_column("formula", overflow="fold")
    for col in ("score", "pred", "DFT"):
        table.add_column(col, justify="right", no_wrap=True)
    used = set()
    for row in rows:
        generator = row["generator"] or "-"
        short = GENERATOR_ABBREVIATIONS.get(generator, generator)
        used.add((short, generator))
        table.add_row(
            row["id"][:8],
            short,
            _fmt(row["cycle"]),
            _fmt(row["selected_cycle"]),
            row["status"],
            row["formula"],
            _fmt(row["score"]),
            _fmt(row.get("pred_formation_energy_per_atom_mean")),
            _fmt(row["dft_formation_energy_per_atom"]),
        )
    console.print(table)
    legend = [f"{s} = {g}" for s, g in sorted(used) if s != g]
    console.print(
        "[dim]gen: generator"
        + (f" ({', '.join(legend)})" if legend else "")
        + "; cyc: cycle generated; sel: cycle selected; pred, DFT: formation energy "
        "(eV/atom)[/dim]"
    )


def _export_cifs(docs: list[dict], calcs: dict[str, dict], folder: Path) -> int:
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifWriter

    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for doc in docs:
        stem = f"{doc.get('formula', 'X')}_{doc['_id'][:12]}"
        CifWriter(Structure.from_dict(doc["structure"])).write_file(folder / f"{stem}.cif")
        written += 1
        calc = calcs.get(doc["_id"]) or {}
        final = calc.get("final_structure") or calc.get("structure")
        if isinstance(final, dict) and "lattice" in final:
            CifWriter(Structure.from_dict(final)).write_file(folder / f"{stem}_relaxed.cif")
            written += 1
    return written


STATUS_HELP = (
    "Per campaign: cycle, candidates per status, DFT queued/running/completed against the "
    "budget, the best materials so far (lowest DFT formation energy, with the prediction and "
    "energy above hull), the deployed model version and which daemon drives it. Reads the "
    "store only, so it works while a daemon runs, after a crash, or against a shared MongoDB."
)
CANDIDATES_HELP = (
    "List a campaign's candidates (newest first by default), filter them by status or cycle, "
    "and export them: --export-csv writes predictions, filter verdicts and DFT results; "
    "--export-cif writes one CIF per candidate plus the DFT-relaxed structure where known."
)


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("status", help=STATUS_HELP)(status)
    app.command("candidates", help=CANDIDATES_HELP)(candidates)
