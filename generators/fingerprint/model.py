"""A conditional VAE in fingerprint space that also decodes the composition.

Why these parts:
- an MLP is enough: the fingerprint is already invariant to symmetry and atom order, so the
  network has none of that to learn (Fung et al. use an MLP CVAE on ACSF as well);
- the decoder has two composition heads beside the fingerprint head: an element per slot
  and a site count per slot (0 = slot empty), so a sample is fully specified before the
  inversion needs it;
- the condition (a formation-energy decile) is a one-hot input of encoder and decoder, and the
  sampler draws latents from a Gaussian fitted per decile to the training posteriors, so the
  condition moves where samples come from and not only how they are decoded.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel
from torch import nn


class ModelConfig(BaseModel):
    dim: int
    n_conditions: int = 10
    latent_dim: int = 32
    hidden: tuple[int, ...] = (512, 256)
    n_elements: int
    n_slots: int
    max_count: int = 10
    dropout: float = 0.0


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.SiLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class FingerprintVAE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        hidden = list(c.hidden)
        composition = c.n_slots * (c.n_elements + c.max_count + 1)
        self.encoder = _mlp([c.dim + c.n_conditions + composition, *hidden], c.dropout)
        self.to_latent = nn.Linear(hidden[-1], 2 * c.latent_dim)
        self.decoder = _mlp([c.latent_dim + c.n_conditions, *reversed(hidden)], c.dropout)
        self.fp_head = nn.Linear(hidden[0], c.dim)
        self.element_head = nn.Linear(hidden[0], c.n_slots * c.n_elements)
        self.count_head = nn.Linear(hidden[0], c.n_slots * (c.max_count + 1))

    def condition(self, deciles: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(deciles, self.config.n_conditions).float()

    def composition(self, elements: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """One-hot element (zeros for an empty slot) and site count of every slot, flattened:
        the encoder sees the composition, so a latent means a crystal, not only a shape."""
        c = self.config
        el = nn.functional.one_hot(elements.clamp(min=0), c.n_elements).float()
        el = el * (elements >= 0)[..., None]
        ct = nn.functional.one_hot(counts.clamp(0, c.max_count), c.max_count + 1).float()
        return torch.cat([el.flatten(1), ct.flatten(1)], -1)

    def encode(
        self, x: torch.Tensor, cond: torch.Tensor, composition: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.to_latent(self.encoder(torch.cat([x, cond, composition], -1)))
        mu, logvar = h.chunk(2, -1)
        return mu, logvar.clamp(-12, 6)

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        h = self.decoder(torch.cat([z, cond], -1))
        return {
            "fingerprint": self.fp_head(h),
            "element_logits": self.element_head(h).view(-1, c.n_slots, c.n_elements),
            "count_logits": self.count_head(h).view(-1, c.n_slots, c.max_count + 1),
        }

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, composition: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x, cond, composition)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return {"mu": mu, "logvar": logvar, **self.decode(z, cond)}


def vae_loss(
    out: dict[str, torch.Tensor],
    x: torch.Tensor,
    elements: torch.Tensor,
    counts: torch.Tensor,
    beta: float,
    composition_weight: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed-over-dimensions reconstruction + beta KL + cross-entropies of the composition
    heads (elements only where the slot is occupied, -1 elsewhere)."""
    mse = ((out["fingerprint"] - x) ** 2).sum(1).mean()
    kl = (-0.5 * (1 + out["logvar"] - out["mu"] ** 2 - out["logvar"].exp())).sum(1).mean()
    el = nn.functional.cross_entropy(
        out["element_logits"].flatten(0, 1), elements.flatten(), ignore_index=-1
    )
    ct = nn.functional.cross_entropy(out["count_logits"].flatten(0, 1), counts.flatten())
    loss = mse + beta * kl + composition_weight * (el + ct) * elements.shape[1]
    parts = {"mse": float(mse.detach()) / x.shape[1], "kl": float(kl.detach())}
    parts |= {"ce_el": float(el.detach()), "ce_ct": float(ct.detach())}
    return loss, parts
