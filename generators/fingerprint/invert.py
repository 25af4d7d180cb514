"""Recover a periodic crystal from its fingerprint: batched basin hopping with autodiff.

Why this shape (Fung et al. 2022 invert fixed-cell clusters with Adam and random kicks):
- the fingerprint is not invertible in closed form, but it is differentiable, so each hop is
  a short Adam run on fractional coordinates *and* log(cell length) of many trial structures
  at once (one tensor, summed per-row losses, so rows never interact);
- between hops every trial is kicked and the new local minimum is accepted by a Metropolis
  test (the public cluster code accepts every kick); a trial that stops improving restarts
  from random positions, which is cheaper than waiting for it to escape a deep wrong basin;
- the lattice start comes from the fingerprint itself (`descriptor.guess_length`), spread over
  the trials, because a campaign's sample has no true lattice to start from;
- the cell length is bounded to [0.8, 1.25] x the guess: a cell that grows until neighbours
  leave the cutoff would match a target with no neighbours, a false minimum;
- a pair closer than `core_radius` costs loss, so samples from a generative model (whose
  fingerprints need not belong to any crystal) still come out physically valid;
- finally an spglib refinement is tried and kept only if it does not raise the loss.
Many targets share one batch; a target leaves it as soon as one of its trials reaches the
stop loss, so easy crystals do not pay for hard ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pymatgen.core import Composition, Lattice, Structure

from generators.fingerprint.descriptor import (
    FingerprintError,
    batch_structures,
    fingerprint,
    guess_length,
    slot_elements,
)
from generators.fingerprint.settings import FingerprintSettings, InversionSettings

LENGTH_BOUNDS = (0.8, 1.25)  # the cell length stays within these factors of the guess


@dataclass
class Target:
    """What the inversion must reproduce: a fingerprint and the crystal's site inventory."""

    fingerprint: np.ndarray
    elements: list[str]  # in slot order (descriptor.slot_elements)
    counts: list[int]  # sites of each slot's element
    lattice_guess: float | None = None
    # a starting point (fractional coordinates in site order, cell length), e.g. the nearest
    # training crystal with the same site inventory; trials start from it, jittered
    start: tuple[np.ndarray, float] | None = None

    @property
    def n_sites(self) -> int:
        return int(sum(self.counts))


@dataclass
class InversionResult:
    """The recovered crystal with what it cost; `loss` is the final fingerprint MSE."""

    structure: Structure
    loss: float
    hops: int
    restarts: int
    seconds: float
    lattice_guess: float
    symmetrized: str | None = None  # the refinement kept, e.g. "Pm-3m (symprec 0.05)"
    converged: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "hops": self.hops,
            "restarts": self.restarts,
            "seconds": round(self.seconds, 3),
            "lattice_guess": round(self.lattice_guess, 4),
            "lattice": round(float(self.structure.lattice.a), 4),
            "symmetrized": self.symmetrized,
            "converged": self.converged,
        }


def make_target(
    target_fingerprint: np.ndarray,
    composition: Composition | str | dict,
    n_sites: int | None = None,
    lattice_guess: float | None = None,
    settings: FingerprintSettings | None = None,
) -> Target:
    """A target from a composition; `n_sites` scales a reduced formula to the cell's sites."""
    settings = settings or FingerprintSettings()
    comp = Composition(composition)
    if comp.num_atoms <= 0:
        raise FingerprintError("empty composition: a crystal needs at least one element")
    order = slot_elements(comp, settings.n_slots)
    amounts = np.array([comp[el] for el in order], dtype=np.float64)
    if n_sites is not None:
        if n_sites < 1:
            raise FingerprintError(f"n_sites must be >= 1, got {n_sites}")
        factor = n_sites / amounts.sum()
        amounts = amounts * factor
    counts = np.round(amounts).astype(int)
    if np.any(np.abs(amounts - counts) > 1e-6) or np.any(counts < 1):
        raise FingerprintError(
            f"{comp.formula} cannot fill {n_sites} sites with whole atoms of every element"
        )
    fp = np.asarray(target_fingerprint, dtype=np.float64).reshape(-1)
    if fp.size != settings.dim:
        raise FingerprintError(
            f"target fingerprint has {fp.size} values, these settings make {settings.dim}"
        )
    return Target(fp, order, counts.tolist(), lattice_guess)


