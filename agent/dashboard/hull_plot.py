"""The convex hull plot: the campaign's DFT results with their reference phases.

Why per chemical system: a campaign's results usually span many elements, and a hull can be
drawn only for up to four of them (pymatgen's ``PDPlotter``: a line for two, a triangle for
three, a tetrahedron for four). So the page offers each chemical system its results span and
draws the hull of the results inside it, on the formation-energy scale the daemon stores
(eV/atom, MP2020-corrected, elements at 0 - the references of ``agent.hull``). The plot is
meant for looking; the numbers (``e_above_hull``, discoveries) are the daemon's, shown as
they are stored.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from typing import Any


def _composition(formula: Any) -> Any:
    from pymatgen.core import Composition

    try:
        comp = Composition(str(formula))
    except Exception:  # a formula pymatgen cannot read is not drawn
        return None
    return comp if comp.num_atoms > 0 else None


def chemical_systems(completed: list[dict]) -> list[tuple[str, int]]:
    """(system, how many results lie in it or its subsystems), largest first, <= 4 elements."""
    systems: Counter[str] = Counter()
    comps = []
    for calc in completed:
        comp = _composition(calc.get("formula"))
        if comp is not None and isinstance(calc.get("formation_energy_per_atom"), int | float):
            comps.append(frozenset(el.symbol for el in comp.elements))
    for elements in set(comps):
        if 2 <= len(elements) <= 4:
            systems["-".join(sorted(elements))] = sum(1 for c in comps if c <= elements)
    return sorted(systems.items(), key=lambda kv: (-kv[1], kv[0]))


def hull_figure(completed: list[dict], system: str | None) -> dict[str, Any]:
    from pymatgen.analysis.phase_diagram import PDEntry, PDPlotter, PhaseDiagram
    from pymatgen.core import Composition

    systems = chemical_systems(completed)
    names = [s for s, _ in systems]
    if system not in names:
        system = names[0] if names else None
    if system is None:
        return {
            "data": [],
            "layout": {"title": {"text": "Convex hull: no completed compound results yet"}},
            "systems": [],
            "system": None,
        }
    elements = set(system.split("-"))
    entries = [PDEntry(Composition(el), 0.0, name=el) for el in sorted(elements)]
    shown = 0
    for calc in completed:
        comp = _composition(calc.get("formula"))
        e_form = calc.get("formation_energy_per_atom")
        if comp is None or not isinstance(e_form, int | float) or len(comp.elements) < 2:
            continue
        if {el.symbol for el in comp.elements} <= elements:
            name = html.escape(comp.reduced_formula)
            entries.append(PDEntry(comp, float(e_form) * comp.num_atoms, name=name))
            shown += 1
    diagram = PhaseDiagram(entries)
    figure = json.loads(
        PDPlotter(diagram, backend="plotly", show_unstable=0.5).get_plot().to_json()
    )
    layout = figure.get("layout", {})
    layout["title"] = {
        "text": f"Convex hull of {html.escape(system)}: {shown} DFT result(s) + elements",
        "font": {"size": 14},
    }
    layout.pop("width", None)
    layout["height"] = 460
    figure["layout"] = layout
    figure["systems"] = systems
    figure["system"] = system
    figure["stable"] = sorted(
        e.name for e in diagram.stable_entries if len(e.composition.elements) > 1
    )
    return figure
