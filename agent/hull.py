"""Energy above the hull for every DFT result of a campaign, and which results are discoveries.

Only results computed with the same settings (pseudos, cutoff, smearing, k density) share a
hull: energies from different basis sets are not comparable.
"""

from __future__ import annotations

from collections import defaultdict

from agent.store import Store
from dft.formation import hull_energies


def update_hull(store: Store, campaign: str, tolerance: float = 1e-6) -> dict[str, float]:
    """Recompute e_above_hull for all completed calculations (dft.formation.hull_energies:
    grouped by settings, MP2020-corrected energies); mark discoveries (on the hull and below
    the elements) and count them per cycle. Returns calc id -> e_above_hull."""
    calcs = store.find_calculations(campaign, "completed", projection={"task_doc": 0})
    result = hull_energies(calcs, id_field="_id")
    discoveries: dict[int, int] = defaultdict(int)
    for calc in calcs:
        if calc["_id"] not in result:
            continue
        e_hull = result[calc["_id"]]
        stable = e_hull <= tolerance and calc["formation_energy_per_atom"] < 0
        store.save_calculation(
            calc["candidate_id"], campaign, calc["_id"], e_above_hull=e_hull, discovery=stable
        )
        if stable and calc.get("cycle") is not None:
            discoveries[int(calc["cycle"])] += 1
    for cycle, n in discoveries.items():
        store.record_cycle(campaign, cycle, discoveries=n)
    return result
