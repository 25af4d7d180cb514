"""The 24 proper rotations of the cube, as data augmentation of voxel grids.

This is the one rotation table: the HDF5 dataset, the training loops (`rotate_batch`, model
layout (B, C, n, n, n)) and the tests all index `ROTATIONS`, so rotation number r means the
same rotation everywhere and a seed gives the same augmentation whichever path draws it.

Voxel (i, j, k) sits at fractional position (i, j, k)/n, so a rotation R about the origin maps
voxel index v to R v (mod n): an exact permutation of voxels, no interpolation. The same R
rotates a structure's fractional coordinates, so `encode(rotate_structure(s, R))` equals
`rotate_grid(encode(s), R)` (tested). The coordinate grid is not permuted but rebuilt from the
rotated lattice lengths, so it stays a valid, monotonic coordinate grid.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
from pymatgen.core import Lattice, Structure

from generators.voxel.encode import VoxelGrid, coordinate_grid


def _proper_rotations() -> np.ndarray:
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3), dtype=np.int64)
            m[range(3), perm] = signs
            if round(np.linalg.det(m)) == 1:
                mats.append(m)
    return np.array(mats)


ROTATIONS: np.ndarray = _proper_rotations()  # (24, 3, 3) signed permutation matrices, det +1
ROTATIONS.setflags(write=False)


@lru_cache(maxsize=256)
def _source_index(rotation: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For output voxel j, the input voxel R^T j mod n it comes from (R orthogonal)."""
    r = ROTATIONS[rotation]
    grid = np.indices((n, n, n)).reshape(3, -1)
    source = np.mod(r.T @ grid, n).reshape(3, n, n, n)
    return source[0], source[1], source[2]


def rotate_array(array, rotation: int):
    """Rotate the first three (spatial) axes of a numpy array or torch tensor of shape
    (n, n, n, ...) by rotation number `rotation` (0..23; 0 is the identity)."""
    n = array.shape[0]
    i, j, k = _source_index(int(rotation), n)
    if not isinstance(array, np.ndarray):  # torch tensor: index with LongTensors
        import torch

        i, j, k = (torch.as_tensor(x, device=array.device) for x in (i, j, k))
    return array[i, j, k]


def rotate_spatial(array, rotation: int):
    """Rotate the last three (spatial) axes of a numpy array or torch tensor of shape
    (..., n, n, n), the models' channels-first layout, by rotation number `rotation`."""
    n = array.shape[-1]
    i, j, k = _source_index(int(rotation), n)
    if not isinstance(array, np.ndarray):
        import torch

        i, j, k = (torch.as_tensor(x, device=array.device) for x in (i, j, k))
    return array[..., i, j, k]


def rotate_batch(batch, rotations: np.ndarray):
    """Rotate item b of a (B, ..., n, n, n) torch tensor by `rotations[b]` (all 0: unchanged)."""
    if not np.any(rotations):
        return batch
    import torch

    return torch.stack([rotate_spatial(batch[b], int(r)) for b, r in enumerate(rotations)])


def rotate_lattice(lattice: np.ndarray, rotation: int) -> np.ndarray:
    """Cell lengths after the rotation (a permutation of a, b, c)."""
    return np.abs(ROTATIONS[rotation]) @ np.asarray(lattice)


def rotate_grid(grid: VoxelGrid, rotation: int) -> VoxelGrid:
    """Rotate density, species and mask; rebuild the coordinate grid for the rotated cell."""
    lattice = rotate_lattice(grid.lattice, rotation).astype(np.float32)
    return VoxelGrid(
        density=rotate_array(grid.density, rotation),
        species=rotate_array(grid.species, rotation),
        mask=rotate_array(grid.mask, rotation),
        coords=coordinate_grid(lattice, grid.n_grid),
        lattice=lattice,
    )


def rotate_structure(structure: Structure, rotation: int) -> Structure:
    """The structure rotated the same way: fractional coordinates f -> R f (orthogonal cells)."""
    r = ROTATIONS[rotation]
    lengths = rotate_lattice(np.array(structure.lattice.abc), rotation)
    return Structure(
        Lattice.from_parameters(*lengths, 90.0, 90.0, 90.0),
        structure.species,
        np.mod(structure.frac_coords @ r.T, 1.0),
    )


def random_rotation(rng: np.random.Generator) -> int:
    return int(rng.integers(len(ROTATIONS)))
