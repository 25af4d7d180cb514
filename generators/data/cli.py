"""CLI: fetch, read and summarise crystal data sets."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
data_app = typer.Typer(
    help="Fetch and inspect the crystal data sets the models learn from.", no_args_is_help=True
)


@data_app.command("fetch")
def fetch(
    force: bool = typer.Option(False, help="download again even if the files are present"),
) -> None:
    """Download the Materials Project subsets in matminer 0.4.0's sdist (via pip) into the cache."""
    from generators.data import fetch_matminer

    with console.status("pip download matminer==0.4.0 (sdist) ..."):
        try:
            dest = fetch_matminer(force=force)
        except RuntimeError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
    for path in sorted(dest.glob("*.csv.gz")):
        console.print(f"  {path}  ({path.stat().st_size / 1e6:.1f} MB)")


@data_app.command("summary")
def summary(
    source: str = typer.Argument(
        ...,
        help="a perov_5-style CSV(.gz), a CIF file, a folder of CIFs (+ properties.csv), "
        "or matminer:flla_2015 | matminer:elastic_tensor | matminer:dielectric_constant",
    ),
    cubic: bool = typer.Option(False, help="apply select_cubic first and report what it dropped"),
    max_atoms: int = typer.Option(40, help="with --cubic: largest conventional cell kept"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the summary here"),
) -> None:
    """Counts per crystal system, elements and property coverage of a data set."""
    from generators.data import load_structures, select_cubic, summarise

    try:
        records, report = load_structures(source)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    for message in report.messages[:20]:
        console.print(f"[yellow]skipped[/yellow] {message}")
    result = {"source": source, "read": report.read, "unparseable": report.dropped}
    if cubic:
        records, selection = select_cubic(records, max_atoms=max_atoms)
        result["select_cubic"] = {"kept": selection.kept, "dropped": selection.dropped}
    result |= summarise(records)

    table = Table(title=f"{source}: {result['n_records']} structures")
    table.add_column("what")
    table.add_column("count", justify="right")
    for system, n in result["crystal_systems"].items():
        table.add_row(f"crystal system: {system}", str(n))
    for reason, n in result.get("select_cubic", {}).get("dropped", {}).items():
        table.add_row(f"dropped: {reason}", str(n))
    for prop, n in result["property_coverage"].items():
        table.add_row(f"property: {prop}", str(n))
    table.add_row("elements", str(result["n_elements"]))
    console.print(table)
    console.print("elements: " + " ".join(f"{el}({n})" for el, n in result["elements"].items()))
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))


def register(app: typer.Typer) -> None:
    """Add this component's commands to the main `crystalloop` app."""
    app.add_typer(data_app, name="data")