def structure_target(
    structure: Structure, settings: FingerprintSettings | None = None
) -> tuple[Target, float]:
    """The target a real crystal defines (its own fingerprint and composition) and its true
    cell length, which the inversion is *not* given."""
    from generators.fingerprint.descriptor import fingerprint_structures

    settings = settings or FingerprintSettings()
    batch = batch_structures([structure], settings)
    fp = fingerprint_structures([structure], settings)[0]
    counts = [int((batch.slots[0] == s).sum()) for s in range(len(batch.elements[0]))]
    return Target(fp.astype(np.float64), batch.elements[0], counts), float(batch.length[0])


def _slot_rows(targets: Sequence[Target], n_max: int) -> torch.Tensor:
    rows = torch.full((len(targets), n_max), -1, dtype=torch.long)
    for i, t in enumerate(targets):
        rows[i, : t.n_sites] = torch.as_tensor(
            np.repeat(np.arange(len(t.counts)), t.counts), dtype=torch.long
        )
    return rows


def _core_penalty(frac, length, slots, radius: float) -> torch.Tensor:
    """Sum over pairs closer than `radius` (A) of (radius - r)^2, per row."""
    if radius <= 0:
        return torch.zeros(frac.shape[0], dtype=frac.dtype)
    from generators.fingerprint.descriptor import _pair_geometry

    _, r, pair = _pair_geometry(frac, length, slots, radius)
    return (torch.relu(radius - r) ** 2 * pair).flatten(1).sum(1)


def row_loss(frac, log_length, slots, target_fp, settings: FingerprintSettings) -> torch.Tensor:
    """Per-row fingerprint MSE plus the core penalty: what every hop minimises.

    The mean runs over the target's non-zero entries only: a one-element crystal fills one
    slot of five, and a plain mean would dilute its error five-fold, so one stop loss would
    be strict for perovskites and lax for elements."""
    length = torch.exp(log_length)
    fp = fingerprint(frac, length, slots, settings)
    active = (target_fp.abs() > 1e-6).sum(1).clamp(min=1)
    mse = ((fp - target_fp) ** 2).sum(1) / active
    return mse + _core_penalty(frac, length, slots, settings.core_radius)


