"""One definition of a discovery, and an e_above_hull objective that ranks candidates."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from agent.components import Components
from agent.config import CampaignConfig, Objective
from agent.hull import is_discovery
from dft.formation import hull_formation_energy


def test_discovery_needs_new_stable_and_on_objective():
    stable = {"formation_energy_per_atom": -2.1, "band_gap": 1.4}
    on_hull = Objective()
    assert is_discovery(stable, 0.0, on_hull)
    assert not is_discovery({**stable, "known_match": "matminer:flla_2015:mp-5777"}, 0.0, on_hull)
    assert not is_discovery({"formation_energy_per_atom": 0.2}, 0.0, on_hull)  # above elements
    assert not is_discovery(stable, 0.03, on_hull)
    assert is_discovery(stable, 0.03, Objective(hull_tolerance=0.05))
    window = Objective(goal="window", property="band_gap", min=1.0, max=2.0, hull_tolerance=0.1)
    assert is_discovery(stable, 0.05, window)
    assert not is_discovery({**stable, "band_gap": 2.5}, 0.05, window)
    assert not is_discovery({"formation_energy_per_atom": -2.1}, 0.05, window)  # no gap measured


def test_hull_formation_energy_through_results_and_elements():
    # SrTiO3 = 2/5 SrO + 3/5 TiO2 in atoms: (2 * -3.0 + 3 * -3.5) / 5 = -3.3 eV/atom
    hull = hull_formation_energy(
        ["SrTiO3", "TiO2", "Sr", "SrO2"], [("TiO2", -3.5), ("SrO", -3.0), ("Ti2O3", -3.0)]
    )
    assert hull[:3] == pytest.approx([-3.3, -3.5, 0.0])
    assert hull[3] == pytest.approx(-3.0 * 2 / 3)  # SrO + O: 2/3 of the atoms are SrO


def perovskite(a: float, a_site: str) -> Structure:
    return Structure(
        Lattice.cubic(a),
        [a_site, "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def test_e_above_hull_objective_ranks_against_the_campaign_hull():
    config = CampaignConfig.model_validate(
        {
            "name": "hull-objective",
            "objective": {"property": "e_above_hull"},
            "acquisition": {"policy": "greedy", "params": {}, "diversity": False},
        }
    )
    components = Components(config)
    pool = [perovskite(3.95, "Sr"), perovskite(4.0, "Ba")]
    components.hull_points = [("TiO2", -3.5), ("SrO", -3.0)]
    predicted = components.predict(pool)
    ef, _ = predicted["formation_energy_per_atom"]
    e_hull, sigma = predicted["e_above_hull"]
    # the hull is -3.3 eV/atom at SrTiO3 (SrO + TiO2) and -2.1 at BaTiO3 (Ba + TiO2 + O: only
    # TiO2's 3 of 5 atoms are bound), so e_above_hull = E_f + 3.3 and E_f + 2.1
    assert e_hull - ef == pytest.approx([3.3, 2.1])
    assert np.all(sigma == predicted["formation_energy_per_atom"][1])
    scores, picks = components.select(pool, 1, best=None, seed=0)
    assert picks == [int(np.argmin(e_hull))]


def test_the_hull_includes_the_known_phases_of_the_chemical_system(matminer_dir):
    """A high-energy arrangement of a known chemistry is no discovery: the first demo run with
    joint site inventories relaxed an anti-site SrTiO3 (Sr octahedral) to -0.749 eV/atom, and
    against the campaign's own two results it sat on the hull. flla_2015 lacks SrTiO3, but
    has SrO and TiO2, which it decomposes into."""
    from dft.formation import hull_energies
    from generators.known import KnownCrystals

    known = KnownCrystals([str(matminer_dir / "flla_2015.csv.gz")])
    phases = dict(known.formation_energies(["Ba", "Sr", "Ti", "O"]))
    assert set(phases) == {"Ba", "BaO", "BaTiO3", "O2", "Sr", "SrO", "Ti6O", "TiO2"}
    assert phases["SrO"] == pytest.approx(-3.0937, abs=1e-4)
    assert phases["TiO2"] == pytest.approx(-3.5124, abs=1e-4)
    refs = {"Sr": -931.521, "Ti": -1615.0, "O": -447.9}  # eV/atom: only differences matter
    total = 5 * -0.749 + refs["Sr"] + refs["Ti"] + 3 * refs["O"]
    doc = {"_id": "a", "formula": "SrTiO3", "energy": total, "references": refs}
    alone = hull_energies([doc], id_field="_id")
    assert alone["a"] == pytest.approx(0.0, abs=1e-9)
    # SrTiO3 = 2/5 SrO + 3/5 TiO2 in atoms: hull -3.345 eV/atom, so 2.60 above it
    against_known = hull_energies([doc], id_field="_id", known=phases.items())
    assert against_known["a"] == pytest.approx(2.596, abs=2e-3)
    assert not is_discovery({"formation_energy_per_atom": -0.749}, against_known["a"], Objective())

    # the campaign asks for its chemical system's phases once (filters.elements)
    config = CampaignConfig.model_validate(
        {
            "name": "known-hull",
            "filters": {
                "elements": ["Ba", "Sr", "Ti", "O"],
                "known_sources": [str(matminer_dir / "flla_2015.csv.gz")],
            },
        }
    )
    assert dict(Components(config).known_phases([])) == phases
