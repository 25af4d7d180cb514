"""Keep the crystals the voxel representation can hold: cubic cells of few atoms."""

from __future__ import annotations

import numpy as np
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from generators.data.records import ReadReport, Record


def has_cubic_metric(lattice, length_tol: float = 1e-3, angle_tol: float = 0.1) -> bool:
    """a = b = c (relative tol) and all angles 90 degrees: the box itself is a cube."""
    a, b, c = lattice.abc
    return max(a, b, c) - min(a, b, c) <= length_tol * max(a, b, c) and bool(
        np.all(np.abs(np.asarray(lattice.angles) - 90.0) <= angle_tol)
    )


def select_cubic(
    records: list[Record], max_atoms: int = 40, symprec: float = 0.1
) -> tuple[list[Record], ReadReport]:
    """Keep cubic crystals as conventional standard cells with at most `max_atoms` sites.

    A crystal whose space group is cubic is converted to its conventional standard cell. A cell
    that is already a cube but whose sites break the symmetry (the distorted perovskites of
    perov_5) is kept as given: the voxel grid needs a cubic box, not a cubic space group.
    """
    report = ReadReport()
    kept: list[Record] = []
    for record in records:
        report.read += 1
        structure = record.structure
        try:
            analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
            system = analyzer.get_crystal_system()
        except Exception as exc:  # noqa: BLE001 - spglib failures are a per-record problem
            report.drop("symmetry failed", f"{record.source_id}: symmetry analysis failed: {exc}")
            continue
        if system == "cubic":
            structure = analyzer.get_conventional_standard_structure()
        elif not has_cubic_metric(structure.lattice):
            report.drop(f"not cubic ({system})")
            continue
        if len(structure) > max_atoms:
            report.drop(f"more than {max_atoms} atoms in the cubic cell")
            continue
        if not structure.is_ordered:
            report.drop("disordered sites")
            continue
        kept.append(type(record)(structure, record.properties, record.source_id, record.source))
        report.kept += 1
    return kept, report
