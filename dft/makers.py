"""jobflow Makers for pw.x. Jobs are small functions over `dft.runner`/`dft.references`, so the
same code runs in-process, in a local worker, or on a FireWorks worker (it only needs the package
installed and CRYSTALLOOP_DFT_* set on that machine).

A candidate's flow: optional CHGNet pre-relaxation -> pw.x relaxation, one reference job per
element (dft.reference_jobs: cached across flows and campaigns) -> formation energy from the
relaxation and the references' outputs. Settings overrides are validated when a Maker or flow
is built, so a misspelt key fails at submission, not hours later in a worker."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from jobflow import Flow, Maker, job
from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

from dft.inputs import Calculation, make_input
from dft.parse import QETaskDocument
from dft.reference_jobs import ElementReferenceMaker, ReferenceDocument
from dft.references import basis_of
from dft.runner import run_pw
from dft.settings import DFTSettings


def _settings(overrides: dict[str, Any]) -> DFTSettings:
    return DFTSettings(**overrides)


def _run_dir(settings: DFTSettings, label: str) -> Any:
    from jobflow import CURRENT_JOB

    uid = CURRENT_JOB.job.uuid if CURRENT_JOB.job is not None else "interactive"
    idx = CURRENT_JOB.job.index if CURRENT_JOB.job is not None else 1
    return settings.runs_dir / f"{label.replace(' ', '_')}-{uid}-{idx}"


@dataclass
class QEStaticMaker(Maker):
    """pw.x scf. `input_overrides` go through the same validation as the defaults."""

    name: str = "qe static"
    calculation: Calculation = "scf"
    input_overrides: dict[str, Any] = field(default_factory=dict)
    settings_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _settings(self.settings_overrides)  # unknown or invalid keys: an error now

    @job(output_schema=QETaskDocument)
    def make(self, structure: Structure) -> QETaskDocument:
        settings = _settings(self.settings_overrides)
        pw_input = make_input(structure, self.calculation, settings, **self.input_overrides)
        return run_pw(
            structure, pw_input, _run_dir(settings, self.name), settings, task_label=self.name
        )


@dataclass
class QERelaxMaker(QEStaticMaker):
    """pw.x vc-relax (default for candidates) or relax (fixed cell)."""

    name: str = "qe relax"
    calculation: Calculation = "vc-relax"


class FormationDocument(BaseModel):
    """What the discovery loop consumes: one relaxed candidate with its formation energy."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    candidate_id: str | None = None
    formula: str
    reduced_formula: str
    structure: Structure
    energy: float
    energy_per_atom: float
    formation_energy_per_atom: float
    anion_correction_per_atom: float = Field(
        0.0, description="MP2020 anion correction, eV/atom (0 for intermetallics and elements)"
    )
    formation_energy_per_atom_corrected: float | None = Field(
        None, description="raw PBE + anion correction: on Materials Project's energy scale"
    )
    e_above_hull_vs_elements: float = Field(
        description="hull from the elemental references only; the agent recomputes it over all "
        "results sharing settings_key"
    )
    settings_key: str = Field(description="equal keys = energies comparable on one hull")
    references: dict[str, float]
    ecutwfc: float
    pressure_kbar: float | None = None
    pressure_ok: bool | None = None
    ionic_steps: int
    prerelax_steps: int | None = None
    wall_time_s: float
    n_attempts: int
    warnings: list[str] = Field(default_factory=list)
    qe_task_dir: str


