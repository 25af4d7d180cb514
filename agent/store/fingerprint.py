"""A canonical, cheap dedupe key for a crystal: formula + space group + occupied site types.

Why this key: the store must refuse a second copy of a structure in one campaign *atomically*,
which needs a string a unique index can hold. The key follows StructureMatcher's defaults
(``scale=True``, ``primitive_cell=True``): it ignores volume, cell choice, origin and site order.

    "<reduced formula>|<space group number>|<sorted element:multiplicity:site-symmetry list>"

Site-symmetry symbols (not Wyckoff letters) are used because letters depend on the origin
choice: in Pm-3m, ABO3 with A at the origin puts O on 3c, with B at the origin on 3d - the same
crystal. Multiplicities are per primitive cell, so supercells key like their primitive cell.

Limits (documented so callers know when to run StructureMatcher):
- two *different* structures with equal formula, space group and site types but different free
  coordinates (e.g. two tilt magnitudes of one tilt system) share a key - a false duplicate;
  the filters compare such collisions with StructureMatcher before trusting the key;
- a structure within ``symprec`` of a higher symmetry keys as that higher symmetry, so a
  slightly distorted cell and its ideal parent collide (what StructureMatcher would also say
  at its default tolerances, mostly), while a distortion just above ``symprec`` does not;
- disordered (partially occupied) structures are keyed by composition only, with group 0.
"""

from __future__ import annotations

import warnings
from collections import Counter

from pymatgen.core import Structure


def fingerprint(structure: Structure, symprec: float = 0.1, angle_tolerance: float = 5.0) -> str:
    """The dedupe key of ``structure`` (see the module docstring for what it can't tell apart)."""
    formula = structure.composition.reduced_formula
    if not structure.is_ordered:
        return f"{formula}|0|disordered"
    import spglib

    cell = (
        structure.lattice.matrix,
        structure.frac_coords,
        [site.specie.Z for site in structure],
    )
    try:
        with warnings.catch_warnings():  # spglib 2.5 warns about its own error-handling switch
            warnings.simplefilter("ignore", DeprecationWarning)
            data = spglib.get_symmetry_dataset(
                cell, symprec=symprec, angle_tolerance=angle_tolerance
            )
    except (ValueError, TypeError, RuntimeError):  # spglib gave up
        data = None
    if data is None:
        return f"{formula}|0|nosym"
    # One representative atom per atom of the primitive cell, so supercells key alike.
    sites: Counter[tuple[str, str]] = Counter()
    seen: set[int] = set()
    for index, (prim, symbol) in enumerate(
        zip(data.mapping_to_primitive, data.site_symmetry_symbols, strict=True)
    ):
        if int(prim) in seen:
            continue
        seen.add(int(prim))
        sites[(structure[index].specie.symbol, symbol.replace(".", ""))] += 1
    parts = sorted(f"{el}:{n}:{sym}" for (el, sym), n in sites.items())
    return f"{formula}|{data.number}|{','.join(parts)}"
