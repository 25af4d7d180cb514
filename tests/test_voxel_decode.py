"""Voxel decoding: periodic regions, faces/edges/corners, watershed splits, real round trips."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from generators.metrics import composition_match, emd, lattice_mae
from generators.voxel.decode import decode, periodic_label, roundtrip, segment
from generators.voxel.encode import coordinate_grid, encode


def _ball(n: int, centre, radius: float) -> np.ndarray:
    """Voxels within `radius` (voxel units) of `centre`, periodic."""
    d = np.indices((n, n, n)).reshape(3, -1).T - np.asarray(centre, dtype=float)
    d -= n * np.round(d / n)
    return ((d**2).sum(1) < radius**2).reshape(n, n, n)


def _round_trip(structure: Structure):
    grid = encode(structure)
    decoded = decode(grid.species, grid.coords)
    return decoded, emd(decoded.structure, structure)


def test_periodic_label_joins_across_faces_edges_and_corners():
    mask = _ball(16, (0, 0, 0), 2.5) | _ball(16, (8, 0, 8), 2.5) | _ball(16, (8, 8, 8), 2.5)
    labels, count = periodic_label(mask)
    assert count == 3
    assert labels[0, 0, 0] == labels[15, 15, 15] == labels[1, 15, 0]


def test_sites_on_faces_edges_and_corners():
    positions = [
        [0.0, 0.0, 0.0],  # corner: region split over 8 cell corners
        [0.0, 0.0, 0.5],  # edge
        [0.0, 0.5, 0.0],  # edge
        [0.5, 0.0, 0.0],  # edge
        [0.5, 0.5, 0.0],  # face
        [0.5, 0.0, 0.5],  # face
        [0.0, 0.5, 0.5],  # face
        [0.5, 0.5, 0.5],  # body centre
    ]
    structure = Structure(
        Lattice.cubic(6.2), ["Cs", "Cl", "Cl", "Cl", "Br", "Br", "Br", "K"], positions
    )
    decoded, distance = _round_trip(structure)
    assert decoded.n_sites == 8 and decoded.valid
    assert composition_match(decoded.structure, structure)
    assert distance < 0.01


def test_structure_straddling_the_boundary(perov_csv: Path):
    """A real perovskite shifted so that every site sits within a voxel of a cell face."""
    frame = pd.read_csv(perov_csv, nrows=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structure = Structure.from_str(frame.cif[7], fmt="cif")
    shift = np.array([0.987, 0.004, 0.493]) - structure.frac_coords[0]
    structure.translate_sites(range(len(structure)), shift, frac_coords=True, to_unit_cell=True)
    frac = np.mod(structure.frac_coords, 1.0)
    near_face = np.minimum(frac, 1 - frac).min(axis=1) < 0.02
    assert near_face.sum() >= 3
    decoded, distance = _round_trip(structure)
    assert decoded.n_sites == len(structure)
    assert composition_match(decoded.structure, structure)
    assert distance < 0.02
    assert lattice_mae(decoded.structure, structure) < 1e-4


def test_touching_atoms_of_one_element_are_split_by_watershed():
    n = 32
    # two oxygen balls of radius 4 voxels, centres 6 voxels apart, touching across the face
    species = np.where(_ball(n, (1, 10, 10), 4) | _ball(n, (-5, 10, 10), 4), 8, 0)
    labels, count = segment(species)
    assert count == 2
    decoded = decode(species, coordinate_grid([8.0, 8.0, 8.0], n))
    assert decoded.n_sites == 2
    got = sorted(float(s.frac[0]) for s in decoded.sites)
    np.testing.assert_allclose(got, [1 / n, 27 / n], atol=0.3 / n)
    assert all(s.z == 8 for s in decoded.sites)


def test_given_regions_replace_the_segmentation():
    """A caller that has segmented already (the generator's occupancy vote) passes its regions;
    decoding then keeps them as they are instead of splitting by species again."""
    n = 32
    species = np.where(_ball(n, (1, 10, 10), 4) | _ball(n, (-5, 10, 10), 4), 8, 0)
    one_region = ((species > 0).astype(np.int32), 1)
    decoded = decode(species, coordinate_grid([8.0] * 3, n), regions=one_region)
    assert decoded.n_sites == 1 and decoded.sites[0].z == 8
    with pytest.raises(ValueError, match="regions must have shape"):
        decode(species, coordinate_grid([8.0] * 3, n), regions=(np.zeros((4, 4, 4)), 0))


def test_close_sites_are_reported_not_merged():
    n = 32
    species = np.zeros((n, n, n), dtype=int)
    species[_ball(n, (10, 10, 10), 1.5)] = 8
    species[_ball(n, (14, 10, 10), 1.5)] = 26  # 4 voxels = 0.375 A apart in a 3 A cell
    decoded = decode(species, coordinate_grid([3.0, 3.0, 3.0], n))
    assert decoded.n_sites == 2
    assert len(decoded.too_close) == 1
    i, j, distance = decoded.too_close[0]
    assert {i, j} == {0, 1} and distance == pytest.approx(0.375, abs=0.02)
    assert not decoded.valid and decoded.structure is not None


def test_majority_vote_and_probability_weights():
    n = 16
    species = np.where(_ball(n, (8, 8, 8), 3), 8, 0)
    species[8, 8, 10] = 26  # one stray voxel of another element inside the oxygen
    decoded = decode(species, coordinate_grid([5.0] * 3, n))
    assert [s.z for s in decoded.sites] == [8] and decoded.sites[0].purity > 0.9
    weights = np.ones(species.shape)
    weights[9:, :, :] = 5.0  # confidence pulls the centroid towards +x
    weighted = decode(species, coordinate_grid([5.0] * 3, n), probabilities=weights)
    assert weighted.sites[0].frac[0] > decoded.sites[0].frac[0] + 0.01


def test_empty_grid_and_bad_shapes():
    n = 8
    decoded = decode(np.zeros((n, n, n), dtype=int), coordinate_grid([4.0] * 3, n))
    assert decoded.structure is None and decoded.n_sites == 0 and not decoded.valid
    with pytest.raises(ValueError, match="expected species"):
        decode(np.zeros((n, n, n)), np.zeros((n, n, n, 2)))


def test_prototypes_with_many_sites_round_trip():
    """Conventional cells of rock salt, fluorite and Cu3Au-type (8, 12, 4 sites)."""
    prototypes = [
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                  [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.46), ["Ca", "F"],
                                  [[0, 0, 0], [0.25, 0.25, 0.25]]),
        Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.75), ["Au", "Cu"],
                                  [[0, 0, 0], [0.5, 0.5, 0]]),
    ]  # fmt: skip
    for structure in prototypes:
        decoded, distance = _round_trip(structure)
        assert decoded.n_sites == len(structure), structure.composition
        assert composition_match(decoded.structure, structure)
        assert distance < 0.01 and decoded.valid


def test_round_trip_on_real_perovskites(perov_csv: Path):
    frame = pd.read_csv(perov_csv, nrows=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(c, fmt="cif") for c in frame.cif]
    report = roundtrip(structures, [str(i) for i in frame.material_id])
    summary = report.summary()
    assert summary["encoded"] == 60
    assert summary["fraction_exact_composition_and_sites"] == 1.0
    assert summary["fraction_valid"] == 1.0
    assert summary["mean_emd_A"] < 0.01 and summary["max_emd_A"] < 0.03
    assert summary["lattice_mae_A"] < 1e-4


def test_roundtrip_command_writes_json(perov_csv: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from agent.cli import app

    small = tmp_path / "perov_head.csv"
    pd.read_csv(perov_csv, nrows=12).to_csv(small, index=False)
    out = tmp_path / "roundtrip.json"
    result = CliRunner().invoke(
        app, ["voxel", "roundtrip", str(small), "--as-given", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["encoded"] == 12 and data["fraction_exact_composition_and_sites"] == 1.0
    for key in ("encode_structures_per_s", "decode_structures_per_s", "mean_emd_A",
                "lattice_mae_A", "fraction_valid", "worst_cases"):  # fmt: skip
        assert key in data
    bad = CliRunner().invoke(app, ["voxel", "roundtrip", str(tmp_path / "missing.csv")])
    assert bad.exit_code == 1 and "missing.csv" in bad.output


def test_salt_noise_of_a_generated_grid_is_cleaned(perov_csv: Path):
    """1 % of voxels set to random elements (as a generator's stray voxels): same crystal back;
    and the clean-up leaves an encoded grid untouched."""
    from generators.voxel.decode import denoise_species

    frame = pd.read_csv(perov_csv, nrows=8)
    rng = np.random.default_rng(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = [Structure.from_str(c, fmt="cif") for c in frame.cif[:4]]
    for structure in structures:
        grid = encode(structure)
        np.testing.assert_array_equal(denoise_species(grid.species), grid.species)
        noisy = grid.species.copy()
        salt = rng.random(noisy.shape) < 0.01
        noisy[salt] = rng.choice(sorted(set(structure.atomic_numbers)), int(salt.sum()))
        decoded = decode(noisy, grid.coords)
        assert decoded.n_sites == len(structure)
        assert composition_match(decoded.structure, structure)
        assert emd(decoded.structure, structure) < 0.03
