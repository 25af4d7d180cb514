"""A latent prior fitted to the training set's posterior means, for random sampling.

Why: the paper samples z ~ N(0, I). A VAE whose KL weight is small (beta = 5e-4 on summed
losses) keeps its posteriors away from N(0, I): on the shipped model the training posterior means
have norm ~35 against ~16 for N(0, I) draws, and N(0, I) latents decode to a few degenerate
cells. A full-covariance Gaussian fitted to the posterior means ("ex-post density estimation",
Ghosh et al., ICLR 2020) samples where the decoder has been trained. It is stored in the VAE
checkpoint; `VoxelGenerator(prior=...)` chooses between it and N(0, I).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from generators.splits import assign_deciles
from generators.voxel.checkpoints import build_vae, load_checkpoint, save_checkpoint
from generators.voxel.data_cache import VoxelData
from generators.voxel.inputs import vae_input
from generators.voxel.vae import one_hot_decile


@torch.no_grad()
def posterior_means(state: dict[str, Any], data: VoxelData, batch: int = 50) -> torch.Tensor:
    """mu(x | own decile) of every training-split structure (the ids not held out)."""
    vae = build_vae(state).eval()
    held_out = set(state["data"]["val_ids"])
    index = np.array([i for i, ident in enumerate(data.ids) if ident not in held_out])
    keep = ~np.isnan(data.values[index])
    index = index[keep]
    if len(index) == 0:
        raise ValueError("no training structures with the conditioning property in this data")
    edges = np.asarray(state["decile_edges"])
    deciles = assign_deciles(data.values[index], edges)
    out = []
    for s in range(0, len(index), batch):
        idx = index[s : s + batch]
        x = vae_input(
            data.density[idx], data.lattice[idx], state["density_scale"], state["coord_scale"]
        )
        mu, _ = vae.encode(x, one_hot_decile(deciles[s : s + batch], vae.config.n_conditions))
        out.append(mu)
    return torch.cat(out)


def fit_latent_prior(mu: torch.Tensor, shrinkage: float = 1e-3) -> dict[str, Any]:
    """Mean and Cholesky factor of the posterior means' covariance (+ shrinkage on the diagonal)."""
    if len(mu) < 2:
        raise ValueError("fitting a latent prior needs at least 2 posterior means")
    mu = mu.double()
    cov = torch.cov(mu.T) + shrinkage * torch.eye(mu.shape[1], dtype=mu.dtype)
    return {
        "kind": "gaussian-full-covariance",
        "mean": mu.mean(0).float(),
        "scale_tril": torch.linalg.cholesky(cov).float(),
        "n_fitted": len(mu),
        "shrinkage": shrinkage,
    }


def add_latent_prior(vae_path: str | Path, data: VoxelData, out: str | Path | None = None) -> dict:
    """Fit the prior on the checkpoint's own training split and store it in the checkpoint."""
    state = load_checkpoint(vae_path, "vae")
    prior = fit_latent_prior(posterior_means(state, data))
    state["latent_prior"] = prior
    save_checkpoint(Path(out or vae_path), state)
    return prior
