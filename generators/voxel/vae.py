"""Conditional deep-feature-consistent VAE over 4-channel voxel grids.

Input channels: scaled density plus the three Cartesian coordinate channels ("coordinate
convolution": the network sees where each voxel is, and the cell length is read back from the
reconstructed coordinates). The condition, a one-hot property decile, is concatenated both at the
input (as constant channels) and at the bottleneck, so the decoder cannot ignore it.

With `species_classes` the model also carries the species matrix itself: the encoder sees a
3-channel embedding of each voxel's element (`species_embedding`), and a second decoder from
the same latent (its own upsampling path, `species_channels`) gives per-voxel class logits
plus an occupancy logit, the same output the paper's UNet gives from a density. It is a
decoder of its own because the density decoder's full-resolution features (8 channels, a
3-voxel view) do not say where the anions are: a head trained on them alone stayed at the
all-empty occupancy baseline (68 %), as a density threshold would. The paper's VAE has to encode species only
through Z-weighted Gaussians, and its reconstruction error is larger than the density change of
swapping neighbouring anions (model card, "species signal"), so no reader of its output can
recover them; carried explicitly, they are what the loss asks the latent to keep.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

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
    species_classes: int = 0  # species head's classes: elements + 1 (class 0 = empty); 0 = none
    # the species decoder's channels per resolution, bottleneck -> full grid; () = the
    # density decoder's, at least 16 (classes need more than the density's 8 at full grid)
    species_channels: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VAEConfig:
        data = dict(data)
        data["channels"] = tuple(data["channels"])
        if "species_channels" in data:
            data["species_channels"] = tuple(data["species_channels"])
        return cls(**data)

    @property
    def encoder_channels(self) -> int:
        """Grid channels the encoder reads: the reconstructed ones, plus the species embedding."""
        return self.in_channels + (EMBEDDING_CHANNELS if self.species_classes else 0)

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


EMBEDDING_CHANNELS = 3


def species_embedding(species: np.ndarray) -> torch.Tensor:
    """(B,3,n,n,n) encoder channels of a (B,n,n,n) atomic-number grid: Z/100, period/7 and
    group/18 of each voxel's element, 0 where empty.

    Three numbers rather than a one-hot over the classes keep the encoder's first convolution
    as cheap as the density's, and together they tell every element apart (the f-block shares
    group 3, Z separates it); neighbouring anions (N, O, F) differ by a whole group.
    """
    lut = embedding_table()
    return torch.from_numpy(lut[np.asarray(species, dtype=np.int64)]).movedim(-1, 1)


@lru_cache(maxsize=1)
def embedding_table() -> np.ndarray:
    """(119, 3) rows of `species_embedding`; row 0 (empty) is zero."""
    from pymatgen.core import Element

    table = np.zeros((119, EMBEDDING_CHANNELS), dtype=np.float32)
    for z in range(1, 119):
        el = Element.from_Z(z)
        table[z] = (z / 100.0, el.row / 7.0, (el.group or 3) / 18.0)
    return table


class ConditionalVAE(nn.Module):
    """(B,4,n,n,n) grid + (B,10) one-hot condition -> reconstruction, mu, logvar.

    With a species head the encoder's input also has the species embedding (B,7,n,n,n in all);
    `decode` still returns the 4 reconstructed channels, `decode_species` adds the head's input.
    """

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
        c_prev = cfg.encoder_channels + cfg.n_conditions
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
        if cfg.species_classes:
            sc = cfg.species_channels or tuple(max(c, 16) for c in reversed(ch))
            if len(sc) != len(ch):
                raise ValueError(
                    f"species_channels needs one entry per resolution ({len(ch)}), got {sc}"
                )
            self.species_decoder = nn.ModuleList(
                _block(c_in, c_out, k) for c_in, c_out in zip((ch[-1], *sc[:-1]), sc, strict=True)
            )
            # the UNet head's layout: every class (0 = empty, unused), then occupancy
            self.species_head = nn.Conv3d(sc[-1], cfg.species_classes + 1, 1)

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

    def _bottleneck(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        g = self.config.bottleneck_grid
        h = F.leaky_relu(self.fc_decode(torch.cat([z, condition], dim=1)), 0.2)
        return h.view(z.shape[0], self.config.channels[-1], g, g, g)

    @staticmethod
    def _upsample(blocks: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(blocks):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="trilinear", align_corners=False)
            h = block(h)
        return h

    def decode(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self._density(self._bottleneck(z, condition))

    def _density(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.decoder:
            h = block(h)
            h = F.interpolate(h, scale_factor=2, mode="trilinear", align_corners=False)
        return self.head(self.out_block(h))

    def decode_species(
        self, z: torch.Tensor, condition: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction and the species decoder's features (B,C,n,n,n); the 1x1
        `species_head` turns them into logits (`unet.classify_voxels` only where occupied)."""
        if not self.config.species_classes:
            raise ValueError("this VAE has no species head (config.species_classes = 0)")
        h = self._bottleneck(z, condition)
        return self._density(h), self._upsample(self.species_decoder, h)

    def species_logits(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(species logits (B,C,n,n,n), occupancy logit (B,n,n,n)) from `decode_species`."""
        out = self.species_head(features)
        return out[:, :-1], out[:, -1]

    @torch.no_grad()
    def best_condition(self, x: torch.Tensor) -> np.ndarray:
        """Per input, the condition decile under which the model reconstructs it best: the
        condition of a crystal whose property is unknown on the model's scale."""
        k = self.config.n_conditions
        cond = one_hot_decile(list(range(k)), k).to(x.device)
        out = []
        c = self.config.in_channels
        for xi in x:
            xs = xi[None].expand(k, -1, -1, -1, -1)
            mu, _ = self.encode(xs, cond)
            err = (self.decode(mu, cond) - xs[:, :c]).pow(2).flatten(1).mean(1)
            out.append(int(err.argmin()))
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


def with_species_head(model: ConditionalVAE, n_classes: int) -> ConditionalVAE:
    """A copy of a trained paper-style VAE with the species embedding and head added.

    Every trained weight is kept; the encoder's first convolution gets zero weights for the
    new embedding channels, so the copy computes exactly what the original did until training
    moves them, and only the new head starts from scratch. That lets a long-trained density
    model learn species in the minutes a CPU has instead of starting over.
    """
    if model.config.species_classes:
        raise ValueError("this VAE already has a species head")
    config = VAEConfig.from_dict(model.config.to_dict() | {"species_classes": int(n_classes)})
    wide = ConditionalVAE(config)
    state = wide.state_dict()
    for key, value in model.state_dict().items():
        if state[key].shape == value.shape:
            state[key] = value.clone()
    first = "encoder.0.0.weight"  # (out, in_channels + conditions, 3, 3, 3)
    old = model.state_dict()[first]
    c = model.config.in_channels
    new = torch.zeros_like(state[first])
    new[:, :c] = old[:, :c]
    new[:, c + EMBEDDING_CHANNELS :] = old[:, c:]
    state[first] = new
    wide.load_state_dict(state)
    return wide


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
