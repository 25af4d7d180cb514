"""Formation energy per atom and energy above the hull, only ever mixing energies computed with
the same settings (pymatgen PhaseDiagram does the hull)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Structure


def formation_energy_per_atom(
    composition: Composition | str, energy: float, reference_per_atom: dict[str, float]
) -> float:
    """(E - sum_i n_i e_i) / N in eV/atom; `energy` is the total for `composition`."""
    comp = Composition(composition)
    missing = [el.symbol for el in comp.elements if el.symbol not in reference_per_atom]
    if missing:
        raise KeyError(f"no reference energy for {', '.join(missing)}")
    ref = sum(n * reference_per_atom[el.symbol] for el, n in comp.items())
    return (energy - ref) / comp.num_atoms


def _hull(
    own: list[tuple[str, Composition, float]],
    references: Mapping[str, float],
    others: Iterable[tuple[Composition, float]] = (),
) -> dict[str, float]:
    """e_above_hull (eV/atom, negative below the hull) of each (key, composition, total energy)
    against the elemental references and the other entries on their elements."""
    elements = set(references)
    entries = [PDEntry(Composition(el), e) for el, e in references.items()]
    entries += [PDEntry(c, e) for c, e in others if {x.symbol for x in c.elements} <= elements]
    mine = [(key, PDEntry(comp, energy)) for key, comp, energy in own]
    diagram = PhaseDiagram([*entries, *(entry for _, entry in mine)])
    return {key: float(diagram.get_e_above_hull(e, allow_negative=True)) for key, e in mine}


def e_above_hull(
    composition: Composition | str,
    energy: float,
    others: Iterable[tuple[Composition | str, float]],
    reference_per_atom: dict[str, float],
) -> float:
    """Energy above the hull (eV/atom) of one result against other results and the references."""
    comp = Composition(composition)
    chemsys = {el.symbol for el in comp.elements}
    refs = {el: e for el, e in reference_per_atom.items() if el in chemsys}
    return _hull([("x", comp, energy)], refs, [(Composition(c), e) for c, e in others])["x"]


def hull_energies(
    docs: Iterable[Mapping[str, Any]],
    id_field: str = "candidate_id",
    known: Iterable[tuple[Composition | str, float]] = (),
) -> dict[str, float]:
    """e_above_hull (eV/atom) of every result against all others with the same `settings_key`
    and their elemental references, keyed by `id_field`. The one hull of the project: the
    daemon's (agent.hull) calls it on the campaign's calculations.

    A result is a mapping with `formula`, `references` ({element: eV/atom}), `settings_key`,
    and `energy_per_atom` or `energy` (total for `formula`); `anion_correction_per_atom` is
    added when present, so the hull is the one Materials Project would draw (corrections change
    relative stability across anion fractions). Results without energy or references are
    skipped. Mixing settings on one hull is wrong, so results are grouped; for campaign-wide
    hulls fix the cutoff (CRYSTALLOOP_DFT_ECUTWFC) so that all results share one key.

    `known` are phases known from elsewhere as (composition, formation energy per atom) on
    the scale of the corrected results (Materials Project's): each group places them on its
    own elemental references, so a result is judged against the known phases of its
    chemical system too, not only against the campaign's own results.
    """
    known = [(Composition(c), float(e)) for c, e in known]
    groups: dict[str, list[tuple[str, Composition, float, dict]]] = {}
    for d in docs:
        if not d.get("references") or (
            d.get("energy_per_atom") is None and d.get("energy") is None
        ):
            continue
        comp = Composition(d["formula"])
        per_atom = d.get("energy_per_atom")
        if per_atom is None:
            per_atom = d["energy"] / comp.num_atoms
        per_atom += d.get("anion_correction_per_atom") or 0.0
        key = d.get("settings_key") or "default"
        groups.setdefault(key, []).append(
            (str(d.get(id_field)), comp, per_atom * comp.num_atoms, d["references"])
        )
    out: dict[str, float] = {}
    for group in groups.values():
        refs: dict[str, float] = {}
        for *_, references in group:
            refs.update(references)
        others = [
            (c, c.num_atoms * e + sum(n * refs[el.symbol] for el, n in c.items()))
            for c, e in known
            if {el.symbol for el in c.elements} <= set(refs)
        ]
        out.update(_hull([(key, comp, e) for key, comp, e, _ in group], refs, others))
    return out


@lru_cache(maxsize=1)
def _mp2020_composition_corrections() -> dict[str, float]:
    import yaml
    from pymatgen.analysis import compatibility

    path = Path(compatibility.__file__).with_name("MP2020Compatibility.yaml")
    return dict(yaml.safe_load(path.read_text())["Corrections"]["CompositionCorrections"])


def anion_correction_per_atom(structure: Structure) -> float:
    """MP2020's fitted anion correction (eV/atom) for this compound.

    Why: raw PBE overbinds O2 and other anion references, so raw formation energies sit
    ~0.3-0.5 eV/atom above Materials Project's, which the surrogate learnt from. Adding MP's
    fitted per-anion corrections (shipped with pymatgen) puts QE results on MP's scale (BaTiO3:
    raw -3.09, corrected -3.52, MP -3.51). As in MP2020 the correction applies to the most
    electronegative element only, oxygen by its oxide type; no GGA+U mixing terms (no +U here).
    """
    from pymatgen.analysis.structure_analyzer import oxide_type

    comp = structure.composition
    if len(comp.elements) < 2:
        return 0.0
    anion = max(comp.elements, key=lambda el: el.X)
    table = _mp2020_composition_corrections()
    if anion.symbol == "O":
        per_anion = table.get(oxide_type(structure), 0.0)
    else:
        per_anion = table.get(anion.symbol, 0.0)
    return float(per_anion) * comp[anion] / comp.num_atoms


def hull_formation_energy(
    compositions: Iterable[Composition | str],
    results: Iterable[tuple[Composition | str, float]],
) -> np.ndarray:
    """The convex hull's formation energy (eV/atom, <= 0) at each composition, drawn through
    the elements (0) and `results` (composition, formation energy per atom).

    A predicted formation energy minus this is a predicted energy above the hull: the
    objective `e_above_hull` asks where a candidate would land on the campaign's hull, which
    only its composition and its own formation energy decide. `results` must be on the same
    scale as the prediction (here: MP-corrected PBE, like the surrogate's training data)."""
    comps = [Composition(c) for c in compositions]
    points = [(Composition(c), float(e)) for c, e in results if np.isfinite(e)]
    elements = {el for c in comps for el in c.elements} | {
        el for c, _ in points for el in c.elements
    }
    if not comps:
        return np.zeros(0)
    entries = [PDEntry(Composition({el: 1}), 0.0) for el in elements]
    entries += [PDEntry(c, e * c.num_atoms) for c, e in points]
    diagram = PhaseDiagram(entries)
    return np.array([diagram.get_hull_energy_per_atom(c) for c in comps], dtype=float)
