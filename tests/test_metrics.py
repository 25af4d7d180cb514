"""Structure-comparison metrics: periodic EMD, lattice MAE, site counts, composition, validity."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from generators.metrics import (
    composition_match,
    delta_n_sites,
    emd,
    is_valid,
    lattice_mae,
    min_interatomic_distance,
    worst_case_distance,
)


@pytest.fixture(scope="module")
def perovskite(perov_csv: Path) -> Structure:
    frame = pd.read_csv(perov_csv, nrows=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(frame.cif[1], fmt="cif")


def test_emd_is_zero_for_identical_and_ignores_site_order(perovskite):
    assert emd(perovskite, perovskite) == pytest.approx(0.0, abs=1e-9)
    order = [3, 0, 4, 1, 2]
    shuffled = Structure(
        perovskite.lattice,
        [perovskite.species[i] for i in order],
        perovskite.frac_coords[order],
    )
    assert emd(shuffled, perovskite) == pytest.approx(0.0, abs=1e-9)


def test_emd_uses_minimum_image_distances():
    lattice = Lattice.cubic(4.0)
    true = Structure(lattice, ["Na", "Cl"], [[0.01, 0.5, 0.5], [0.5, 0.5, 0.5]])
    pred = Structure(lattice, ["Na", "Cl"], [[0.99, 0.5, 0.5], [0.5, 0.5, 0.5]])
    # 0.02 of the cell across the face, not 0.98: mean over two sites = 0.04 A
    assert emd(pred, true) == pytest.approx(0.04, abs=1e-9)


def test_emd_measures_positions_in_the_true_cell(perovskite):
    stretched = perovskite.copy()
    stretched.scale_lattice(perovskite.volume * 1.1)
    assert emd(stretched, perovskite) == pytest.approx(0.0, abs=1e-9)
    assert lattice_mae(stretched, perovskite) == pytest.approx(
        perovskite.lattice.a * (1.1 ** (1 / 3) - 1), rel=1e-6
    )


def test_emd_with_different_site_counts(perovskite):
    missing = perovskite.copy()
    missing.remove_sites([4])
    penalty = worst_case_distance(perovskite)
    assert penalty == pytest.approx(perovskite.lattice.a * np.sqrt(3) / 2)
    # four sites matched exactly, one unmatched: penalty / 5
    assert emd(missing, perovskite) == pytest.approx(penalty / 5)
    assert emd(perovskite, missing) == pytest.approx(penalty / 5)
    assert emd(missing, perovskite, unmatched_cost=1.0) == pytest.approx(0.2)
    empty = Structure(perovskite.lattice, [], [])
    assert emd(empty, perovskite) == pytest.approx(penalty)


def test_species_aware_emd_penalises_swapped_elements():
    lattice = Lattice.cubic(4.0)
    true = Structure(lattice, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    swapped = Structure(lattice, ["Cl", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert emd(swapped, true) == pytest.approx(0.0, abs=1e-9)
    assert emd(swapped, true, species_aware=True) > 1.0


def test_counts_and_composition(perovskite):
    assert delta_n_sites(perovskite, perovskite) == 0
    assert delta_n_sites(None, perovskite) == len(perovskite)
    assert composition_match(perovskite, perovskite)
    doubled = perovskite * (2, 1, 1)
    assert not composition_match(doubled, perovskite)
    assert composition_match(doubled, perovskite, reduced=True)
    assert delta_n_sites(doubled, perovskite) == 5
    assert not composition_match(None, perovskite)


def test_lattice_mae_accepts_arrays_and_lattices(perovskite):
    a = perovskite.lattice.a
    assert lattice_mae(np.array([a + 0.03, a, a - 0.03]), perovskite) == pytest.approx(0.02)
    assert lattice_mae(Lattice.cubic(a), perovskite.lattice) == pytest.approx(0.0, abs=1e-9)


def test_min_distance_and_validity(perovskite):
    single = Structure(Lattice.cubic(3.1), ["Fe"], [[0, 0, 0]])
    assert min_interatomic_distance(single) == pytest.approx(3.1)
    across = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0.02, 0, 0], [0.97, 0, 0]])
    assert min_interatomic_distance(across) == pytest.approx(0.25)
    assert not is_valid(across) and is_valid(across, min_distance=0.2)
    assert is_valid(perovskite)
    assert min_interatomic_distance(perovskite) == pytest.approx(
        np.sort(perovskite.distance_matrix[np.triu_indices(5, 1)])[0]
    )
    assert not is_valid(None) and not is_valid(Structure(Lattice.cubic(3.0), [], []))