class _Search:
    """The state of every trial of every unfinished target, as rows of one batch."""

    def __init__(
        self,
        targets: Sequence[Target],
        fp_settings: FingerprintSettings,
        settings: InversionSettings,
        dtype: torch.dtype,
    ):
        self.fp_settings, self.settings, self.dtype = fp_settings, settings, dtype
        self.rng = torch.Generator().manual_seed(settings.seed)
        trials = settings.trials
        self.n_max = max(t.n_sites for t in targets)
        self.owner = torch.arange(len(targets)).repeat_interleave(trials)
        self.slots = _slot_rows(targets, self.n_max)[self.owner]
        self.target_fp = torch.as_tensor(np.stack([t.fingerprint for t in targets]), dtype=dtype)[
            self.owner
        ]
        self.guess = torch.tensor(
            [
                t.lattice_guess or guess_length(t.fingerprint, t.counts, fp_settings)
                for t in targets
            ],
            dtype=dtype,
        )
        b = len(self.owner)
        self.frac, self.log_length = self._random_start(torch.ones(b, dtype=torch.bool))
        self._warm_start(targets)
        self.loss = torch.full((b,), math.inf, dtype=dtype)
        self.best_frac = self.frac.clone()
        self.best_log_length = self.log_length.clone()
        self.best_loss = self.loss.clone()
        self.stall = torch.zeros(b, dtype=torch.long)
        self.restarts = torch.zeros(b, dtype=torch.long)

    def _uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.rng, dtype=self.dtype)

    def _bounds(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        guess = self.guess[self.owner if rows is None else self.owner[rows]]
        return torch.log(guess * LENGTH_BOUNDS[0]), torch.log(guess * LENGTH_BOUNDS[1])

    def _random_start(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(rows.sum())
        frac = self._uniform(n, self.n_max, 3)
        spread = self.settings.lattice_spread * (2 * self._uniform(n) - 1)
        log_length = torch.log(self.guess[self.owner[rows]]) + spread
        return frac, log_length

    def _warm_start(self, targets: Sequence[Target]) -> None:
        """Trials of a target with a start begin there: the first exactly, the others with a
        small jitter, so a start that is nearly right needs a few steps, not a search."""
        trials = self.settings.trials
        for i, t in enumerate(targets):
            if t.start is None:
                continue
            frac, length = t.start
            rows = slice(i * trials, (i + 1) * trials)
            base = torch.as_tensor(np.asarray(frac), dtype=self.dtype)
            jitter = 0.03 * (2 * self._uniform(trials, t.n_sites, 3) - 1)
            jitter[0] = 0.0
            self.frac[rows, : t.n_sites] = (base[None] + jitter).remainder(1.0)
            self.log_length[rows] = math.log(length)
            self.guess[i] = float(length)

    def local(self, frac: torch.Tensor, log_length: torch.Tensor):
        """One Adam run from (frac, log_length); returns the end point and its loss."""
        frac = frac.clone().requires_grad_(True)
        log_length = log_length.clone().requires_grad_(True)
        s = self.settings
        opt = torch.optim.Adam(
            [{"params": [frac], "lr": s.lr_position}, {"params": [log_length], "lr": s.lr_lattice}]
        )
        low, high = self._bounds()
        n_owners = int(self.owner.max()) + 1
        for step in range(s.steps_per_hop):
            opt.zero_grad(set_to_none=True)
            loss = row_loss(frac, log_length, self.slots, self.target_fp, self.fp_settings)
            if step % 10 == 9 and self._all_done(loss.detach(), n_owners):
                break
            loss.sum().backward()
            opt.step()
            with torch.no_grad():
                frac.remainder_(1.0)
                log_length.copy_(torch.maximum(torch.minimum(log_length, high), low))
        with torch.no_grad():
            loss = row_loss(frac, log_length, self.slots, self.target_fp, self.fp_settings)
        return frac.detach(), log_length.detach(), loss

    def _all_done(self, loss: torch.Tensor, n_owners: int) -> bool:
        """Whether every target already has a trial below the stop loss (ends a hop early)."""
        best = torch.full((n_owners,), math.inf, dtype=loss.dtype)
        best = best.scatter_reduce(0, self.owner, loss, reduce="amin")
        present = torch.zeros(n_owners, dtype=torch.bool).index_fill_(0, self.owner, True)
        return bool((best[present] < self.settings.stop_loss).all())

    def hop(self, first: bool) -> None:
        """Kick, relax, accept or reject (Metropolis), restart the stalled trials."""
        s = self.settings
        if first:
            frac, log_length = self.frac, self.log_length
        else:
            kick = s.kick * (2 * self._uniform(*self.frac.shape) - 1)
            frac = (self.frac + kick).remainder(1.0)
            log_length = self.log_length + s.kick_lattice * torch.randn(
                self.log_length.shape, generator=self.rng, dtype=self.dtype
            )
        frac, log_length, loss = self.local(frac, log_length)
        accept = metropolis(self.loss, loss, s.temperature, self._uniform(len(loss)))
        self.frac = torch.where(accept[:, None, None], frac, self.frac)
        self.log_length = torch.where(accept, log_length, self.log_length)
        self.loss = torch.where(accept, loss, self.loss)
        improved = loss < self.best_loss * (1 - 1e-3)
        self.best_frac = torch.where(improved[:, None, None], frac, self.best_frac)
        self.best_log_length = torch.where(improved, log_length, self.best_log_length)
        self.best_loss = torch.where(improved, loss, self.best_loss)
        self.stall = torch.where(improved, 0, self.stall + 1)
        stalled = self.stall >= s.restart_after
        if stalled.any():
            new_frac, new_log_length = self._random_start(stalled)
            self.frac[stalled] = new_frac
            self.log_length[stalled] = new_log_length
            self.loss[stalled] = math.inf  # the restart's first minimum is always accepted
            self.stall[stalled] = 0
            self.restarts[stalled] += 1

    def keep(self, rows: torch.Tensor) -> None:
        """Drop the rows of finished targets."""
        for name in (
            "owner",
            "slots",
            "target_fp",
            "frac",
            "log_length",
            "loss",
            "best_frac",
            "best_log_length",
            "best_loss",
            "stall",
            "restarts",
        ):
            setattr(self, name, getattr(self, name)[rows])


def metropolis(
    current: torch.Tensor, proposed: torch.Tensor, temperature: float, uniform: torch.Tensor
) -> torch.Tensor:
    """Accept a lower loss always, a higher one with probability exp(-(L' - L) / T)."""
    delta = proposed - current
    with torch.no_grad():
        p = torch.exp(-torch.clamp(delta, min=0) / temperature)
    return (delta <= 0) | (uniform < p) | torch.isinf(current)


def invert_many(
    targets: Sequence[Target],
    settings: InversionSettings | None = None,
    fp_settings: FingerprintSettings | None = None,
    progress: Callable[[int], None] | None = None,
    max_rows: int = 1024,
) -> list[InversionResult]:
    """Invert every target; results in target order. Targets are batched by site count
    (padding a 5-site cell to 10 sites would quadruple its pair terms), at most `max_rows`
    trial structures per batch."""
    settings = settings or InversionSettings()
    fp_settings = fp_settings or FingerprintSettings()
    if not targets:
        return []
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        groups.setdefault(t.n_sites, []).append(i)
    per_batch = max(1, max_rows // settings.trials)
    results: list[InversionResult | None] = [None] * len(targets)
    done = 0
    for members in groups.values():
        for start in range(0, len(members), per_batch):
            chunk = members[start : start + per_batch]
            part = _invert_batch([targets[i] for i in chunk], settings, fp_settings)
            for i, r in zip(chunk, part, strict=True):
                results[i] = r
            done += len(chunk)
            if progress:
                progress(done)
    return [r for r in results if r is not None]


def _invert_batch(
    targets: Sequence[Target], settings: InversionSettings, fp_settings: FingerprintSettings
) -> list[InversionResult]:
    for t in targets:
        if len(t.fingerprint) != fp_settings.dim:
            raise FingerprintError(
                f"target fingerprint has {len(t.fingerprint)} values, settings make "
                f"{fp_settings.dim}"
            )
        if t.n_sites < 1:
            raise FingerprintError("a target needs at least one site")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    search = _Search(targets, fp_settings, settings, torch.float32)
    guesses = search.guess.clone()
    finished: dict[int, dict[str, Any]] = {}
    hops_done = torch.zeros(len(targets), dtype=torch.long)

    def finish(owner: int, rows: torch.Tensor, hops: int) -> None:
        losses = search.best_loss[rows]
        best = rows[int(torch.argmin(losses))]
        finished[owner] = {
            "frac": search.best_frac[best].numpy().astype(np.float64),
            "length": float(torch.exp(search.best_log_length[best])),
            "loss": float(search.best_loss[best]),
            "restarts": int(search.restarts[rows].sum()),
            "hops": hops,
            "seconds": time.perf_counter() - start,
        }

    for hop in range(settings.hops):
        search.hop(first=hop == 0)
        hops_done[search.owner.unique()] = hop + 1
        done_rows = torch.zeros(len(search.owner), dtype=torch.bool)
        last = hop == settings.hops - 1
        for owner in search.owner.unique().tolist():
            rows = torch.nonzero(search.owner == owner).flatten()
            if last or float(search.best_loss[rows].min()) < settings.stop_loss:
                finish(owner, rows, hop + 1)
                done_rows[rows] = True
        if done_rows.all():
            break
        search.keep(torch.nonzero(~done_rows).flatten())

    results = []
    for i, t in enumerate(targets):
        f = finished[i]
        structure = Structure(
            Lattice.cubic(f["length"]),
            [el for el, n in zip(t.elements, t.counts, strict=True) for _ in range(n)],
            f["frac"][: t.n_sites],
        )
        result = InversionResult(
            structure,
            f["loss"],
            f["hops"],
            f["restarts"],
            f["seconds"],
            float(guesses[i]),
            converged=f["loss"] < settings.stop_loss,
        )
        if settings.symmetrize:
            _refine(result, t, settings, fp_settings)
        results.append(result)
    return results


def invert(
    target_fingerprint: np.ndarray,
    composition: Composition | str | dict,
    n_sites: int | None = None,
    lattice_guess: float | None = None,
    settings: InversionSettings | None = None,
    fp_settings: FingerprintSettings | None = None,
) -> InversionResult:
    """One crystal whose fingerprint matches `target_fingerprint`, with the given composition
    (scaled to `n_sites` sites). Without `lattice_guess` the fingerprint supplies one."""
    fp_settings = fp_settings or FingerprintSettings()
    target = make_target(target_fingerprint, composition, n_sites, lattice_guess, fp_settings)
    return invert_many([target], settings, fp_settings)[0]


def structure_loss(structure: Structure, target: Target, fp_settings: FingerprintSettings):
    """The inversion loss of a finished structure (float64, no gradient)."""
    batch = batch_structures([structure], fp_settings)
    if batch.elements[0] != target.elements:
        return math.inf
    with torch.no_grad():
        loss = row_loss(
            batch.frac,
            torch.log(batch.length),
            batch.slots,
            torch.as_tensor(target.fingerprint, dtype=torch.float64)[None],
            fp_settings,
        )
    return float(loss[0])


def polish(
    structure: Structure,
    target: Target,
    settings: InversionSettings,
    fp_settings: FingerprintSettings,
) -> Structure:
    """A short float64 descent at a quarter of the step: the search stops at `stop_loss`,
    a few A-hundredths from the minimum, which is enough to match but blurs symmetry."""
    batch = batch_structures([structure], fp_settings)
    if batch.elements[0] != target.elements or settings.polish_steps == 0:
        return structure
    frac = batch.frac.clone().requires_grad_(True)
    log_length = torch.log(batch.length).requires_grad_(True)
    tfp = torch.as_tensor(target.fingerprint, dtype=torch.float64)[None]
    opt = torch.optim.Adam(
        [
            {"params": [frac], "lr": settings.lr_position / 4},
            {"params": [log_length], "lr": settings.lr_lattice / 4},
        ]
    )
    for _ in range(settings.polish_steps):
        opt.zero_grad(set_to_none=True)
        row_loss(frac, log_length, batch.slots, tfp, fp_settings).sum().backward()
        opt.step()
    polished = Structure(
        Lattice.cubic(float(torch.exp(log_length.detach())[0])),
        structure.species,
        np.mod(frac.detach()[0, : len(structure)].numpy(), 1.0),
    )
    before = structure_loss(structure, target, fp_settings)
    return polished if structure_loss(polished, target, fp_settings) < before else structure


def _refine(
    result: InversionResult,
    target: Target,
    settings: InversionSettings,
    fp_settings: FingerprintSettings,
) -> None:
    """Replace the structure by its spglib refinement when that keeps the cell and does not
    raise the loss; the recorded loss is always the float64 loss of the kept structure."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    result.structure = polish(result.structure, target, settings, fp_settings)
    base = structure_loss(result.structure, target, fp_settings)
    best = (base, result.structure, None)
    for symprec in settings.symprecs:
        try:
            refined = SpacegroupAnalyzer(result.structure, symprec=symprec).get_refined_structure()
        except Exception:  # noqa: BLE001 - spglib can fail on a bad guess; keep the original
            continue
        if len(refined) != len(result.structure):
            continue
        try:
            loss = structure_loss(refined, target, fp_settings)
        except FingerprintError:  # refinement changed the cell shape
            continue
        if loss <= best[0]:
            label = SpacegroupAnalyzer(refined, symprec=symprec).get_space_group_symbol()
            best = (loss, refined, f"{label} (symprec {symprec})")
    result.loss, result.structure, result.symmetrized = best
    result.converged = result.loss < settings.stop_loss


__all__ = [
    "InversionResult",
    "Target",
    "invert",
    "invert_many",
    "make_target",
    "metropolis",
    "structure_target",
]
