"""Loss terms of the UNet and the DFC-VAE, kept separate so tests can check each one.

Sums run over a sample's voxels/features and are averaged over the batch: with per-sample sums
the paper's beta (5e-4) weighs the KL term against the reconstruction as intended; with
per-voxel means the KL term would swamp a 32^3 reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F


def class_weights(counts: Sequence[int] | np.ndarray, power: float = 1.0) -> torch.Tensor:
    """Cross-entropy weights proportional to counts**-power; class 0 (empty) gets 0.

    power = 1 is the paper's inverse-frequency weighting. With ~50 elements it weighs a rare
    element's voxel thousands of times more than an oxygen voxel, so a briefly trained model
    gives up the common anions, which are most of the voxels; power < 1 tempers that.
    Normalised so the mean weight over the non-empty classes present is 1; absent classes get 0.
    """
    c = np.asarray(counts, dtype=np.float64)
    w = np.zeros_like(c)
    present = c > 0
    present[0] = False
    w[present] = c[present] ** -power
    if present.any():
        w[present] /= w[present].mean()
    return torch.as_tensor(w, dtype=torch.float32)


def unet_loss(
    species_logits: torch.Tensor,
    occupancy_logit: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor,
    occupied: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Class-weighted CE on species (empty ignored via weight 0) + BCE on occupancy.

    `target` holds class indices (0 = empty) with shape (B,n,n,n). `occupied` defaults to
    target > 0; pass it when some atoms belong to elements the model has no class for.
    """
    if occupied is None:
        occupied = target > 0
    if (target > 0).any():
        # Weighted mean over occupied voxels only: empty voxels have weight 0 anyway.
        ce = F.cross_entropy(species_logits, target, weight=weights.to(species_logits.device))
    else:
        ce = species_logits.sum() * 0.0
    bce = F.binary_cross_entropy_with_logits(occupancy_logit, occupied.float())
    return {"total": ce + bce, "ce": ce.detach(), "bce": bce.detach()}


def kld(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0,I)) summed over latent dims, mean over batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


def perceptual(
    features: Callable[[torch.Tensor], list[torch.Tensor]],
    recon_density: torch.Tensor,
    true_density: torch.Tensor,
) -> torch.Tensor:
    """Deep-feature consistency: squared distance between frozen-UNet activations.

    Gradients flow through the reconstruction only; the target features need none.
    """
    with torch.no_grad():
        target_feats = features(true_density)
    recon_feats = features(recon_density)
    total = recon_density.new_zeros(())
    for r, t in zip(recon_feats, target_feats, strict=True):
        total = total + (r - t).pow(2).flatten(1).sum(dim=1).mean()
    return total


def vae_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    alpha: float,
    beta: float,
    features: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """MSE + beta*KLD + alpha*perceptual; channel 0 of the grids is the (scaled) density.

    `x` may carry more channels than `recon` (a species embedding the encoder reads but the
    decoder does not rebuild); the MSE runs over the reconstructed ones.
    """
    mse = (recon - x[:, : recon.shape[1]]).pow(2).flatten(1).sum(dim=1).mean()
    kl = kld(mu, logvar)
    if features is not None and alpha > 0:
        perc = perceptual(features, recon[:, :1], x[:, :1])
    else:
        perc = mse.new_zeros(())
    total = mse + beta * kl + alpha * perc
    return {
        "total": total,
        "mse": mse.detach(),
        "kld": kl.detach(),
        "perceptual": perc.detach(),
    }


def vae_objective(
    model: Any,
    x: torch.Tensor,
    condition: torch.Tensor,
    target: torch.Tensor | None,
    alpha: float,
    beta: float,
    features: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
    species_weights: torch.Tensor | None = None,
    species_weight: float = 0.0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """The VAE's training loss on one batch: `vae_loss`, plus for a model with a species head
    (`target` = class indices) weight * n^3 * the UNet's species loss on the head's logits.

    Training and the campaign fine-tune both call this, so a fine-tune optimises what
    training did. The latent is sampled in train mode and the posterior mean in eval mode.
    Returns the loss parts, the reconstruction and the species head's features (or None).
    """
    mu, logvar = model.encode(x, condition)
    z = model.reparameterize(mu, logvar) if model.training else mu
    if target is None:
        recon, feats = model.decode(z, condition), None
    else:
        recon, feats = model.decode_species(z, condition)
    parts = vae_loss(recon, x, mu, logvar, alpha, beta, features)
    if target is not None:
        species = unet_loss(*model.species_logits(feats), target, species_weights)
        n_voxels = target[0].numel()
        parts["total"] = parts["total"] + species_weight * n_voxels * species["total"]
        parts["species_ce"], parts["species_bce"] = species["ce"], species["bce"]
    return parts, recon, feats
