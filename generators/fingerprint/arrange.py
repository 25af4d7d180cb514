"""Which drawn element takes which site of a training crystal's template.

A sample that keeps a template's sites must still put its own elements on them; the template's
slot order is an accident of its electronegativities, so the sampler asks electrostatics
instead (`arrange_on_template`).
"""

from __future__ import annotations

from functools import cache

import numpy as np
from pymatgen.core import Structure

MAX_ARRANGEMENTS = 24


def arrange_on_template(
    names: list[str], counts: list[int], frac: np.ndarray, length: float
) -> np.ndarray:
    """The template's sites with the drawn elements arranged on them by lowest Ewald energy.

    A template's sites come in slot order (electronegativity), and whose slot 0 sat on which
    site depends on the training crystal: the first demo run with joint inventories put Sr on
    the octahedral site of a perovskite template and Ti on the 12-fold one (pw.x: -0.75
    eV/atom, against -3.4 for SrTiO3). Swapping the sites of slots that have the same count
    and the same sign of charge, and keeping the arrangement of lowest electrostatic energy
    (oxidation states from pymatgen's guesses), follows Pauling's first rules (the
    high-valence cation on the site with the nearest anions). A composition pymatgen cannot
    assign oxidation states to keeps the template's order."""
    from itertools import islice, permutations, product

    from pymatgen.analysis.ewald import EwaldSummation
    from pymatgen.core import Lattice

    guesses = _oxidation_guesses(tuple(zip(names, counts, strict=True)))
    if not guesses:
        return frac
    charge = [guesses[0][n] for n in names]
    groups: dict[tuple[int, float], list[int]] = {}
    for slot, (count, q) in enumerate(zip(counts, charge, strict=True)):
        groups.setdefault((count, float(np.sign(q))), []).append(slot)
    swaps = [g for g in groups.values() if len(g) > 1]
    if not swaps:
        return frac
    starts = np.cumsum([0, *counts])
    blocks = [frac[starts[s] : starts[s + 1]] for s in range(len(counts))]
    species = [name for name, c in zip(names, counts, strict=True) for _ in range(c)]
    best, best_energy = frac, np.inf
    options = product(*(permutations(g) for g in swaps))
    for choice in islice(options, MAX_ARRANGEMENTS):
        order = list(range(len(counts)))  # order[slot] = the slot whose sites it takes
        for group, perm in zip(swaps, choice, strict=True):
            for slot, source in zip(group, perm, strict=True):
                order[slot] = source
        coords = np.concatenate([blocks[order[s]] for s in range(len(counts))])
        structure = Structure(Lattice.cubic(length), species, coords)
        structure.add_oxidation_state_by_element(guesses[0])
        energy = EwaldSummation(structure).total_energy
        if energy < best_energy - 1e-9:
            best, best_energy = coords, energy
    return best


@cache
def _oxidation_guesses(formula: tuple[tuple[str, int], ...]) -> tuple[dict[str, float], ...]:
    import warnings

    from pymatgen.core import Composition

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(Composition(dict(formula)).oxi_state_guesses())
