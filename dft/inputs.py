"""pw.x input sets. Every value that reaches the namelist passes a typed, bounded pydantic field:
no user string is ever pasted into the input file. Writing is ASE's job, not ours."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pymatgen.core import Element, Structure

from dft.settings import DFTSettings

Calculation = Literal["scf", "relax", "vc-relax"]

# Elements that get an initial moment (MP's convention: open d/f shells that often order).
MAGNETIC_ELEMENTS = frozenset(
    "V Cr Mn Fe Co Ni Mo W Ru Rh Os Ir Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb U Np Pu".split()
)
MAX_ATOMS = 200
MIN_DISTANCE = 0.5  # Angstrom: closer atoms are a broken structure, not a calculation


class InvalidInputError(ValueError):
    """A structure or parameter pw.x must never see."""


class PWInput(BaseModel):
    """The complete, validated set of knobs we allow on pw.x."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    calculation: Calculation = "vc-relax"
    ecutwfc: float = Field(gt=5, le=400)
    ecutrho: float = Field(gt=20, le=3200)
    kpts: tuple[int, int, int]
    koffset: tuple[int, int, int] = (0, 0, 0)
    gamma_only: bool = Field(
        False,
        description="K_POINTS gamma: real wavefunctions, about twice as fast as a 1x1x1 grid; "
        "for molecules in a box (kpts must be 1 1 1, no offset)",
    )
    smearing: Literal["mv", "gaussian", "fd", "mp"] = "mv"
    degauss: float = Field(0.01, gt=0, le=0.2)
    nspin: Literal[1, 2] = 1
    starting_magnetization: dict[str, float] = Field(default_factory=dict)
    mixing_beta: float = Field(0.7, ge=0.01, le=1.0)
    electron_maxstep: int = Field(100, ge=1, le=2000)
    conv_thr: float = Field(1e-8, ge=1e-14, le=1e-2)
    nstep: int = Field(50, ge=1, le=1000)
    forc_conv_thr: float = Field(1e-3, gt=0, le=1.0)
    etot_conv_thr: float = Field(1e-4, gt=0, le=1.0)
    press_conv_thr: float = Field(0.5, gt=0, le=100)
    max_seconds: float = Field(1e7, gt=0)
    disk_io: Literal["low", "none"] = "low"

    @field_validator("kpts")
    @classmethod
    def _kpts(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(k < 1 or k > 64 for k in v):
            raise ValueError("k-point grid entries must be 1..64")
        return v

    @model_validator(mode="after")
    def _gamma(self) -> PWInput:
        if self.gamma_only and (self.kpts != (1, 1, 1) or any(self.koffset)):
            raise ValueError("gamma_only needs kpts (1, 1, 1) without offset")
        return self

    @field_validator("koffset")
    @classmethod
    def _koffset(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(k not in (0, 1) for k in v):
            raise ValueError("k-point offsets must be 0 or 1")
        return v

    @field_validator("starting_magnetization")
    @classmethod
    def _mag(cls, v: dict[str, float]) -> dict[str, float]:
        for el, m in v.items():
            Element(el)  # raises on anything that is not an element symbol
            if not -1.0 <= m <= 1.0 or math.isnan(m):
                raise ValueError(f"starting_magnetization for {el} must be in [-1, 1]")
        return v

    def input_data(self, prefix: str = "pwscf") -> dict[str, dict]:
        """Nested namelist dict for ase.io.espresso.write_espresso_in."""
        control = {
            "calculation": self.calculation,
            "prefix": prefix,
            "outdir": "./out",
            "pseudo_dir": ".",
            "tprnfor": True,
            "tstress": True,
            "disk_io": self.disk_io,
            "max_seconds": self.max_seconds,
            "etot_conv_thr": self.etot_conv_thr,
            "forc_conv_thr": self.forc_conv_thr,
        }
        if self.calculation != "scf":
            control["nstep"] = self.nstep
        system = {
            "ecutwfc": self.ecutwfc,
            "ecutrho": self.ecutrho,
            "occupations": "smearing",
            "smearing": self.smearing,
            "degauss": self.degauss,
            "nspin": self.nspin,
        }
        electrons = {
            "mixing_beta": self.mixing_beta,
            "electron_maxstep": self.electron_maxstep,
            "conv_thr": self.conv_thr,
        }
        data = {"control": control, "system": system, "electrons": electrons}
        if self.calculation in ("relax", "vc-relax"):
            data["ions"] = {"ion_dynamics": "bfgs"}
        if self.calculation == "vc-relax":
            data["cell"] = {"cell_dynamics": "bfgs", "press_conv_thr": self.press_conv_thr}
        return data


def validate_structure(structure: Structure) -> None:
    """Refuse structures that would crash pw.x or waste hours (NaN, overlapping atoms, ...)."""
    if not isinstance(structure, Structure):
        raise InvalidInputError(f"expected a pymatgen Structure, got {type(structure).__name__}")
    n = len(structure)
    if n == 0 or n > MAX_ATOMS:
        raise InvalidInputError(f"structure has {n} atoms; allowed 1..{MAX_ATOMS}")
    if not structure.is_ordered:
        raise InvalidInputError("disordered structure (partial occupancies) cannot be computed")
    lat = structure.lattice.matrix
    if not np.all(np.isfinite(lat)) or not np.all(np.isfinite(structure.frac_coords)):
        raise InvalidInputError("structure has non-finite lattice or coordinates")
    if structure.volume < 1.0:
        raise InvalidInputError(f"cell volume {structure.volume:.3g} A^3 is unphysical")
    for el in structure.composition.elements:
        if not isinstance(el, Element) or el.Z > 94:
            raise InvalidInputError(f"unsupported species {el}")
    if n > 1:
        dm = structure.distance_matrix + np.eye(n) * 1e3
        dmin = float(dm.min())
        if dmin < MIN_DISTANCE:
            raise InvalidInputError(f"atoms {dmin:.3f} A apart (< {MIN_DISTANCE} A)")
    elif min(structure.lattice.abc) < MIN_DISTANCE:
        raise InvalidInputError("lattice vector shorter than the minimum distance")


def kpoint_grid(structure: Structure, density: float) -> tuple[int, int, int]:
    """Monkhorst-Pack grid from a k-points-per-reciprocal-atom density (pymatgen's rule)."""
    from pymatgen.io.vasp.inputs import Kpoints

    kp = Kpoints.automatic_density(structure, density)
    return tuple(int(k) for k in kp.kpts[0])  # type: ignore[return-value]


def is_molecule_in_box(structure: Structure) -> bool:
    """A few atoms in a big box (reference gases): Gamma-only is right there."""
    return min(structure.lattice.abc) > 7.0 and len(structure) <= 4


def make_input(
    structure: Structure,
    calculation: Calculation = "vc-relax",
    settings: DFTSettings | None = None,
    **overrides,
) -> PWInput:
    """Input set from settings + pseudo hints; overrides are validated like everything else."""
    from dft.pseudos import recommended_ecutwfc

    settings = settings or DFTSettings()
    validate_structure(structure)
    symbols = [el.symbol for el in structure.composition.elements]
    ecut = recommended_ecutwfc(symbols, settings)
    magnetic = {s: 0.5 for s in symbols if s in MAGNETIC_ELEMENTS}
    kpts = (1, 1, 1) if is_molecule_in_box(structure) else None
    fields: dict = {
        "calculation": calculation,
        "ecutwfc": ecut,
        "ecutrho": settings.ecutrho_factor * ecut,
        "kpts": kpts or kpoint_grid(structure, settings.kpoint_density),
        "gamma_only": kpts is not None,
        "smearing": settings.smearing,
        "degauss": settings.degauss,
        "nspin": 2 if magnetic else 1,
        "starting_magnetization": magnetic,
        "max_seconds": max(settings.walltime_s - 60.0, 0.9 * settings.walltime_s),
    }
    fields.update(overrides)
    if "ecutwfc" in overrides and "ecutrho" not in overrides:
        fields["ecutrho"] = settings.ecutrho_factor * fields["ecutwfc"]
    try:
        return PWInput(**fields)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(str(exc)) from exc


def write_input(
    path: Path,
    structure: Structure,
    pw_input: PWInput,
    pseudopotentials: dict[str, str],
    pseudo_dir: Path,
    prefix: str = "pwscf",
) -> None:
    """Write pw.x input with ASE; pseudo_dir is absolute so the run directory can be anywhere."""
    from ase.io.espresso import write_espresso_in
    from pymatgen.io.ase import AseAtomsAdaptor

    validate_structure(structure)
    atoms = AseAtomsAdaptor.get_atoms(structure)
    for key in ("magmom", "initial_magmoms"):
        if key in atoms.arrays:
            del atoms.arrays[key]
    if pw_input.nspin == 2:
        moms = [pw_input.starting_magnetization.get(s, 0.0) for s in atoms.get_chemical_symbols()]
        atoms.set_initial_magnetic_moments(moms)
    data = pw_input.input_data(prefix)
    data["control"]["pseudo_dir"] = str(Path(pseudo_dir).resolve())
    with open(path, "w") as fd:
        write_espresso_in(
            fd,
            atoms,
            input_data=data,
            pseudopotentials=pseudopotentials,
            kpts=None if pw_input.gamma_only else pw_input.kpts,  # ASE: None -> K_POINTS gamma
            koffset=pw_input.koffset,
        )
