"""CLI: the voxel representation: round-trip checks and dataset building."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()

SOURCE_HELP = (
    "a perov_5-style CSV(.gz) with a 'cif' column, a folder of CIFs (+ properties.csv), or "
    "matminer:flla_2015 | matminer:elastic_tensor | matminer:dielectric_constant; repeatable"
)


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(1)


def load_structures(sources: list[str], select_cubic: bool, limit: int | None):
    """Records from every source, optionally reduced to cubic conventional cells."""
    from generators.data import NoStructures, load_structures
    from generators.data import select_cubic as select

    records = []
    for source in sources:
        try:
            found, report = load_structures(source)
        except NoStructures as exc:
            raise _fail(str(exc)) from exc
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise _fail(f"{source}: {exc}") from exc
        dropped = sum(report.dropped.values())
        console.print(f"{source}: {report.kept} structures read, {dropped} unreadable")
        records.extend(found)
    if select_cubic:
        n = len(records)
        records, report = select(records)
        console.print(f"cubic selection: kept {report.kept}, dropped {report.dropped}")
        if not records:
            why = ", ".join(f"{k} {v}" for k, v in report.dropped.items())
            raise _fail(f"none of the {n} structure(s) is cubic ({why})")
    return records[:limit] if limit else records


def _rejections(rejected: dict[str, str], shown: int = 3) -> str:
    """'id: reason; id: reason (+ N more)' for the encoder's rejections."""
    items = [f"{sid}: {reason}" for sid, reason in list(rejected.items())[:shown]]
    more = len(rejected) - shown
    return "; ".join(items) + (f" (+ {more} more)" if more > 0 else "")


def run_roundtrip(
    sources: list[str],
    json_path: Path | None = None,
    select_cubic: bool = True,
    limit: int | None = None,
    worst: int = 10,
) -> dict:
    """Ground-truth round trip on real data: print a table, optionally write JSON."""
    import warnings

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from generators.voxel.decode import roundtrip
    from generators.voxel.encode import default_settings

    warnings.filterwarnings("ignore", module="pymatgen")
    records = load_structures(sources, select_cubic, limit)
    if not records:
        raise _fail("no structures to encode")
    settings = default_settings()
    columns = [
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("encode -> decode", total=len(records))
        report = roundtrip(
            [r.structure for r in records],
            [r.source_id for r in records],
            settings,
            progress=lambda done: bar.update(task, completed=done),
        )
    summary = {"sources": sources, "select_cubic": select_cubic, **report.summary(worst)}
    summary["settings"] = settings.model_dump()
    if summary["encoded"] == 0:
        hint = "" if select_cubic else "; without --as-given cubic crystals are converted first"
        raise _fail(
            f"the encoder rejected all {summary['structures']} structure(s): "
            f"{_rejections(summary['rejected'])}{hint}"
        )

    table = Table(title="voxel round trip (encode -> decode of the true species matrix)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    rows = [
        ("structures encoded", f"{summary['encoded']} / {summary['structures']}", ""),
        ("encode structures/s (first pass)", f"{summary['encode_structures_per_s']:.0f}", ">= 200"),
        (
            "encode structures/s (radii cached)",
            f"{summary['encode_warm_structures_per_s']:.0f}",
            "",
        ),
        ("decode structures/s", f"{summary['decode_structures_per_s']:.0f}", ""),
        ("mean EMD (A)", f"{summary['mean_emd_A']:.4f}", "<= 0.05"),
        ("max EMD (A)", f"{summary['max_emd_A']:.4f}", ""),
        ("lattice MAE (A)", f"{summary['lattice_mae_A']:.2e}", "<= 0.02"),
        (
            "exact composition + sites",
            f"{summary['fraction_exact_composition_and_sites']:.4f}",
            ">= 0.99",
        ),
        ("valid (no pair < min_distance)", f"{summary['fraction_valid']:.4f}", ""),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    worst_table = Table(title=f"worst {worst} cases (inexact first, then by EMD)")
    for col in ("id", "formula", "sites true/pred", "EMD (A)", "exact", "valid"):
        worst_table.add_column(col)
    for case in summary["worst_cases"]:
        worst_table.add_row(
            case["id"],
            case["formula"],
            f"{case['n_true']}/{case['n_pred']}",
            f"{case['emd']:.4f}",
            str(case["exact"]),
            str(case["valid"]),
        )
    console.print(worst_table)
    if summary["rejected"]:
        where = " (all in the JSON)" if json_path is not None else ""
        console.print(
            f"rejected by the encoder: {len(summary['rejected'])}{where}: "
            f"{_rejections(summary['rejected'])}"
        )
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(summary, indent=2, default=float))
        console.print(f"wrote {json_path}")
    return summary


def register(app: typer.Typer) -> None:
    """Add the `voxel` group (roundtrip, build) to the main `crystalloop` app."""
    voxel_app = typer.Typer(
        help="The voxel crystal representation (Court et al. 2020): check that decoding "
        "inverts encoding on real data, and write encoded datasets to disk.",
        no_args_is_help=True,
    )

    @voxel_app.command("roundtrip")
    def roundtrip_cmd(
        data: list[str] = typer.Argument(..., help=SOURCE_HELP),
        json_out: Path = typer.Option(None, "--json", help="write the figures to this JSON file"),
        select_cubic: bool = typer.Option(
            True,
            "--select-cubic/--as-given",
            help="convert cubic crystals to conventional cells and drop the rest (needed for "
            "Materials Project data); --as-given lets the encoder reject non-cubic cells",
        ),
        limit: int = typer.Option(None, help="only the first N structures"),
        worst: int = typer.Option(10, help="how many worst cases to list"),
    ) -> None:
        """Encode each structure, decode its true species matrix, and score the result
        (EMD, lattice MAE, exact composition and site count, validity, speed)."""
        run_roundtrip(data, json_out, select_cubic, limit, worst)

    @voxel_app.command("build")
    def build_cmd(
        data: list[str] = typer.Argument(..., help=SOURCE_HELP),
        out: Path = typer.Option(..., "--out", "-o", help="HDF5 file to write (.h5)"),
        property_key: str = typer.Option(
            None,
            "--property",
            help="property a conditional model trains on, e.g. "
            "formation_energy_per_atom, band_gap, bulk_modulus",
        ),
        select_cubic: bool = typer.Option(True, "--select-cubic/--as-given"),
        limit: int = typer.Option(None, help="only the first N structures"),
    ) -> None:
        """Voxelise a dataset into a compressed HDF5 file readable by VoxelDataset."""
        import warnings

        from generators.voxel.dataset import build_dataset
        from generators.voxel.encode import default_settings

        warnings.filterwarnings("ignore", module="pymatgen")
        records = load_structures(data, select_cubic, limit)
        try:
            info = build_dataset(records, out, default_settings(), property_key)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
        console.print(
            f"wrote {info['written']} structures to {info['path']} "
            f"({info['skipped']} skipped, {len(info['species_list'])} elements)"
        )
        if info["skipped"]:
            console.print(f"skipped by the encoder: {_rejections(info['skipped_reasons'])}")

    app.add_typer(voxel_app, name="voxel")
