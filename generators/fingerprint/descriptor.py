"""A differentiable, periodic structural fingerprint of a cubic crystal.

Why this form (after Fung et al. 2022, who invert ACSF fingerprints of fixed-cell clusters):
- per atom, element-resolved radial G2 terms exp(-(r - Rs)^2 / 2 sigma^2) fc(r) and angular
  terms sum_{j != k} w_j w_k cos^m(theta_jk), m = 0..4, with w = exp(-eta r^2) fc(r). Every
  G5 function with zeta <= 4 and lambda = +-1 is a fixed linear combination of these, and
  they cost O(neighbours) instead of O(neighbours^2): sum_{j,k} w_j w_k (u_j . u_k)^m is the
  squared norm of the m-th moment tensor sum_j w_j u_j^(x m);
- neighbours are all periodic images inside the cutoff, written as a * |df + n| with
  fractional differences df and integer image offsets n, so the fingerprint is differentiable
  in the fractional coordinates *and* the cell length a (no neighbour list to rebuild);
- per-atom vectors pooled per element slot by mean, max and min (as the paper pools), giving
  one fixed-length vector that is invariant to atom order, translations and the 48 cube
  symmetries (distances and angles do not change under them);
- a signed log1p, so counts of tens of neighbours and small angular terms weigh alike in a
  mean-squared loss.

Elements map to slots by electronegativity (then Z): slot 0 holds the most electropositive
element. The composition travels beside the vector; without it the vector cannot be inverted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np
import torch
from pymatgen.core import Composition, Element, Structure

from generators.fingerprint.settings import FingerprintSettings

_SOFT = 1e-6  # A^2 added under square roots: finite gradients for coinciding sites


class FingerprintError(ValueError):
    """A crystal the fingerprint cannot describe (non-cubic cell, too many elements, ...)."""


def electronegativity_key(symbol: str) -> tuple[float, int]:
    """Sort key of element slots: Pauling electronegativity, then Z (noble gases last)."""
    element = Element(symbol)
    with warnings.catch_warnings():  # pymatgen warns for noble gases, which have no X
        warnings.simplefilter("ignore")
        x = element.X
    return (x if math.isfinite(x) else 5.0, element.Z)


def slot_elements(composition: Composition | Sequence[str], n_slots: int) -> list[str]:
    """The crystal's elements in slot order; errors name what cannot be described."""
    symbols = (
        [el.symbol for el in composition.elements]
        if isinstance(composition, Composition)
        else list(composition)
    )
    if not symbols:
        raise FingerprintError("empty composition: a crystal needs at least one element")
    for s in symbols:
        if not Element.is_valid_symbol(s):
            raise FingerprintError(f"unknown element {s!r}")
    if len(set(symbols)) > n_slots:
        raise FingerprintError(
            f"{len(set(symbols))} elements, but the fingerprint has {n_slots} element slots"
        )
    return sorted(set(symbols), key=electronegativity_key)


def cubic_length(structure: Structure, tol: float = 1e-3) -> float:
    """The cell length of a cubic cell; FingerprintError for any other cell."""
    a, b, c = structure.lattice.abc
    angles = np.asarray(structure.lattice.angles)
    if max(a, b, c) - min(a, b, c) > tol * max(a, b, c) or np.any(np.abs(angles - 90) > 0.1):
        raise FingerprintError(
            f"{structure.composition.reduced_formula}: cell {a:.3f} {b:.3f} {c:.3f} A, "
            f"angles {', '.join(f'{x:.1f}' for x in angles)}: the fingerprint generator "
            "works on cubic cells (convert with generators.data.select_cubic)"
        )
    return float(np.mean([a, b, c]))


@dataclass
class CrystalBatch:
    """Padded tensors of several cubic crystals: what `fingerprint` differentiates."""

    frac: torch.Tensor  # (B, N, 3) fractional coordinates
    length: torch.Tensor  # (B,) cubic cell length, A
    slots: torch.Tensor  # (B, N) element slot per site, -1 = padding
    elements: list[list[str]]  # per crystal: the element in each slot

    def __len__(self) -> int:
        return int(self.frac.shape[0])


def batch_structures(
    structures: Sequence[Structure], settings: FingerprintSettings, n_max: int | None = None
) -> CrystalBatch:
    """Pad cubic crystals into one batch; raises FingerprintError naming the bad crystal."""
    if not structures:
        raise FingerprintError("no structures given")
    n_max = n_max or max(len(s) for s in structures)
    frac = torch.zeros(len(structures), n_max, 3, dtype=torch.float64)
    slots = torch.full((len(structures), n_max), -1, dtype=torch.long)
    lengths, elements = [], []
    for b, s in enumerate(structures):
        if len(s) == 0:
            raise FingerprintError("a structure without sites has no fingerprint")
        if len(s) > n_max:
            raise FingerprintError(f"{s.composition.reduced_formula}: more than {n_max} sites")
        if not s.is_ordered:
            raise FingerprintError(f"{s.composition.reduced_formula}: disordered sites")
        lengths.append(cubic_length(s))
        order = slot_elements(s.composition, settings.n_slots)
        elements.append(order)
        index = {el: i for i, el in enumerate(order)}
        frac[b, : len(s)] = torch.as_tensor(np.mod(s.frac_coords, 1.0))
        slots[b, : len(s)] = torch.as_tensor([index[site.specie.symbol] for site in s])
    return CrystalBatch(frac, torch.tensor(lengths, dtype=torch.float64), slots, elements)


