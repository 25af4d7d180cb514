"""The tensors the voxel models see, built the same way at training and at sampling time.

A model only works on inputs scaled and laid out as in its training: the density divided by
the stored density scale, coordinate channels built by the encoder's rule (voxel (i, j, k) at
(i, j, k)/n * a) over the stored coordinate scale, species mapped to the model's class list.
Training, sampling, the latent prior and the decoding tuning all build their inputs here, so
none of them can drift from what the model was trained on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from generators.voxel.data_cache import VoxelData


def density_scale_of(data: VoxelData, index: np.ndarray) -> float:
    """Input scale of the density channel: 99th percentile of per-structure maxima.

    Deterministic from the training split, so a VAE trained before its UNet exists uses the
    same scale the UNet will.
    """
    per_max = data.density[index].reshape(len(index), -1).max(axis=1)
    return float(np.percentile(per_max, 99))


def vae_input(
    density: np.ndarray,
    lattice: np.ndarray,
    density_scale: float,
    coord_scale: float,
    species: np.ndarray | None = None,
) -> torch.Tensor:
    """(B,4,n,n,n) VAE input: scaled density (B,n,n,n) plus the cubic cells' coordinate channels;
    (B,7,n,n,n) with the species embedding of `species` (Z grids) for a VAE with a species head."""
    dens = torch.from_numpy(density / density_scale).float().unsqueeze(1)
    lat = torch.as_tensor(lattice)
    parts = [dens, coordinate_channels(lat, density.shape[-1], coord_scale)]
    if species is not None:
        from generators.voxel.vae import species_embedding

        parts.append(species_embedding(species))
    return torch.cat(parts, dim=1)


def model_species(config, species: np.ndarray) -> np.ndarray | None:
    """The `species` argument of `vae_input` for a VAE of this config (None: it reads none)."""
    return species if config.species_classes else None


def coordinate_channels(lattice: torch.Tensor, n_grid: int, coord_scale: float) -> torch.Tensor:
    """(B,3,n,n,n) scaled coordinate channels, voxel (i,j,k) at (i,j,k)/n * a (encode.py rule)."""
    axis = torch.arange(n_grid, dtype=torch.float32, device=lattice.device) / n_grid
    a = (lattice.float() / coord_scale)[:, None, None, None]
    b = lattice.shape[0]
    x = (axis[None, :, None, None] * a).expand(b, n_grid, n_grid, n_grid)
    y = (axis[None, None, :, None] * a).expand(b, n_grid, n_grid, n_grid)
    z = (axis[None, None, None, :] * a).expand(b, n_grid, n_grid, n_grid)
    return torch.stack([x, y, z], dim=1)


def class_lookup(elements: list[int]) -> np.ndarray:
    """Z -> class index (0 = empty or an element the model has not seen)."""
    lut = np.zeros(128, dtype=np.int64)
    for i, z in enumerate(elements):
        lut[z] = i + 1
    return lut


def lattice_from_channels(coords: torch.Tensor, coord_scale: float) -> torch.Tensor:
    """Least-squares cell length from (B,3,n,n,n) scaled coordinate channels (mean of 3 axes)."""
    n = coords.shape[-1]
    idx = torch.arange(n, dtype=coords.dtype, device=coords.device)
    centred = idx - idx.mean()
    slopes = []
    for axis in range(3):
        other = tuple(2 + a for a in range(3) if a != axis)
        profile = coords[:, axis].mean(dim=tuple(o - 1 for o in other))
        slopes.append((profile * centred).sum(-1) / (centred * centred).sum())
    return torch.stack(slopes, dim=1).mean(dim=1) * n * coord_scale
