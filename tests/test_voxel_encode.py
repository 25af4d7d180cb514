"""Voxel encoding: invariants on real perovskites, rotations, bad input, dataset on disk."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import DummySpecies, Lattice, Structure

from generators.data.records import Record
from generators.voxel.encode import (
    VoxelEncodingError,
    coordinate_grid,
    encode,
    encode_many,
    ionic_radii,
    label_radii,
    lattice_from_coords,
    radius_sources,
)
from generators.voxel.rotations import (
    ROTATIONS,
    rotate_array,
    rotate_grid,
    rotate_structure,
)
from generators.voxel.settings import VoxelSettings


def _perov(path: Path, count: int) -> list[tuple[str, Structure]]:
    frame = pd.read_csv(path, nrows=count)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [
            (str(row.material_id), Structure.from_str(row.cif, fmt="cif"))
            for row in frame.itertuples()
        ]


@pytest.fixture(scope="module")
def perov(perov_csv: Path) -> list[tuple[str, Structure]]:
    return _perov(perov_csv, 30)


@pytest.fixture(scope="module")
def off_centre(perov) -> Structure:
    """A real perovskite whose sites are displaced from the ideal positions."""
    for _, structure in perov:
        frac = np.mod(structure.frac_coords, 1.0)
        if np.abs(frac * 2 - np.rint(frac * 2)).max() > 1e-3:
            return structure
    raise AssertionError("no off-centre perovskite in the sample")


def _brute_force(structure: Structure, settings: VoxelSettings):
    """Density and species by explicit sums over 5x5x5 periodic images (slow reference)."""
    n = settings.n_grid
    lengths = np.array(structure.lattice.abc)
    radii_of = ionic_radii(structure, settings)
    radii = np.array([radii_of[sp.symbol] for sp in structure.species])
    frac = np.mod(structure.frac_coords, 1.0)
    voxels = np.indices((n, n, n)).reshape(3, -1).T / n
    density = np.zeros(len(voxels))
    for image in np.indices((5, 5, 5)).reshape(3, -1).T - 2:
        d = (voxels[:, None, :] - frac[None] - image) * lengths
        density += (
            np.exp(-0.5 * (d**2).sum(-1) / radii**2) * np.array(structure.atomic_numbers)
        ).sum(-1)
    d = voxels[:, None, :] - frac[None]
    d -= np.round(d)
    dist2 = ((d * lengths) ** 2).sum(-1)
    label = label_radii(frac, lengths, radii, settings)
    dist2 = np.where(dist2 < label**2, dist2, np.inf)
    owner = dist2.argmin(1)
    species = np.where(np.isfinite(dist2.min(1)), np.array(structure.atomic_numbers)[owner], 0)
    return density.reshape(n, n, n), species.reshape(n, n, n)


def test_encode_matches_explicit_periodic_sums(off_centre):
    settings = VoxelSettings()
    grid = encode(off_centre, settings)
    density, species = _brute_force(off_centre, settings)
    assert grid.density.shape == (32, 32, 32) and grid.density.dtype == np.float32
    np.testing.assert_allclose(grid.density, density, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(grid.species, species)
    np.testing.assert_array_equal(grid.mask, species > 0)


def test_density_and_species_are_periodic(off_centre):
    """Translating the crystal by whole voxels rolls the grids, including across the faces."""
    shift = np.array([3, -5, 17])
    moved = off_centre.copy()
    moved.translate_sites(range(len(moved)), shift / 32, frac_coords=True, to_unit_cell=True)
    a, b = encode(off_centre), encode(moved)
    np.testing.assert_allclose(np.roll(a.density, shift, axis=(0, 1, 2)), b.density, atol=1e-3)
    np.testing.assert_array_equal(np.roll(a.species, shift, axis=(0, 1, 2)), b.species)


def test_every_atom_owns_a_separate_region(perov):
    """Label spheres of neighbours never touch: each atom's voxels form their own region."""
    from scipy import ndimage as ndi

    from generators.voxel.decode import periodic_label

    for _, structure in perov[:10]:
        grid = encode(structure)
        _, count = periodic_label(grid.mask, ndi.generate_binary_structure(3, 1))
        assert count == len(structure)
        present, counts = np.unique(grid.species[grid.mask], return_counts=True)
        assert set(present) == set(structure.atomic_numbers)
        assert counts.min() >= 7


