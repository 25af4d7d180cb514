"""Conditional deep-feature-consistent VAE over 4-channel voxel grids.

Input channels: scaled density plus the three Cartesian coordinate channels ("coordinate
convolution": the network sees where each voxel is, and the cell length is read back from the
reconstructed coordinates). The condition, a one-hot property decile, is concatenated both at the
input (as constant channels) and at the bottleneck, so the decoder cannot ignore it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class VAEConfig:
    """Architecture of the VAE; stored in every checkpoint so it can be rebuilt."""

    n_grid: int = 32
    in_channels: int = 4
    n_conditions: int = 10
    latent_dim: int = 256
    channels: tuple[int, ...] = (8, 16, 32, 64)
    convs_per_block: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VAEConfig:
        data = dict(data)
        data["channels"] = tuple(data["channels"])
        return cls(**data)

    @property
    def bottleneck_grid(self) -> int:
        return self.n_grid // 2 ** (len(self.channels) - 1)


def _block(c_in: int, c_out: int, n_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [
            nn.Conv3d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm3d(c_out),
            nn.LeakyReLU(0.2),
        ]
    return nn.Sequential(*layers)


class ConditionalVAE(nn.Module):
    """(B,4,n,n,n) grid + (B,10) one-hot condition -> reconstruction, mu, logvar."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        cfg = self.config = config or VAEConfig()
        if cfg.n_grid % 2 ** (len(cfg.channels) - 1):
            raise ValueError(
                f"n_grid={cfg.n_grid} must be divisible by 2^{len(cfg.channels) - 1} "
                f"for {len(cfg.channels)} encoder blocks"
            )
        ch, k = cfg.channels, cfg.convs_per_block
        self.encoder = nn.ModuleList()
        c_prev = cfg.in_channels + cfg.n_conditions
        for c in ch:
            self.encoder.append(_block(c_prev, c, k))
            c_prev = c
        g = cfg.bottleneck_grid
        self._flat = ch[-1] * g**3
        self.fc_mu = nn.Linear(self._flat + cfg.n_conditions, cfg.latent_dim)
        self.fc_logvar = nn.Linear(self._flat + cfg.n_conditions, cfg.latent_dim)
        self.fc_decode = nn.Linear(cfg.latent_dim + cfg.n_conditions, self._flat)
        self.decoder = nn.ModuleList()
        rev = list(reversed(ch))
        for c_in, c_out in zip(rev[:-1], rev[1:], strict=True):
            self.decoder.append(_block(c_in, c_out, k))
        self.out_block = _block(ch[0], ch[0], k)
        self.head = nn.Conv3d(ch[0], cfg.in_channels, 1)

    def encode(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[-1]
        cond_map = condition[:, :, None, None, None].expand(-1, -1, n, n, n)
        h = torch.cat([x, cond_map], dim=1)
        for i, block in enumerate(self.encoder):
            if i > 0:
                h = F.max_pool3d(h, 2)
            h = block(h)
        h = torch.cat([h.flatten(1), condition], dim=1)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        g = self.config.bottleneck_grid
        h = F.leaky_relu(self.fc_decode(torch.cat([z, condition], dim=1)), 0.2)
        h = h.view(z.shape[0], self.config.channels[-1], g, g, g)
        for block in self.decoder:
            h = block(h)
            h = F.interpolate(h, scale_factor=2, mode="trilinear", align_corners=False)
        return self.head(self.out_block(h))

    @torch.no_grad()
    def best_condition(self, x: torch.Tensor) -> np.ndarray:
        """Per input, the condition decile under which the model reconstructs it best: the
        condition of a crystal whose property is unknown on the model's scale."""
        k = self.config.n_conditions
        cond = one_hot_decile(list(range(k)), k).to(x.device)
        out = []
        for xi in x:
            xs = xi[None].expand(k, -1, -1, -1, -1)
            mu, _ = self.encode(xs, cond)
            out.append(int((self.decode(mu, cond) - xs).pow(2).flatten(1).mean(1).argmin()))
        return np.asarray(out, dtype=np.int64)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def forward(
        self, x: torch.Tensor, condition: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, condition)
        z = self.reparameterize(mu, logvar) if self.training else mu
        return self.decode(z, condition), mu, logvar


def one_hot_decile(deciles: torch.Tensor | list[int], n_conditions: int = 10) -> torch.Tensor:
    """One-hot condition vectors; rejects deciles outside 0..n-1 with a clear message."""
    d = torch.as_tensor(deciles, dtype=torch.long).reshape(-1)
    if d.numel() and (int(d.min()) < 0 or int(d.max()) >= n_conditions):
        bad = [int(v) for v in d if v < 0 or v >= n_conditions]
        raise ValueError(f"condition decile must be in 0..{n_conditions - 1}, got {bad[:5]}")
    return F.one_hot(d, n_conditions).float()


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Put every batch-norm layer of `model` in eval mode (after `model.train()`): the layers
    then normalise with their running statistics and stop updating them. A model trained with
    batch statistics is sampled with running ones; training with these frozen optimises what
    sampling actually computes, and a fine-tune on a few unusual crystals cannot drag the
    statistics away from the training set's."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model
