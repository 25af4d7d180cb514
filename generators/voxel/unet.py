"""3D UNet that segments a voxel density map into species and occupancy.

Why a UNet: segmentation needs both local peak shape (which element) and context (is this
voxel part of an atom at all); skip connections keep the 1-voxel resolution that decoding
needs. Its encoder activations double as the "deep features" of the DFC-VAE's perceptual
loss, so `features()` is exposed separately and is cheap (no decoder pass).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class UNetConfig:
    """Architecture of the UNet; stored in every checkpoint so it can be rebuilt."""

    n_classes: int = 2  # empty + elements
    channels: tuple[int, ...] = (8, 16, 32)
    convs_per_block: int = 1
    log_input: bool = True  # add log(density) as a second input channel (see `_inputs`)
    peak_windows: tuple[int, ...] = (5, 9, 17)  # local-maximum channels (see `_inputs`)
    stem_pool: bool = False  # convolve at n/2 and below only; full resolution via 1x1 (cheap)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        data = dict(data)
        data["channels"] = tuple(data["channels"])
        data.setdefault("log_input", False)  # checkpoints written before the log channel
        data["peak_windows"] = tuple(data.get("peak_windows", ()))
        data.setdefault("stem_pool", False)
        return cls(**data)


def conv_block(
    c_in: int, c_out: int, n_convs: int, act: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """Conv3D + BatchNorm + activation, repeated; circular padding because crystals are periodic."""
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [
            nn.Conv3d(
                c_in if i == 0 else c_out, c_out, 3, padding=1, padding_mode="circular", bias=False
            ),
            nn.BatchNorm3d(c_out),
            act(),
        ]
    return nn.Sequential(*layers)


class UNet3D(nn.Module):
    """Density (B,1,n,n,n) -> species logits (B,C,n,n,n) and occupancy logit (B,n,n,n)."""

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = config or UNetConfig()
        ch = self.config.channels
        k = self.config.convs_per_block
        self.down = nn.ModuleList()
        c_prev = 1 + int(self.config.log_input) + 2 * len(self.config.peak_windows)
        for c in ch:
            self.down.append(conv_block(c_prev, c, k))
            c_prev = c
        self.up = nn.ModuleList()
        for c_skip in reversed(ch[:-1]):
            self.up.append(conv_block(c_prev + c_skip, c_skip, k))
            c_prev = c_skip
        if self.config.stem_pool:
            c_in = 1 + int(self.config.log_input) + 2 * len(self.config.peak_windows)
            self.refine = nn.Sequential(
                nn.Conv3d(c_prev + c_in, c_prev, 1, bias=False), nn.BatchNorm3d(c_prev), nn.ReLU()
            )
        self.head = nn.Conv3d(c_prev, self.config.n_classes + 1, 1)

    def _inputs(self, density: torch.Tensor) -> torch.Tensor:
        """Density plus its logarithm.

        Occupancy is "close to a peak relative to that peak's height", and a Z-weighted Gaussian
        peak of any height is a parabola of the same curvature in log space: the log channel
        makes that test local and linear, the linear channel keeps the peak height (= Z).
        The peak channels give, for windows of k voxels, the highest density nearby (~ the
        nearest atom's Z) and the log-depth below it (~ squared distance to that atom in units
        of its Gaussian width). The ionic-radius Gaussians are so wide (1-1.4 A on a 0.13 A
        voxel) that plain 3x3 convolutions need thousands of CPU steps to find these; given
        explicitly, the UNet learns occupancy and species in a few hundred.
        """
        channels = [density]
        log = torch.log(density.clamp_min(0) + 1e-3)
        if self.config.log_input:
            channels.append(log)
        previous, peak = 1, density
        for k in self.config.peak_windows:
            # a k-window max is a (k - previous + 1)-window max of the previous window's max
            # (box sums add): the same values as from the density, at a fraction of the cost
            step = k - previous + 1 if k > previous and (k - previous) % 2 == 0 else k
            peak = periodic_max(peak if step != k else density, step)
            previous = k
            channels += [log - torch.log(peak.clamp_min(0) + 1e-3), peak]
        return torch.cat(channels, dim=1)

    def _encode(self, density: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        inputs = self._inputs(density)
        x = F.avg_pool3d(inputs, 2) if self.config.stem_pool else inputs
        feats = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = F.max_pool3d(x, 2)
            x = block(x)
            feats.append(x)
        return inputs, feats

    def features(self, density: torch.Tensor) -> list[torch.Tensor]:
        """Encoder activations at every resolution (the perceptual-loss feature maps)."""
        return self._encode(density)[1]

    def forward(
        self, density: torch.Tensor, return_hidden: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        x, hidden = self._trunk(density)
        out = self.head(x)
        species_logits, occupancy_logit = out[:, :-1], out[:, -1]
        if return_hidden:
            return species_logits, occupancy_logit, hidden
        return species_logits, occupancy_logit

    def _trunk(self, density: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Full-resolution features before the 1x1 head, and every hidden activation."""
        inputs, feats = self._encode(density)
        x = feats[-1]
        hidden = list(feats)
        for block, skip in zip(self.up, reversed(feats[:-1]), strict=True):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
            hidden.append(x)
        if self.config.stem_pool:
            x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
            x = self.refine(torch.cat([x, inputs], dim=1))
            hidden.append(x)
        return x, hidden

    @torch.no_grad()
    def predict(
        self, density: torch.Tensor, top_k: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, tuple]:
        """Class index per voxel (0 = empty) and the per-voxel probability of the chosen class.

        Occupancy decides empty vs atom; among atoms the empty logit is excluded, because the
        species head is trained with zero weight on empty voxels. With `top_k`, also the k most
        probable classes of every occupied voxel and their probabilities ((B,n,n,n,k) int16 /
        float16, zero where empty), which a joint assignment of a cell's species needs.
        """
        x, _ = self._trunk(density)
        return classify_voxels(x, self.head, top_k)