def test_coordinate_grid_recovers_the_cell(perov):
    for _, structure in perov[:5]:
        grid = encode(structure)
        a = structure.lattice.a
        assert grid.coords.shape == (32, 32, 32, 3)
        np.testing.assert_allclose(grid.lattice, [a, a, a], rtol=1e-6)
        np.testing.assert_allclose(lattice_from_coords(grid.coords), [a, a, a], rtol=1e-5)
        np.testing.assert_allclose(grid.coords[1, 2, 3], np.array([1, 2, 3]) * a / 32, rtol=1e-5)
    # a noisy generated coordinate grid still gives the cell to well under 0.01 A
    noisy = coordinate_grid([4.0, 4.0, 4.0], 32)
    noisy += np.random.default_rng(0).normal(0, 0.05, noisy.shape).astype(np.float32)
    np.testing.assert_allclose(lattice_from_coords(noisy), [4.0, 4.0, 4.0], atol=0.01)


def test_rotations_are_the_24_proper_cube_rotations():
    assert ROTATIONS.shape == (24, 3, 3)
    assert len({r.tobytes() for r in ROTATIONS}) == 24
    assert all(round(np.linalg.det(r)) == 1 for r in ROTATIONS)
    keys = {r.tobytes() for r in ROTATIONS}
    assert all((a @ b).tobytes() in keys for a in ROTATIONS for b in ROTATIONS)  # a group


def test_rotations_permute_voxels_consistently(off_centre):
    """Rotating the grid equals encoding the rotated crystal, for all 24 rotations."""
    grid = encode(off_centre)
    moved = 0
    for rotation in range(24):
        rotated = rotate_grid(grid, rotation)
        direct = encode(rotate_structure(off_centre, rotation))
        np.testing.assert_array_equal(rotated.species, direct.species)
        np.testing.assert_allclose(rotated.density, direct.density, atol=1e-3)
        np.testing.assert_array_equal(rotated.mask, rotated.species > 0)
        np.testing.assert_allclose(lattice_from_coords(rotated.coords), grid.lattice, rtol=1e-5)
        # a permutation: same multiset of voxel values
        np.testing.assert_array_equal(np.sort(rotated.density, None), np.sort(grid.density, None))
        moved += not np.array_equal(rotated.species, grid.species)
    assert moved >= 20  # an off-centre crystal is not invariant under most rotations


def test_rotate_array_on_torch_tensors(off_centre):
    import torch

    grid = encode(off_centre)
    for rotation in (5, 17):
        tensor = rotate_array(torch.from_numpy(grid.density), rotation)
        np.testing.assert_array_equal(tensor.numpy(), rotate_array(grid.density, rotation))


def test_ionic_radii_use_shannon_with_guessed_oxidation_states():
    srtio3 = Structure(
        Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )  # fmt: skip
    sources = radius_sources(srtio3)
    assert sources == {"Sr": "shannon Sr+2", "Ti": "shannon Ti+4", "O": "shannon O-2"}
    radii = ionic_radii(srtio3)
    assert radii["Sr"] > radii["Ti"] and radii["O"] > radii["Ti"] > 0.5
    # an intermetallic has no charge-neutral guess: documented fallback to the atomic radius
    cu3au = Structure(
        Lattice.cubic(3.75), ["Au", "Cu", "Cu", "Cu"],
        [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )  # fmt: skip
    assert set(radius_sources(cu3au).values()) == {"atomic radius (no oxidation state fits)"}


def test_bad_input_is_rejected_with_a_clear_error(off_centre):
    tetragonal = Structure(Lattice.tetragonal(4.0, 5.0), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    with pytest.raises(VoxelEncodingError, match="not cubic"):
        encode(tetragonal)
    monoclinic = Structure(
        Lattice.from_parameters(4, 4, 4, 90, 95, 90), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]
    )
    with pytest.raises(ValueError, match="not cubic"):
        encode(monoclinic)
    big = off_centre * (3, 3, 3)  # 135 sites
    with pytest.raises(VoxelEncodingError, match="135 sites > max_atoms=40"):
        encode(big)
    unknown = Structure(Lattice.cubic(4.0), ["Na", DummySpecies("X")], [[0, 0, 0], [0.5] * 3])
    with pytest.raises(VoxelEncodingError, match="unknown element"):
        encode(unknown)
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]])
    with pytest.raises(VoxelEncodingError, match="disordered"):
        encode(disordered)


