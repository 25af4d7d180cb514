"""Formation energy per atom and energy above the hull, only ever mixing energies computed with
the same settings (pymatgen PhaseDiagram does the hull)."""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

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


def e_above_hull(
    composition: Composition | str,
    energy: float,
    others: Iterable[tuple[Composition | str, float]],
    reference_per_atom: dict[str, float],
) -> float:
    """Energy above the hull (eV/atom) of one result against other results and the references."""
    comp = Composition(composition)
    chemsys = {el.symbol for el in comp.elements}
    entries = [PDEntry(Composition(el), e) for el, e in reference_per_atom.items() if el in chemsys]
    for c, e in others:
        c = Composition(c)
        if {el.symbol for el in c.elements} <= chemsys:
            entries.append(PDEntry(c, e))
    target = PDEntry(comp, energy)
    pd = PhaseDiagram([*entries, target])
    return float(pd.get_e_above_hull(target, allow_negative=True))


def hull_energies(docs: Iterable[dict]) -> dict[str, float]:
    """e_above_hull (eV/atom) of every FormationDocument (as dict) against all others with the
    same `settings_key` and their elemental references; keyed by candidate_id.

    Mixing settings on one hull is wrong, so documents are grouped; for campaign-wide hulls fix
    the cutoff (CRYSTALLOOP_DFT_ECUTWFC) so that all results share one key.
    """
    groups: dict[str, list[dict]] = {}
    for d in docs:
        groups.setdefault(d["settings_key"], []).append(d)
    out: dict[str, float] = {}
    for group in groups.values():
        refs: dict[str, float] = {}
        for d in group:
            refs.update(d["references"])
        entries = [PDEntry(Composition(el), e) for el, e in refs.items()]
        own = []
        for d in group:
            entry = PDEntry(Composition(d["formula"]), d["energy"])
            entries.append(entry)
            own.append((d, entry))
        pd = PhaseDiagram(entries)
        for d, entry in own:
            out[str(d.get("candidate_id"))] = float(pd.get_e_above_hull(entry, allow_negative=True))
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
