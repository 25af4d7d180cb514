"""Turn a pw.x run into a task document. Convergence flags, version and timings come from pw.x's
XML (its own machine-readable record); structure, forces and stress from ASE's output reader."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

from dft.inputs import PWInput

HARTREE_EV = 27.211386245988
RY_EV = HARTREE_EV / 2


class Attempt(BaseModel):
    """One pw.x execution and what was changed before it."""

    index: int
    directory: str
    returncode: int | None
    status: str  # "ok" or a FailureKind value
    message: str = ""
    correction: dict[str, Any] = Field(default_factory=dict)
    wall_time_s: float = 0.0


class XMLInfo(BaseModel):
    qe_version: str | None = None
    scf_converged: bool | None = None
    n_scf_steps: int | None = None
    opt_converged: bool | None = None
    n_opt_steps: int | None = None
    energy_ev: float | None = None
    wall_time_s: float | None = None


class QETaskDocument(BaseModel):
    """Everything a downstream consumer (formation energy, the agent, retraining) needs."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    task_label: str = "qe"
    calculation: str
    formula: str
    reduced_formula: str
    elements: list[str]
    nsites: int
    input: PWInput
    pseudo_family: str
    pseudopotentials: dict[str, str]
    pseudo_md5: dict[str, str]
    qe_version: str | None = None
    input_structure: Structure
    structure: Structure
    energy: float = Field(description="eV, final total energy (smearing-corrected)")
    energy_per_atom: float
    forces: list[list[float]] | None = None
    stress: list[list[float]] | None = Field(None, description="kbar, pymatgen sign (+=tensile)")
    pressure_kbar: float | None = None
    ionic_steps: int
    scf_converged: bool
    ionic_converged: bool | None = None
    pressure_ok: bool | None = None
    successful: bool
    warnings: list[str] = Field(default_factory=list)
    wall_time_s: float = Field(description="pw.x wall time summed over attempts")
    attempts: list[Attempt]
    dir_name: str

    def model_dump_json_safe(self) -> dict:
        """JSON-ready dict (Structures as dicts) for stores that cannot hold objects."""
        d = self.model_dump(mode="python")
        d["structure"] = self.structure.as_dict()
        d["input_structure"] = self.input_structure.as_dict()
        d["input"] = self.input.model_dump()
        return d


def _text(root: ET.Element, path: str) -> str | None:
    el = root.find(path)
    return el.text.strip() if el is not None and el.text else None


def _bool(v: str | None) -> bool | None:
    return None if v is None else v.strip().lower() == "true"


def parse_xml(path: Path) -> XMLInfo:
    """The few facts we trust the XML for. Missing file -> empty info (crashed runs)."""
    if not path.is_file():
        return XMLInfo()
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return XMLInfo()
    creator = root.find("general_info/creator")
    etot = _text(root, "output/total_energy/etot")
    wall = _text(root, "timing_info/total/wall")
    nscf = _text(root, "output/convergence_info/scf_conv/n_scf_steps")
    nopt = _text(root, "output/convergence_info/opt_conv/n_opt_steps")
    return XMLInfo(
        qe_version=creator.get("VERSION") if creator is not None else None,
        scf_converged=_bool(_text(root, "output/convergence_info/scf_conv/convergence_achieved")),
        n_scf_steps=int(nscf) if nscf else None,
        opt_converged=_bool(_text(root, "output/convergence_info/opt_conv/convergence_achieved")),
        n_opt_steps=int(nopt) if nopt else None,
        energy_ev=float(etot) * HARTREE_EV if etot else None,
        wall_time_s=float(wall) if wall else None,
    )


def read_frames(output: Path) -> list:
    """All ionic frames ASE can read from a pw.x stdout (empty when none completed)."""
    from ase.io.espresso import read_espresso_out

    try:
        with open(output) as fd:
            return list(read_espresso_out(fd, index=slice(None)))
    except Exception:  # noqa: BLE001 - a truncated output simply has no readable frames
        return []


def qe_version_from_stdout(text: str) -> str | None:
    for line in text.splitlines()[:40]:
        if "Program PWSCF" in line:
            return line.split("Program PWSCF")[1].split()[0].lstrip("v.")
    return None