def settings_key(doc: QETaskDocument, settings: DFTSettings) -> str:
    """Energies are comparable only with the same pseudos, cutoff, smearing and k density."""
    inp = doc.input
    key = {
        "family": doc.pseudo_family,
        "ecutwfc": inp.ecutwfc,
        "ecutrho": inp.ecutrho,
        "smearing": [inp.smearing, inp.degauss],
        "k_density": settings.kpoint_density,
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


@job(output_schema=FormationDocument)
def formation_energy(
    task: QETaskDocument | dict,
    references: dict[str, ReferenceDocument | dict],
    candidate_id: str | None = None,
    prerelax_steps: int | None = None,
    settings_overrides: dict[str, Any] | None = None,
) -> FormationDocument:
    """Formation energy against the reference jobs' outputs (one per element, same basis)."""
    from dft.formation import anion_correction_per_atom, e_above_hull, formation_energy_per_atom

    settings = _settings(settings_overrides or {})
    doc = task if isinstance(task, QETaskDocument) else QETaskDocument.model_validate(task)
    refs = {
        el: r if isinstance(r, ReferenceDocument) else ReferenceDocument.model_validate(r)
        for el, r in references.items()
    }
    missing = sorted(set(doc.elements) - set(refs))
    if missing:
        raise ValueError(f"no reference job for {', '.join(missing)}")
    basis = basis_of(doc.input)
    for el, ref in refs.items():
        if ref.basis != basis:  # energies at different bases must never be mixed
            raise ValueError(f"reference {el} was computed at {ref.basis}, the compound at {basis}")
    ref_e = {el: refs[el].energy_per_atom for el in sorted(doc.elements)}
    comp = doc.structure.composition
    ef = formation_energy_per_atom(comp, doc.energy, ref_e)
    correction = anion_correction_per_atom(doc.structure)
    return FormationDocument(
        candidate_id=candidate_id,
        formula=doc.formula,
        reduced_formula=doc.reduced_formula,
        structure=doc.structure,
        energy=doc.energy,
        energy_per_atom=doc.energy_per_atom,
        formation_energy_per_atom=ef,
        anion_correction_per_atom=correction,
        formation_energy_per_atom_corrected=ef + correction,
        e_above_hull_vs_elements=e_above_hull(comp, doc.energy, [], ref_e),
        settings_key=settings_key(doc, settings),
        references=ref_e,
        ecutwfc=doc.input.ecutwfc,
        pressure_kbar=doc.pressure_kbar,
        pressure_ok=doc.pressure_ok,
        ionic_steps=doc.ionic_steps,
        prerelax_steps=prerelax_steps,
        wall_time_s=doc.wall_time_s,
        n_attempts=len(doc.attempts),
        warnings=doc.warnings,
        qe_task_dir=doc.dir_name,
    )


def reference_jobs(
    structure: Structure,
    calculation: Calculation = "vc-relax",
    input_overrides: dict[str, Any] | None = None,
    settings_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """{element: reference job} at the basis this structure's relaxation will use (the basis
    depends only on its elements, the settings and the overrides: a pre-relaxation keeps it)."""
    settings = _settings(dict(settings_overrides or {}))
    compound = make_input(structure, calculation, settings, **dict(input_overrides or {}))
    maker = ElementReferenceMaker(settings_overrides=dict(settings_overrides or {}))
    elements = sorted({el.symbol for el in structure.composition.elements})
    return {el: maker.make(el, basis_of(compound), siblings=elements) for el in elements}


def strip_site_properties(structure: Structure) -> Structure:
    """A copy without site properties: atomate2's trajectory writer crashes when one (e.g.
    'magmom' or 'forces' from a data set) collides with a calculator result."""
    clean = structure.copy()
    for key in list(clean.site_properties):
        clean.remove_site_property(key)
    return clean


def symmetrized(structure: Structure, symprec: float) -> Structure:
    """The primitive standard cell of `structure` with its sites snapped onto the symmetry
    spglib finds within `symprec` (Angstrom); `structure` itself when spglib fails or the
    result would change the composition.

    Why: a generated or force-field-relaxed cell is a symmetric crystal plus noise of a few
    hundredths of an Angstrom. pw.x then finds no symmetry and integrates the whole Brillouin
    zone - a distorted 5-atom perovskite at 4x4x4 has 36 k-points where the cubic one has 4 -
    and its BFGS never restores the symmetry. Distortions larger than `symprec` are kept."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        out = SpacegroupAnalyzer(structure, symprec=symprec).get_primitive_standard_structure()
    except Exception:  # noqa: BLE001 - spglib fails on some broken cells: leave them as they are
        return structure
    if out.composition.reduced_formula != structure.composition.reduced_formula:
        return structure
    return out


@job
def symmetrize(structure: Structure, symprec: float) -> Structure:
    """`symmetrized` as a job of the flow, so the cell pw.x started from is in the JobStore."""
    return symmetrized(structure, symprec)


def relax_candidate(
    structure: Structure,
    candidate_id: str | None = None,
    prerelax: bool = True,
    fmax: float = 0.05,
    primitive: bool = True,
    check_pseudos: bool = True,
    input_overrides: dict[str, Any] | None = None,
    settings_overrides: dict[str, Any] | None = None,
    calculation: Calculation = "vc-relax",
    symprec: float | None = 0.1,
) -> Flow:
    """Optional CHGNet pre-relaxation -> symmetrization -> pw.x vc-relax (or relax / scf) ->
    formation energy.

    The flow's output is the FormationDocument; every job carries metadata candidate_id.
    `primitive` relaxes the primitive cell (fewer atoms: pw.x cost grows ~N^2-N^3).
    `symprec` (Angstrom; None = off) snaps the cell pw.x starts from onto its symmetry
    (`symmetrized`: far fewer k-points, and pw.x keeps the symmetry while relaxing).
    `check_pseudos` raises MissingPseudoError (every missing element named) now, not in a worker;
    turn it off when only the workers have the pseudopotentials.
    """
    from dft.inputs import validate_structure
    from dft.pseudos import pseudopotentials_for

    validate_structure(structure)
    settings = _settings(dict(settings_overrides or {}))  # unknown keys fail here, not in a worker
    if check_pseudos:
        elements = [el.symbol for el in structure.composition.elements]
        pseudopotentials_for(elements, settings)
    structure = strip_site_properties(structure)
    if primitive:
        structure = structure.get_primitive_structure()
    jobs = []
    start: Any = structure
    steps_ref = None
    if prerelax:
        from atomate2.forcefields.jobs import ForceFieldRelaxMaker

        ff = ForceFieldRelaxMaker(
            force_field_name="CHGNet",
            relax_kwargs={"fmax": fmax, "final_atoms_object_file": None},
            steps=300,
        ).make(structure)
        ff.name = "chgnet prerelax"
        jobs.append(ff)
        start = ff.output.structure
        steps_ref = ff.output.output.n_steps
    if symprec is not None:
        sym = symmetrize(start, symprec)
        sym.name = "symmetrize"
        jobs.append(sym)
        start = sym.output
    relax = QERelaxMaker(
        calculation=calculation,
        input_overrides=dict(input_overrides or {}),
        settings_overrides=dict(settings_overrides or {}),
    ).make(start)
    jobs.append(relax)
    refs = reference_jobs(structure, calculation, input_overrides, settings_overrides)
    jobs.extend(refs.values())
    form = formation_energy(
        relax.output,
        {el: ref.output for el, ref in refs.items()},
        candidate_id=candidate_id,
        prerelax_steps=steps_ref,
        settings_overrides=dict(settings_overrides or {}),
    )
    form.name = "formation energy"
    jobs.append(form)
    flow = Flow(jobs, output=form.output, name=f"relax {candidate_id or structure.formula}")
    if candidate_id is not None:
        flow.update_metadata({"candidate_id": candidate_id})
    return flow
