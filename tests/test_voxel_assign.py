"""Joint charge-balanced species assignment (generators.voxel.assign) and its use in decoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from generators.generation_metrics import composition_valid
from generators.voxel.assign import AssignmentSettings, assign_species
from generators.voxel.encode import encode
from generators.voxel.settings import VoxelSettings
from generators.voxel.unet_decode import decode_voxels

# Z: Ne 10, O 8, Ti 22, Ba 56, Ar 18
ELEMENTS = np.array([8, 10, 18, 22, 56])


def _site(**p: float) -> list[float]:
    symbols = {"O": 8, "Ne": 10, "Ar": 18, "Ti": 22, "Ba": 56}
    row = [0.0] * len(ELEMENTS)
    for symbol, value in p.items():
        row[list(ELEMENTS).index(symbols[symbol])] = value
    return row


def test_vote_kept_when_it_balances():
    probs = [_site(Ba=0.9, Ne=0.1), _site(Ti=1), _site(O=1), _site(O=1), _site(O=1)]
    result = assign_species(np.array(probs), ELEMENTS)
    assert result.z == (56, 22, 8, 8, 8)
    assert result.balanced and result.tried == 1
    assert result.log_prob_lost == pytest.approx(0.0)


def test_most_probable_balanced_assignment_replaces_an_impossible_vote():
    # the vote NeTiO3 has no charge-balanced oxidation states; BaTiO3 (second choice at one
    # site) does, and costs log(0.6 / 0.4)
    assert not composition_valid("NeTiO3") and composition_valid("BaTiO3")
    probs = [_site(Ne=0.6, Ba=0.4), _site(Ti=0.7, Ar=0.3), _site(O=1), _site(O=1), _site(O=1)]
    result = assign_species(np.array(probs), ELEMENTS)
    assert result.z == (56, 22, 8, 8, 8)
    assert result.balanced
    assert result.log_prob_lost == pytest.approx(math.log(0.6 / 0.4))
    assert result.tried == 2  # NeTiO3, then BaTiO3 (NeArO3 is less probable than BaTiO3)


def test_no_balanced_assignment_in_budget_keeps_the_vote():
    probs = [_site(Ne=0.9, Ar=0.1), _site(Ar=1.0), _site(O=1.0)]
    result = assign_species(np.array(probs), ELEMENTS, AssignmentSettings(top_k=2, budget=50))
    assert result.z == (10, 18, 8)
    assert not result.balanced and result.log_prob_lost == 0.0
    assert result.tried <= 50


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="probabilities must be"):
        assign_species(np.ones((2, 3)), ELEMENTS)


def test_decoding_with_top_classes_assigns_the_cell_jointly():
    """An encoded BaTiO3 whose A site voted Ne (0.6) over Ba (0.4): the region vote decodes
    the impossible NeTiO3, the joint assignment BaTiO3."""
    settings = VoxelSettings()
    structure = Structure(
        Lattice.cubic(4.0),
        ["Ba", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )
    grid = encode(structure, settings)
    species = grid.species.astype(np.int64)
    barium = species == 56
    voted = np.where(barium, 10, species)
    confidence = np.where(species > 0, 0.6, 0.0)
    top_z = np.zeros((*species.shape, 2), dtype=np.int64)
    top_p = np.zeros((*species.shape, 2), dtype=np.float32)
    top_z[..., 0] = voted
    top_p[..., 0] = np.where(species > 0, np.where(barium, 0.6, 1.0), 0.0)
    top_z[..., 1] = np.where(barium, 56, 0)
    top_p[..., 1] = np.where(barium, 0.4, 0.0)

    plain = decode_voxels(voted, confidence, 4.0, settings)
    assert (
        plain.structure.composition.reduced_formula == "TiO3Ne"
    )  # pymatgen orders by electronegativity; Ne has none
    assert plain.assignment is None

    joint = decode_voxels(voted, confidence, 4.0, settings, top=(top_z, top_p))
    assert joint.structure.composition.reduced_formula == "BaTiO3"
    assert len(joint.structure) == 5
    assert joint.assignment == {"balanced": True, "log_prob_lost": 0.4055, "tried": 2}
