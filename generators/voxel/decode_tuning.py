"""Decoding settings for generated grids, tuned per model on its own training split.

Why: the watershed settings that make encode -> decode lossless (marker smoothing 1 voxel,
regions >= 4 voxels) over-split the blurred atoms that a VAE + UNet produce: with them the
shipped model decoded 3.3 extra sites per perovskite. Both settings only act on noisy grids
(an encoded grid's atoms are separate, compact balls), so the best values depend on the model,
not on the representation. A grid search on training structures (never the held-out ones) picks
them by the mean EMD of encode -> VAE -> UNet -> decode; they are stored in the VAE checkpoint
and `VoxelGenerator` applies them to everything it decodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generators.splits import assign_deciles
from generators.voxel.checkpoints import save_checkpoint
from generators.voxel.data_cache import VoxelData
from generators.voxel.inputs import model_species, vae_input
from generators.voxel.settings import VoxelSettings
from generators.voxel.vae import one_hot_decile

TUNED_FIELDS = ("marker_smoothing_voxels", "min_region_voxels")
DEFAULT_GRID: dict[str, tuple] = {
    "marker_smoothing_voxels": (1.0, 2.0, 3.0, 4.0),
    "min_region_voxels": (4, 16, 32, 64, 128),
}


def training_index(generator: Any, data: VoxelData, limit: int) -> np.ndarray:
    """Up to `limit` structures of `data` that neither network held out, with the property."""
    held_out = set(generator.vae_state["data"]["val_ids"]) | set(
        generator.unet_state["data"]["val_ids"]
    )
    index = [
        i
        for i, ident in enumerate(data.ids)
        if ident not in held_out and not np.isnan(data.values[i])
    ]
    if not index:
        raise ValueError("no training structures with the conditioning property in this data")
    return np.asarray(index[:limit])


@torch.no_grad()
def reconstructions(
    generator: Any, data: VoxelData, index: np.ndarray, batch: int = 20
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(species, confidence, cell length) of encode -> VAE (posterior mean) -> species (the
    generator's decoder: UNet or species head), per structure."""
    deciles = assign_deciles(data.values[index], generator.decile_edges)
    out = []
    for s in range(0, len(index), batch):
        idx = index[s : s + batch]
        x = vae_input(
            data.density[idx],
            data.lattice[idx],
            generator.density_scale,
            generator.coord_scale,
            model_species(generator.vae.config, data.species[idx]),
        )
        cond = one_hot_decile(deciles[s : s + batch], generator.n_deciles).to(generator.device)
        mu, _ = generator.vae.encode(x.to(generator.device), cond)
        _, seg = generator.decode_segment(mu, cond)
        species, confidence = seg.species, seg.confidence
        out += [(species[i], confidence[i], float(data.lattice[j])) for i, j in enumerate(idx)]
    return out


def score(
    outputs: Sequence[tuple[np.ndarray, np.ndarray, float]],
    truths: Sequence[Any],
    settings: VoxelSettings,
) -> dict[str, float]:
    """Mean EMD (A) and |delta N| of decoding `outputs` with `settings`, against `truths`."""
    from pymatgen.core import Structure

    from generators.metrics import delta_n_sites, emd
    from generators.voxel.unet_decode import decode_voxels

    emds, dns = [], []
    for (species, confidence, length), true in zip(outputs, truths, strict=True):
        pred = decode_voxels(species, confidence, length, settings).structure
        emds.append(emd(pred if pred is not None else Structure(true.lattice, [], []), true))
        dns.append(delta_n_sites(pred, true))
    return {"mean_emd_A": float(np.mean(emds)), "mean_abs_delta_n": float(np.mean(dns))}


def tune_decoding(
    generator: Any,
    data: VoxelData,
    limit: int = 200,
    grid: dict[str, Sequence] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Grid search of `TUNED_FIELDS` on training structures; returns the choice and the table."""
    from generators.voxel.decode import decode
    from generators.voxel.encode import coordinate_grid

    grid = dict(grid or DEFAULT_GRID)
    unknown = set(grid) - set(TUNED_FIELDS)
    if unknown:
        raise ValueError(f"only {', '.join(TUNED_FIELDS)} can be tuned, got {sorted(unknown)}")
    index = training_index(generator, data, limit)
    clean = VoxelSettings(**(data.voxel | {"n_grid": generator.n_grid}))
    truths = []  # the encoded species matrix decodes losslessly to the training crystal
    for i in index:
        coords = coordinate_grid([float(data.lattice[i])] * 3, generator.n_grid)
        truths.append(decode(data.species[i], coords, clean).structure)
    outputs = reconstructions(generator, data, index)
    base = {f: getattr(clean, f) for f in TUNED_FIELDS}
    combos = [dict(zip(grid, values, strict=True)) for values in product(*grid.values())]
    table = []
    for k, combo in enumerate(combos):
        settings = generator.voxel_settings.model_copy(update=base | combo)
        table.append(base | combo | score(outputs, truths, settings))
        if progress is not None:
            progress(k + 1, len(combos))
    best = min(table, key=lambda row: (row["mean_emd_A"], row["mean_abs_delta_n"]))
    baseline = next((row for row in table if all(row[f] == base[f] for f in base)), None)
    return {
        "settings": {f: best[f] for f in TUNED_FIELDS},
        "objective": "mean EMD of encode -> VAE (posterior mean) -> UNet -> decode",
        "n_structures": len(index),
        "best": best,
        "representation_defaults": baseline,
        "table": table,
    }


def add_decoding_settings(
    vae_path: str | Path,
    data: VoxelData,
    unet_path: str | Path | None = None,
    out: str | Path | None = None,
    limit: int = 200,
    grid: dict[str, Sequence] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Tune on the checkpoint's training split and store the result in the VAE checkpoint."""
    from generators.voxel.sample import VoxelGenerator

    generator = VoxelGenerator.load(vae_path, unet_path=unet_path, prior="standard")
    result = tune_decoding(generator, data, limit, grid, progress)
    result["unet_version"] = generator.unet_state["model_version"]
    state = generator.vae_state  # the checkpoint as loaded, weights untouched
    state["decoding"] = result
    save_checkpoint(Path(out or vae_path), state)
    return result
