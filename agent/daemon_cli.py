"""CLI: run, stop and retrain campaigns."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

# log lines name no source file: they are for the user, not a debugger
console = Console(log_path=False)


def _load(config_path: Path):
    from agent.config import CampaignConfig, ConfigError

    try:
        return CampaignConfig.from_yaml(config_path)
    except (ConfigError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _checked_components(config):
    """The campaign's components, every option checked; exit 2 with one line if one is bad
    (before anything is written to the store)."""
    from agent.components import Components
    from agent.daemon import CampaignInvalid, check_campaign

    components = Components(config)
    try:
        with console.status("checking the campaign's generators and models ..."):
            check_campaign(config, components)
    except CampaignInvalid as exc:
        console.print(f"[red]error:[/red] {config.name}: {exc}")
        raise typer.Exit(2) from exc
    return components


def run(
    config_path: Path = typer.Argument(..., help="campaign YAML (`crystalloop init` writes one)"),
    detach: bool = typer.Option(False, "--detach", help="run in the background, log to a file"),
) -> None:
    """Run a discovery campaign until its budget or stopping rule; resumes where it left off.

    Each cycle: generate candidates -> predict -> filter -> select -> submit DFT -> harvest
    results -> update the hull -> retrain when due. Stop with Ctrl-C or `crystalloop stop`;
    a killed daemon resumes from the store on the next `run`.
    """
    config = _load(config_path)
    components = _checked_components(config)
    if detach:
        from agent.daemon import detach as start

        pid, log = start(config_path, config.name)
        console.print(f"campaign [bold]{config.name}[/bold] running as pid {pid}; log: {log}")
        console.print(
            f"watch it with `crystalloop status {config.name} --watch`, "
            f"stop it with `crystalloop stop {config.name}`"
        )
        return
    from agent.daemon import open_store, run_campaign
    from agent.live import LiveProgress
    from agent.loop import CampaignFailed
    from agent.store import LockHeld, StoreUnavailable

    try:
        with LiveProgress(console, config.name, lambda: open_store(config)) as live:
            summary = run_campaign(config, report=live.log, components=components)
    except LockHeld as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(3) from exc
    except StoreUnavailable as exc:
        console.print(f"[red]store unavailable:[/red] {exc}; nothing was lost, run again later")
        raise typer.Exit(4) from exc
    except CampaignFailed as exc:
        details = _write_traceback(config.name, exc)
        console.print(f"[red]error:[/red] {exc}")
        console.print(f"stored as failed; traceback in {details}; `crystalloop run` retries")
        raise typer.Exit(5) from exc
    _print_summary(summary)


def _write_traceback(campaign: str, exc: BaseException) -> Path:
    import traceback

    from agent.daemon import log_path

    path = log_path(campaign).with_name(f"{campaign}-error.log")
    cause = exc.__cause__ or exc
    path.write_text("".join(traceback.format_exception(cause)))
    return path


def _novelty_cell(novelty: str | None) -> str:
    """'new', or 'known mp-5777': the source's id only (the caption names the sources)."""
    if not novelty:
        return "-"
    return novelty if novelty == "new" else f"known {novelty.rsplit(':', 1)[-1]}"


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    from agent.hull import ON_HULL

    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items() if v)
    console.print(
        f"\n[bold]{summary['campaign']}[/bold]: {summary['state']} after cycle {summary['cycle']};"
        f" candidates: {counts}; surrogate: {summary['model'] or 'shipped default'}"
    )
    for m in summary.get("retraining") or []:
        for line in m["lines"]:
            console.print(line, highlight=False)
    if not summary.get("retraining"):
        console.print("retraining: none ran (too few DFT results or retraining disabled)")
    if summary["best"]:
        checked = any(b.get("novelty") for b in summary["best"])
        table = Table(
            title="DFT results, best first (eV/atom)",
            caption="E_f: formation energy, pw.x PBE against elemental references at the same "
            "settings + MP2020 anion correction (Materials Project's scale); E_hull: against "
            + (
                "this campaign's results, the elements and the known phases of "
                "filters.known_sources (their Materials Project formation energies, where "
                "given); known: matches a crystal of them"
                if checked
                else "this campaign's own results and the elements only"
            ),
        )
        columns = ["formula", "generator", "E_f DFT", "E_f pred.", "E_hull"]
        for col in columns + (["relaxed crystal"] if checked else []):
            table.add_column(col)
        for b in summary["best"]:
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            row = [
                b["formula"],
                b.get("generator") or "-",
                fmt(b["formation_energy_per_atom"]),
                fmt(b["predicted"]),
                fmt(b["e_above_hull"]),
            ]
            table.add_row(*row, *([_novelty_cell(b.get("novelty"))] if checked else []))
        console.print(table)
        on_hull = [
            b["formula"]
            for b in summary["best"]
            if b["e_above_hull"] is not None and b["e_above_hull"] < ON_HULL
        ]
        if on_hull:
            console.print(f"on the convex hull of this campaign: {', '.join(on_hull)}")
        else:
            console.print("none of these lies on the campaign's convex hull")
        found = [b["formula"] for b in summary["best"] if b.get("discovery")]
        console.print(
            f"discoveries (new, stable, on objective): {', '.join(found)}"
            if found
            else "no discoveries: nothing new and stable on the objective (agent.hull)"
        )


def stop(
    campaign: str = typer.Argument(..., help="campaign name"),
    uri: str | None = typer.Option(None, help="mongodb:// URI (default: env or embedded store)"),
    database: str | None = typer.Option(None, help="database name"),
) -> None:
    """Stop a running campaign gracefully: it finishes its current step and exits."""
    from agent.daemon import request_stop
    from agent.store import Store

    with Store.connect(uri, database=database) as store:
        try:
            console.print(request_stop(store, campaign))
        except KeyError as exc:
            console.print(f"[red]error:[/red] {exc.args[0]}")
            raise typer.Exit(1) from exc


def retrain(
    campaign: str = typer.Argument(..., help="campaign name"),
    uri: str | None = typer.Option(None, help="mongodb:// URI (default: env or embedded store)"),
    database: str | None = typer.Option(None, help="database name"),
) -> None:
    """Fine-tune the campaign's surrogate on its DFT results now (validation-gated)."""
    from agent.retrain import describe
    from agent.retrain import retrain as do_retrain
    from agent.store import Store

    with Store.connect(uri, database=database) as store:
        n = store.count_calculations(campaign, "completed")
        if n < 2:
            console.print(f"[red]error:[/red] campaign {campaign!r} has {n} DFT results; need >= 2")
            raise typer.Exit(1)
        version = f"manual-{n:05d}"
        store.register_model(
            campaign, version, kind="surrogate", training_size=n, holdout_metrics={},
            state="training",
        )  # fmt: skip
        with console.status(f"fine-tuning on {n} DFT results ...") as status:
            do_retrain(store, campaign, version, progress=status.update)
        for line in describe(store.get_model(f"{campaign}:surrogate:{version}") or {}):
            console.print(line, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("stop")(stop)
    app.command("retrain")(retrain)