def classify_voxels(
    x: torch.Tensor, head: nn.Conv3d, top_k: int = 0
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, tuple]:
    """`UNet3D.predict` on the features `x` (B,F,n,n,n) of any 1x1 head laid out as the
    UNet's (species classes without the empty one, then occupancy): the VAE's species head
    is read the same way."""
    weight, bias = head.weight.flatten(1), head.bias  # (C+1, F), (C+1,)
    occupancy_logit = torch.einsum("bf...,f->b...", x, weight[-1]) + bias[-1]
    occupied = occupancy_logit > 0
    # species logits only where an atom is: the 1x1 head is a matmul per voxel, and most
    # voxels are empty (this is where sampling spent half its UNet time)
    feats = x.movedim(1, -1)[occupied]  # (N_occupied, F)
    logits = feats @ weight[1:-1].T + bias[1:-1]  # non-empty classes only
    probs = torch.softmax(logits, dim=1)
    p_best, idx = probs.max(dim=1)
    labels = torch.zeros(occupied.shape, dtype=torch.long, device=x.device)
    labels[occupied] = idx + 1
    p_occ = torch.sigmoid(occupancy_logit)
    confidence = 1 - p_occ
    confidence[occupied] = p_best * p_occ[occupied]
    if top_k <= 0:
        return labels, confidence
    k = min(top_k, probs.shape[1])
    top_p, top_idx = probs.topk(k, dim=1)
    classes = torch.zeros((*occupied.shape, k), dtype=torch.int16, device=x.device)
    weights = torch.zeros((*occupied.shape, k), dtype=torch.float16, device=x.device)
    classes[occupied] = (top_idx + 1).to(torch.int16)
    weights[occupied] = top_p.to(torch.float16)
    return labels, confidence, (classes, weights)


def periodic_max(x: torch.Tensor, k: int) -> torch.Tensor:
    """Max over a periodic k x k x k window (separable: three 1-D maxima, wrap padding).

    `unfold(...).amax` rather than `max_pool3d`, which on CPU also computes argmax indices
    and took 15 % of the UNet's sampling time.
    """
    pad = k // 2
    for axis in range(3):
        d = 2 + axis
        x = torch.cat([x.narrow(d, x.shape[d] - pad, pad), x, x.narrow(d, 0, pad)], dim=d)
        x = x.unfold(d, k, 1).amax(dim=-1)
    return x


@dataclass
class UNetState:
    """Everything needed besides weights to use a UNet: element list and input scaling."""

    config: UNetConfig
    elements: list[int]  # atomic number of class i+1; class 0 is empty
    density_scale: float
    extra: dict = field(default_factory=dict)
