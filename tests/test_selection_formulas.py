"""Selection spends one relaxation per formula unless the campaign allows polymorphs."""

from __future__ import annotations

from pymatgen.core import Lattice, Structure

from agent.components import Components
from agent.config import CampaignConfig


def _perovskite(a: float, species: list[str], shift: float = 0.0) -> Structure:
    return Structure(
        Lattice.cubic(a),
        species,
        [[0, 0, 0], [0.5 + shift, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


POOL = [
    _perovskite(3.90, ["Sr", "Ti", "O", "O", "O"]),
    _perovskite(3.95, ["Sr", "Ti", "O", "O", "O"], shift=0.04),  # a second SrTiO3 polymorph
    _perovskite(4.00, ["Ba", "Ti", "O", "O", "O"]),
    _perovskite(4.10, ["K", "Nb", "O", "O", "O"]),
]


def _components(one_per_formula: bool) -> Components:
    return Components(
        CampaignConfig.model_validate(
            {
                "name": "select-test",
                "acquisition": {
                    "policy": "random",
                    "params": {},
                    "diversity": False,
                    "one_per_formula": one_per_formula,
                },
            }
        )
    )


def formulas(picks: list[int]) -> list[str]:
    return [POOL[i].composition.reduced_formula for i in picks]


def test_one_per_formula_passes_over_polymorphs_and_spent_formulas():
    components = _components(True)
    for seed in range(6):  # random picks: whatever the draw, no formula twice
        _, picks = components.select(POOL, 3, None, seed=seed)
        assert sorted(formulas(picks)) == ["BaTiO3", "KNbO3", "SrTiO3"]
    _, picks = components.select(POOL, 3, None, seed=0, taken_formulas={"SrTiO3"})
    assert sorted(formulas(picks)) == ["BaTiO3", "KNbO3"]  # fewer picks, not a polymorph


def test_polymorphs_allowed_when_asked():
    components = _components(False)
    _, picks = components.select(POOL, 4, None, seed=0)
    assert sorted(formulas(picks)) == ["BaTiO3", "KNbO3", "SrTiO3", "SrTiO3"]
