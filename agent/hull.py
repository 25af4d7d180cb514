"""Energy above the hull for every DFT result of a campaign, and which results are discoveries.

Only results computed with the same settings (pseudos, cutoff, smearing, k density) share a
hull: energies from different basis sets are not comparable.

A **discovery** is defined here and nowhere else (stopping's patience, `status` and the run
summary read the flag this module writes): a completed DFT result

- that is new: its relaxed crystal matches no crystal of `filters.known_sources` (the funnel
  already kept repeats of the campaign's own candidates out of the pool);
- that is stable: below its elements (formation energy < 0) and within
  `objective.hull_tolerance` of the convex hull of the campaign's results and the known
  phases of its chemical system (the formation energies of `filters.known_sources` on the
  Materials Project scale, the scale of the corrected results);
- and, for a window objective, whose DFT value of the objective's property lies in the window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from agent.config import Objective
from agent.store import Store
from dft.formation import hull_energies

ON_HULL = 5e-4  # eV/atom: what counts as on the hull (PhaseDiagram and SCF noise)


def is_discovery(calc: Mapping[str, Any], e_above_hull: float, objective: Objective) -> bool:
    if calc.get("known_match"):
        return False
    e_form = calc.get("formation_energy_per_atom")
    if not isinstance(e_form, int | float) or e_form >= 0:
        return False
    if e_above_hull > objective.hull_tolerance + ON_HULL:
        return False
    if objective.goal == "window":
        value = (
            e_above_hull if objective.property == "e_above_hull" else calc.get(objective.property)
        )
        if not isinstance(value, int | float):
            return False
        low = objective.min if objective.min is not None else -float("inf")
        high = objective.max if objective.max is not None else float("inf")
        return low <= value <= high
    return True


def update_hull(
    store: Store,
    campaign: str,
    objective: Objective | None = None,
    known: Sequence[tuple[str, float]] = (),
) -> dict[str, float]:
    """Recompute e_above_hull for all completed calculations (dft.formation.hull_energies:
    grouped by settings, MP2020-corrected energies, `known` phases included); mark
    discoveries (`is_discovery`) and count them per cycle. Returns calc id -> e_above_hull."""
    objective = objective or Objective()
    calcs = store.find_calculations(campaign, "completed", projection={"task_doc": 0})
    result = hull_energies(calcs, id_field="_id", known=known)
    discoveries: dict[int, int] = defaultdict(int)
    for calc in calcs:
        if calc["_id"] not in result:
            continue
        e_hull = result[calc["_id"]]
        found = is_discovery(calc, e_hull, objective)
        store.save_calculation(
            calc["candidate_id"], campaign, calc["_id"], e_above_hull=e_hull, discovery=found
        )
        if found and calc.get("cycle") is not None:
            discoveries[int(calc["cycle"])] += 1
    for cycle, n in discoveries.items():
        store.record_cycle(campaign, cycle, discoveries=n)
    return result
