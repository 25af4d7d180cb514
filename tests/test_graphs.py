"""Crystal graphs on periodic cells: neighbour shells of known structures, batching, padding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from policies.graphs import (
    ATOM_FEATURE_LENGTH,
    atom_feature_table,
    build_graphs,
    neighbor_table,
    subset,
)


def fcc(a: float = 3.61) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Cu"], [[0, 0, 0]])


def bcc(a: float = 2.87) -> Structure:
    return Structure.from_spacegroup("Im-3m", Lattice.cubic(a), ["Fe"], [[0, 0, 0]])


def rocksalt(a: float = 5.64) -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def test_fcc_has_twelve_nearest_neighbours() -> None:
    s = fcc()
    index, dist = neighbor_table(s)
    assert index.shape == (4, 12)
    np.testing.assert_allclose(dist, 3.61 / np.sqrt(2), rtol=1e-6)


def test_bcc_first_two_shells() -> None:
    a = 2.87
    _, dist = neighbor_table(bcc(a))
    np.testing.assert_allclose(dist[:, :8], a * np.sqrt(3) / 2, rtol=1e-6)  # 8 at a*sqrt(3)/2
    np.testing.assert_allclose(dist[:, 8:], a, rtol=1e-6)  # then 4 of the 6 at a


def test_rocksalt_neighbours_alternate_species() -> None:
    a = 5.64
    s = rocksalt(a)
    index, dist = neighbor_table(s)
    np.testing.assert_allclose(dist[:, :6], a / 2, rtol=1e-6)
    np.testing.assert_allclose(dist[:, 6:], a / np.sqrt(2), rtol=1e-6)
    species = np.array([site.specie.symbol for site in s])
    for i in range(len(s)):
        assert all(species[index[i, :6]] != species[i])  # first shell: the other ion
        assert all(species[index[i, 6:]] == species[i])  # second shell: same ion


def test_padding_beyond_cutoff() -> None:
    index, dist = neighbor_table(fcc(), cutoff=2.0)
    assert (index == 0).all()
    assert np.allclose(dist, 3.0)  # cutoff + 1, outside the Gaussian basis


def test_batch_offsets_and_subset() -> None:
    structures = [fcc(), rocksalt(), bcc()]
    batch = build_graphs(structures)
    assert batch.n_crystals == 3
    assert batch.atom_features.shape == (4 + 8 + 2, ATOM_FEATURE_LENGTH)
    np.testing.assert_array_equal(np.bincount(batch.crystal_index), [4, 8, 2])
    # neighbours never cross crystals
    assert (batch.crystal_index[batch.neighbor_index] == batch.crystal_index[:, None]).all()
    # subset (reordered, repeated) equals building those graphs directly
    part = subset(batch, np.array([2, 0, 2]))
    direct = build_graphs([structures[2], structures[0], structures[2]])
    np.testing.assert_array_equal(part.neighbor_index, direct.neighbor_index)
    np.testing.assert_allclose(part.neighbor_distance, direct.neighbor_distance)
    np.testing.assert_array_equal(part.crystal_index, direct.crystal_index)


def test_atom_features_are_cgcnn_one_hot() -> None:
    table = atom_feature_table()
    assert table.shape == (119, 92)
    assert table[0].sum() == 0  # no element 0
    assert table[8].sum() > 0 and set(np.unique(table[8])) <= {0.0, 1.0}


@pytest.fixture(scope="module")
def perovskites(perov_csv) -> list[Structure]:
    frame = pd.read_csv(perov_csv, nrows=20)
    return [Structure.from_str(c, fmt="cif") for c in frame["cif"]]


def test_matches_brute_force_on_real_perovskites(perovskites) -> None:
    batch = build_graphs(perovskites)
    assert (batch.neighbor_distance <= 8.0).all()  # dense cells: 12 neighbours always found
    for s in perovskites[:5]:
        _, dist = neighbor_table(s)
        for i, nbrs in enumerate(s.get_all_neighbors(8.0)):
            expected = np.sort([n.nn_distance for n in nbrs])[:12]
            np.testing.assert_allclose(dist[i], expected, rtol=1e-5)
