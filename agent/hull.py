"""Energy above the hull for every DFT result of a campaign, and which results are discoveries.

Only results computed with the same settings (pseudos, cutoff, smearing, k density) share a
hull: energies from different basis sets are not comparable.
"""

from __future__ import annotations

from collections import defaultdict

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from agent.store import Store


def update_hull(store: Store, campaign: str, tolerance: float = 1e-6) -> dict[str, float]:
    """Recompute e_above_hull for all completed calculations; mark discoveries (on the hull and
    below the elements) and count them per cycle. Returns calc id -> e_above_hull.

    Energies carry their MP2020 anion correction, so the hull is the one Materials Project
    would draw (corrections change relative stability across anion fractions)."""
    calcs = store.find_calculations(campaign, "completed", projection={"task_doc": 0})
    groups: dict[str, list[dict]] = defaultdict(list)
    for calc in calcs:
        if calc.get("energy_per_atom") is not None and calc.get("references"):
            groups[calc.get("settings_key") or "default"].append(calc)

    result: dict[str, float] = {}
    discoveries: dict[int, int] = defaultdict(int)
    for group in groups.values():
        references: dict[str, float] = {}
        for calc in group:
            references.update(calc["references"])
        entries = [PDEntry(Composition(el), e) for el, e in references.items()]
        mine = []
        for calc in group:
            comp = Composition(calc["formula"])
            corrected = calc["energy_per_atom"] + calc.get("anion_correction_per_atom", 0.0)
            entry = PDEntry(comp, corrected * comp.num_atoms, name=calc["_id"])
            entries.append(entry)
            mine.append((calc, entry))
        diagram = PhaseDiagram(entries)
        for calc, entry in mine:
            e_hull = float(diagram.get_e_above_hull(entry, allow_negative=True))
            stable = e_hull <= tolerance and calc["formation_energy_per_atom"] < 0
            result[calc["_id"]] = e_hull
            store.save_calculation(
                calc["candidate_id"], campaign, calc["_id"], e_above_hull=e_hull, discovery=stable
            )
            if stable and calc.get("cycle") is not None:
                discoveries[int(calc["cycle"])] += 1
    for cycle, n in discoveries.items():
        store.record_cycle(campaign, cycle, discoveries=n)
    return result