def test_encode_many_stacks_and_skips(perov):
    structures = [s for _, s in perov[:6]]
    bad = Structure(Lattice.tetragonal(4.0, 5.0), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    batch = encode_many([*structures[:3], bad, *structures[3:]], skip_errors=True)
    assert len(batch) == 6 and list(batch.index) == [0, 1, 2, 4, 5, 6]
    assert set(batch.errors) == {3} and "not cubic" in batch.errors[3]
    assert batch.density.shape == (6, 32, 32, 32) and batch.coords.shape == (6, 32, 32, 32, 3)
    for row, structure in enumerate(structures):
        single = encode(structure)
        np.testing.assert_array_equal(batch.species[row], single.species)
        np.testing.assert_array_equal(batch.density[row], single.density)
    with pytest.raises(VoxelEncodingError, match="structure 3"):
        encode_many([*structures[:3], bad])


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("CRYSTALLOOP_VOXEL_N_GRID", "24")
    settings = VoxelSettings()
    assert settings.n_grid == 24
    grid = encode(Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3]), settings)
    assert grid.species.shape == (24, 24, 24)


def test_dataset_round_trip_on_disk(perov, tmp_path):
    import torch

    from generators.voxel.dataset import VoxelDataset, build_dataset

    records = [
        Record(structure, {"formation_energy_per_atom": float(i)}, sid, "perov_5")
        for i, (sid, structure) in enumerate(perov[:8])
    ]
    bad = Structure(Lattice.tetragonal(4.0, 5.0), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    records.insert(2, Record(bad, {}, "tetragonal", "test"))
    out = tmp_path / "voxels.h5"
    info = build_dataset(records, out, property_key="formation_energy_per_atom", progress=False)
    assert info["written"] == 8 and info["skipped_reasons"].keys() == {"tetragonal"}
    dataset = VoxelDataset(out)
    assert len(dataset) == 8 and dataset.property_key == "formation_energy_per_atom"
    assert dataset.ids[2] == perov[2][0]
    item = dataset[2]
    expected = encode(perov[2][1])
    np.testing.assert_array_equal(item["species"].numpy(), expected.species)
    np.testing.assert_allclose(item["density"].numpy(), expected.density)
    np.testing.assert_allclose(item["coords"].numpy(), expected.coords, rtol=1e-6)
    assert float(item["property"]) == 2.0
    assert set(dataset.species_list) >= set(perov[2][1].atomic_numbers)
    rotated = VoxelDataset(out, rotate=True, seed=1)
    sample = rotated[2]
    assert torch.equal(torch.sort(sample["species"].flatten()).values,
                       torch.sort(item["species"].flatten()).values)  # fmt: skip
    batch = next(iter(torch.utils.data.DataLoader(rotated, batch_size=4)))
    assert batch["density"].shape == (4, 32, 32, 32)


def test_build_command_writes_a_readable_file(perov_csv: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from agent.cli import app
    from generators.voxel.dataset import VoxelDataset

    small = tmp_path / "perov_head.csv"
    pd.read_csv(perov_csv, nrows=5).to_csv(small, index=False)
    out = tmp_path / "perov.h5"
    args = ["voxel", "build", str(small), "--out", str(out), "--as-given"]
    result = CliRunner().invoke(app, [*args, "--property", "formation_energy_per_atom"])
    assert result.exit_code == 0, result.output
    assert len(VoxelDataset(out)) == 5
    bad = CliRunner().invoke(app, [*args, "--property", "no_such_property"])
    assert bad.exit_code == 1 and "no_such_property" in bad.output


def test_fast_oxidation_guesses_equal_pymatgen(perov_csv: Path):
    from pymatgen.core import Composition

    from generators.voxel.encode import oxidation_state_guesses

    formulas = list(pd.read_csv(perov_csv, usecols=["formula"], nrows=150).formula)
    formulas += ["Fe3O4", "Cu3Au", "Fe", "Ba2LiOsO6", "Cs2PtI6", "H3N", "U2C3", "Mn3O4"]
    for formula in formulas:
        composition = Composition(formula)
        assert oxidation_state_guesses(composition) == composition.oxi_state_guesses(
            max_sites=-1
        ), formula