def image_offsets(cutoff: float, min_length: float) -> torch.Tensor:
    """Integer cell offsets n for which some |a (df + n)| < cutoff with |df| <= 1/2: the
    images that can hold a neighbour, not the whole cube of them (about 4x fewer)."""
    k = max(0, math.ceil(cutoff / max(min_length, 1e-3) - 0.5))
    rng = range(-k, k + 1)
    grid = torch.tensor(list(product(rng, rng, rng)), dtype=torch.float64)
    nearest = torch.clamp(grid.abs() - 0.5, min=0) * min_length
    return grid[(nearest * nearest).sum(1) < cutoff * cutoff]


def _cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    return torch.where(r < cutoff, 0.5 * (torch.cos(math.pi * r / cutoff) + 1.0), 0.0)


def signed_log(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def _pair_geometry(frac, length, slots, cutoff: float):
    """Vectors from each site i to every image of every site j: (B, N, N, I, 3) in A."""
    valid = slots >= 0
    df = frac[:, None, :, :] - frac[:, :, None, :]
    df = df - torch.round(df.detach())
    offsets = image_offsets(cutoff, float(length.detach().min())).to(frac)
    vec = (df[:, :, :, None, :] + offsets) * length[:, None, None, None, None]
    r = torch.sqrt((vec * vec).sum(-1) + _SOFT)
    n = frac.shape[1]
    self_image = torch.eye(n, dtype=torch.bool, device=frac.device)[:, :, None] & (
        offsets.abs().sum(-1) == 0
    )
    pair = valid[:, :, None, None] & valid[:, None, :, None] & ~self_image[None]
    return vec, r, pair & (r < cutoff)


def _monomials(order: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exponents (M, 3), weights sqrt(m! / a! b! c!) and degrees of the monomials
    x^a y^b z^c with a + b + c = m <= order: (u . v)^m = sum over them of weight^2 u^al v^al,
    so 35 symmetric components replace the 121 of the full tensors up to order 4."""
    exps, weights, degrees = [], [], []
    for m in range(order + 1):
        for a in range(m, -1, -1):
            for b in range(m - a, -1, -1):
                c = m - a - b
                exps.append((a, b, c))
                weights.append(
                    math.sqrt(
                        math.factorial(m)
                        / (math.factorial(a) * math.factorial(b) * math.factorial(c))
                    )
                )
                degrees.append(m)
    return torch.tensor(exps), torch.tensor(weights, dtype=torch.float64), torch.tensor(degrees)


def _slot_sum(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_{j, n} weight[b, i, j, n, c] values[b, i, j, n, x] -> (B, N, C, X) as one batched
    matrix product per site, without materialising the (..., C, X) product."""
    b, n = values.shape[:2]
    left = weight.reshape(b * n, -1, weight.shape[-1]).transpose(1, 2)
    right = values.reshape(b * n, -1, values.shape[-1])
    return torch.bmm(left, right).reshape(b, n, weight.shape[-1], values.shape[-1])


def per_atom(
    frac: torch.Tensor,
    length: torch.Tensor,
    slots: torch.Tensor,
    settings: FingerprintSettings,
) -> torch.Tensor:
    """(B, N, per_atom_dim) raw (not log-scaled) symmetry functions of every site."""
    k, n_eta = settings.n_slots, len(settings.angular_etas)
    onehot = torch.nn.functional.one_hot(slots.clamp(min=0), k).to(frac)
    onehot = onehot * (slots >= 0)[..., None].to(frac)  # (B, N, K)
    # radial G2, element-resolved by the neighbour's slot
    _, r, pair = _pair_geometry(frac, length, slots, settings.cutoff)
    centres = torch.tensor(settings.radial_centres, dtype=frac.dtype, device=frac.device)
    gauss = torch.exp(-((r[..., None] - centres) ** 2) / (2 * settings.radial_width**2))
    weight = (_cosine_cutoff(r, settings.cutoff) * pair)[..., None] * onehot[:, None, :, None, :]
    g2 = _slot_sum(gauss, weight)  # (B, N, K, R)
    # angular terms: symmetric moments sum_j w_j u_j^al of the first shell, |al| <= order
    vec, r, pair = _pair_geometry(frac, length, slots, settings.angular_cutoff)
    unit = vec / r[..., None]
    exps, coef, degree = _monomials(settings.angular_order)
    ux, uy, uz = ([torch.ones_like(r)] for _ in range(3))
    for _ in range(settings.angular_order):
        ux.append(ux[-1] * unit[..., 0])
        uy.append(uy[-1] * unit[..., 1])
        uz.append(uz[-1] * unit[..., 2])
    mono = torch.stack([ux[a] * uy[b] * uz[c] for a, b, c in exps.tolist()], -1)
    mono = mono * coef.to(frac)
    fc = _cosine_cutoff(r, settings.angular_cutoff) * pair
    etas = torch.tensor(settings.angular_etas, dtype=frac.dtype, device=frac.device)
    w = fc[..., None] * torch.exp(-etas * (r * r)[..., None])  # (B, N, N, I, E)
    w_slot = (w[..., :, None] * onehot[:, None, :, None, None, :]).flatten(-2)  # (.., E*K)
    moment = _slot_sum(mono, w_slot).reshape(*frac.shape[:2], n_eta, k, -1)
    self_sq = _slot_sum(w * w, onehot[:, None, :, None, :].expand(*w.shape[:4], k))  # (.., K, E)
    t_idx, u_idx = torch.triu_indices(k, k)
    blocks = torch.nn.functional.one_hot(degree, settings.angular_order + 1).to(frac)
    gram = (moment[:, :, :, t_idx] * moment[:, :, :, u_idx]) @ blocks  # (B, N, E, pairs, m)
    same = (t_idx == u_idx).to(frac)[None, None, None, :, None]
    self_terms = self_sq.transpose(2, 3)[:, :, :, t_idx]  # the j == k terms of t == u
    angular = gram - same * self_terms[..., None]
    return torch.cat([g2.flatten(-2), angular.flatten(-3)], -1)


def pool(atoms: torch.Tensor, slots: torch.Tensor, n_slots: int) -> torch.Tensor:
    """Mean, max and min of the per-atom vectors of each element slot; empty slots are 0."""
    out = []
    for s in range(n_slots):
        member = (slots == s)[..., None]
        count = member.sum(1).clamp(min=1)
        mean = (atoms * member).sum(1) / count
        big = torch.finfo(atoms.dtype).max
        high = torch.where(member, atoms, -big).amax(1)
        low = torch.where(member, atoms, big).amin(1)
        present = member.any(1)
        out += [mean, torch.where(present, high, 0.0), torch.where(present, low, 0.0)]
    return torch.cat(out, -1)


def fingerprint(
    frac: torch.Tensor, length: torch.Tensor, slots: torch.Tensor, settings: FingerprintSettings
) -> torch.Tensor:
    """(B, settings.dim) crystal fingerprints, differentiable in `frac` and `length`."""
    atoms = signed_log(per_atom(frac, length, slots, settings))
    return pool(atoms, slots, settings.n_slots)


def fingerprint_structures(
    structures: Sequence[Structure], settings: FingerprintSettings | None = None, chunk: int = 64
) -> np.ndarray:
    """Fingerprints of real crystals, (len, dim) float32; chunks bound the memory."""
    settings = settings or FingerprintSettings()
    out = []
    with torch.no_grad():
        for start in range(0, len(structures), chunk):
            part = list(structures[start : start + chunk])
            batch = batch_structures(part, settings)
            out.append(fingerprint(batch.frac, batch.length, batch.slots, settings).numpy())
    if not out:
        return np.zeros((0, settings.dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


def neighbour_density_integral(settings: FingerprintSettings) -> float:
    """sum over radial terms of the G2 sum an atom gets from neighbours of unit density
    spread uniformly beyond 1 A: the fingerprint's total radial weight per unit density."""
    r = np.linspace(1.0, settings.cutoff, 4000)
    centres = np.asarray(settings.radial_centres)
    gauss = np.exp(-((r[:, None] - centres) ** 2) / (2 * settings.radial_width**2)).sum(1)
    fc = 0.5 * (np.cos(np.pi * r / settings.cutoff) + 1.0)
    return float(np.trapezoid(4 * np.pi * r * r * gauss * fc, r))


def guess_length(fp: np.ndarray, counts: Sequence[int], settings: FingerprintSettings) -> float:
    """A cubic cell length read off a fingerprint: the mean radial weight per atom is about
    (neighbour density) x `neighbour_density_integral`, and density = sites / a^3.

    Why: the inversion must find the lattice itself; this puts the start within ~10-15 %,
    close enough for the optimiser, whatever the chemistry."""
    k, nr, per = settings.n_slots, settings.n_radial, settings.per_atom_dim
    fp = np.asarray(fp, dtype=np.float64)
    total, n = 0.0, 0
    for s, count in enumerate(counts):
        if count <= 0:
            continue
        mean = fp[s * 3 * per : s * 3 * per + per]  # the slot's mean block (log-scaled)
        # mean of log1p is not log1p of the mean; per-atom values are alike within a slot
        radial = np.expm1(mean[: k * nr])
        total += count * radial.sum()
        n += count
    if n == 0 or total <= 0:
        return 4.0
    density = (total / n) / neighbour_density_integral(settings)
    return float((n / density) ** (1.0 / 3.0))
