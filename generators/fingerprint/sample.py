"""Sampling crystals from the fingerprint CVAE: latent -> fingerprint + composition -> inversion.

Every mode (random per decile, around a base compound, interpolation) ends in one batched
inversion of all its samples, so the daemon gets many candidates per optimisation. A sample's
composition is drawn from the composition heads under rules that keep it describable,
plausible and new: the cell's site counts are one of the training crystals' inventories
(drawn jointly, where the checkpoint has templates), each slot's element is more
electronegative than the previous one (the slot order the fingerprint was built with), the
cell has at most the training maximum of sites, the charge-balance test passes (SMACT's, or
the campaign funnel's), and (where the checkpoint lists them) the reduced formula is not one
of the training crystals' - a sampler that keeps a template's sites would otherwise hand back
that training crystal. Draws that fail are
retried and counted per reason, and a sample with no acceptable draw is dropped and counted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Element, Structure

from generators.candidate import Candidate, Provenance
from generators.fingerprint.arrange import arrange_on_template
from generators.fingerprint.descriptor import (
    FingerprintError,
    batch_structures,
    electronegativity_key,
    fingerprint_structures,
)
from generators.fingerprint.invert import InversionResult, Target, invert_many
from generators.fingerprint.model import FingerprintVAE, ModelConfig
from generators.fingerprint.settings import FingerprintSettings, InversionSettings
from generators.fingerprint.train import load
from generators.generation_metrics import composition_valid, oxidation_states_balanced

GENERATOR_NAME = "fingerprint"

# Inversion of *generated* fingerprints. A decoded fingerprint is a blurred estimate: no crystal
# matches it exactly (its loss stays ~0.01 where a real crystal's reaches 5e-4), and fitting the
# sites to it distorts them - measured on 150 samples, 25 Adam steps on the sites halve the
# loss but drop COV-P against held-out perovskites from 0.44 to 0.04 (CrystalNN sees the
# distortion), and steps of only 0.003 do the same. So a sample keeps the sites of the nearest
# training crystal with its site inventory (`warm_start`) and the inversion fits what the
# fingerprint does determine well, the lattice (lr_position 0). A sample without such a
# template gets its sites from the full inversion (`FREE_SITES`); `refine_sites=True` gives
# every sample that. No float64 polish or spglib pass: they cost more than the descent.
SAMPLING_INVERSION = {
    "trials": 1,
    "hops": 1,
    "steps_per_hop": 25,
    "restart_after": 99,
    "polish_steps": 0,
    "symmetrize": False,
    "lr_position": 0.0,
}
#: How a drawn composition's charge balance is judged. smact: SMACT's full oxidation-state
#: lists + electronegativity order (CDVAE's composition validity, so the generation metrics
#: compare with the literature); oxidation-states: pymatgen's ICSD-common states, the test of
#: a campaign's charge_balance filter (SMACT's lists pass e.g. BaSrTi2O with Ti(-1), which the
#: funnel then rejects: 25 of 40 demo samples, measured).
CHARGE_BALANCE = {
    "smact": composition_valid,
    "oxidation-states": oxidation_states_balanced,
}
FREE_SITES = {"lr_position": InversionSettings.model_fields["lr_position"].default}


def default_checkpoint() -> Path:
    return Path(str(resources.files("generators.fingerprint.models"))) / "fingerprint.pt"


class FingerprintGenerator:
    """A trained fingerprint CVAE with its inversion settings."""

    name = GENERATOR_NAME

    def __init__(
        self,
        state: dict[str, Any],
        inversion: InversionSettings | None = None,
        elements: Sequence[str] | None = None,
        composition_temperature: float = 0.7,
        max_composition_tries: int = 30,
        warm_start: bool = True,
        max_sites: int | None = None,
        refine_sites: bool = False,
        avoid_training_formulas: bool | None = None,
        training_inventories: bool | None = None,
        arrangement: str = "ewald",
        charge_balance: str = "smact",
    ):
        self.state = state
        self.fp_settings = FingerprintSettings(**state["fingerprint_settings"])
        self.model = FingerprintVAE(ModelConfig(**state["config"]))
        self.model.load_state_dict({k: v.float() for k, v in state["model"].items()})
        self.model.eval()
        self.mean = torch.tensor(state["x_mean"], dtype=torch.float32)
        self.std = torch.tensor(state["x_std"], dtype=torch.float32)
        self.elements: list[str] = list(state["elements"])
        self.keys = [electronegativity_key(e) for e in self.elements]
        self.n_deciles = int(self.model.config.n_conditions)
        self.property: str = state["property"]
        self.decile_edges: dict[str, list[float]] = state["decile_edges"]
        self.scales: dict[str, str] = state["scales"]
        self.prior = state.get("latent_prior") or {}
        self.model_version = f"fpcvae-{state['model_version']}"
        self.inversion = inversion or InversionSettings(
            **(SAMPLING_INVERSION | (FREE_SITES if refine_sites else {}))
        )
        self.free_inversion = InversionSettings(**(self.inversion.model_dump() | FREE_SITES))
        if composition_temperature <= 0:
            raise ValueError(f"composition_temperature must be > 0, got {composition_temperature}")
        self.temperature = float(composition_temperature)
        if max_composition_tries < 1:
            raise ValueError("max_composition_tries must be >= 1")
        self.max_tries = int(max_composition_tries)
        self.allowed = self._allowed_mask(elements)
        # per element: how many allowed elements sort after it (could fill later slots)
        self._later = torch.tensor(
            [
                sum(bool(a) and k2 > k for a, k2 in zip(self.allowed, self.keys, strict=True))
                for k in self.keys
            ]
        )
        self.warm_start = bool(warm_start)
        if arrangement not in ("ewald", "template"):
            raise ValueError(f"arrangement must be 'ewald' or 'template', got {arrangement!r}")
        self.arrangement = arrangement
        if charge_balance not in CHARGE_BALANCE:
            raise ValueError(
                f"charge_balance must be one of {sorted(CHARGE_BALANCE)}, got {charge_balance!r}"
            )
        self.charge_balance = charge_balance
        trained = int(state["train_settings"]["max_sites"])  # largest training cell
        if max_sites is not None and not 1 <= max_sites <= trained:
            raise ValueError(f"max_sites must be in 1..{trained} (the training maximum)")
        self.max_sites = trained if max_sites is None else int(max_sites)
        self.last_report: dict[str, Any] = {}
        listed = (state.get("templates") or {}).get("formulas")
        if avoid_training_formulas and listed is None:
            raise ValueError(
                "avoid_training_formulas: this checkpoint does not list its training formulas "
                "(re-finalise it with `crystalloop train fingerprint --resume`)"
            )
        self.avoid_training = listed is not None and avoid_training_formulas is not False
        self.training_formulas = frozenset(listed or ())
        counts = (state.get("templates") or {}).get("counts")
        if training_inventories and counts is None:
            raise ValueError(
                "training_inventories: this checkpoint has no templates to take site "
                "inventories from (re-finalise it with `crystalloop train fingerprint --resume`)"
            )
        self.inventories = None  # (M, n_slots) site counts a cell may have; None = any
        if counts is not None and training_inventories is not False:
            unique = torch.unique(counts.long(), dim=0)
            unique = unique[unique.sum(1) <= self.max_sites]
            if len(unique) == 0:
                raise ValueError(
                    f"max_sites={self.max_sites}: no training crystal has so few sites, so no "
                    "training inventory fits (raise max_sites, or draw site counts slot by "
                    "slot with training_inventories=False)"
                )
            self.inventories = unique

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, checkpoint: str | Path | None = None, **options: Any) -> FingerprintGenerator:
        """The shipped model by default, or a checkpoint path."""
        path = Path(checkpoint) if checkpoint else default_checkpoint()
        return cls(load(path), **options)

    def _allowed_mask(self, elements: Sequence[str] | None) -> torch.Tensor:
        if elements is None:
            return torch.ones(len(self.elements), dtype=torch.bool)
        bad = [e for e in elements if not Element.is_valid_symbol(e)]
        if bad:
            raise ValueError(f"unknown element(s) {bad}")
        # elements the model never saw cannot be drawn; the others still can
        known = [e for e in elements if e in self.elements]
        if not known:
            raise ValueError(
                f"none of {list(elements)} occurs in this model's training data "
                f"({len(self.elements)} elements)"
            )
        return torch.tensor([e in set(known) for e in self.elements])

    # ----------------------------------------------------------------------------- deciles
    def _check_decile(self, decile: int) -> None:
        if not 0 <= int(decile) < self.n_deciles:
            raise ValueError(f"decile must be in 0..{self.n_deciles - 1}, got {decile}")

    def decile_ranges(self, decile: int) -> dict[str, list[float | None]]:
        """The decile's formation-energy range on each training source's own scale."""
        out = {}
        for spec, edges in self.decile_edges.items():
            lo = edges[decile - 1] if decile > 0 else None
            hi = edges[decile] if decile < len(edges) else None
            out[self.scales.get(spec, spec)] = [lo, hi]
        return out

    def _condition(self, decile: int, **extra: Any) -> dict[str, Any]:
        return {
            "property": self.property,
            "decile": int(decile),
            "ranges": self.decile_ranges(int(decile)),
        } | extra

    # ------------------------------------------------------------------------------ latents
    def _prior_latents(self, n: int, decile: int, seeds: list[int]) -> torch.Tensor:
        g = self.prior.get(str(decile)) or self.prior.get("all")
        dim = self.model.config.latent_dim
        out = torch.empty(n, dim)
        if g is None:
            for i, s in enumerate(seeds):
                out[i] = torch.randn(dim, generator=torch.Generator().manual_seed(s))
            return out
        mean = torch.tensor(g["mean"], dtype=torch.float64)
        chol = torch.linalg.cholesky(torch.tensor(g["cov"], dtype=torch.float64))
        for i, s in enumerate(seeds):
            eps = torch.randn(dim, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
            out[i] = (mean + chol @ eps).float()
        return out

    def encode(self, structures: Sequence[Structure], deciles: Sequence[int]) -> torch.Tensor:
        """Posterior means of real crystals (composition elements unknown to the model are
        an error: the model cannot say where such a crystal lies)."""
        fps = torch.as_tensor(fingerprint_structures(structures, self.fp_settings))
        batch = batch_structures(structures, self.fp_settings)
        index = {e: i for i, e in enumerate(self.elements)}
        k = self.fp_settings.n_slots
        el = torch.full((len(structures), k), -1, dtype=torch.long)
        ct = torch.zeros((len(structures), k), dtype=torch.long)
        for row, names in enumerate(batch.elements):
            for s, name in enumerate(names):
                if name not in index:
                    raise FingerprintError(f"element {name} is not in this model's training data")
                el[row, s] = index[name]
                ct[row, s] = int((batch.slots[row] == s).sum())
        cond = self.model.condition(torch.as_tensor(list(deciles), dtype=torch.long))
        with torch.no_grad():
            mu, _ = self.model.encode(
                (fps - self.mean) / self.std, cond, self.model.composition(el, ct)
            )
        return mu

    # -------------------------------------------------------------------------- composition
    def _draw_composition(
        self, element_logits: torch.Tensor, count_logits: torch.Tensor, rng: np.random.Generator
    ) -> tuple[list[str], list[int]] | str:
        """One composition draw (site counts, then an element per slot), or the reason it
        was rejected."""
        el_logits = element_logits / self.temperature
        if self.inventories is not None:
            counts = self._draw_inventory(count_logits, rng)
        else:
            counts = self._draw_slot_counts(count_logits, rng)
        n_used = len(counts)
        names: list[str] = []
        last_key: tuple[float, int] | None = None
        for slot in range(n_used):
            mask = self.allowed.clone()
            if last_key is not None:
                mask &= torch.tensor([k > last_key for k in self.keys])
            # leave enough more-electronegative allowed elements for the slots still to fill
            mask &= self._later >= n_used - slot - 1
            if not mask.any():
                return "no element set of that size in the allowed elements"
            p = torch.softmax(el_logits[slot].masked_fill(~mask, -torch.inf), -1).numpy()
            pick = int(rng.choice(len(p), p=p / p.sum()))
            names.append(self.elements[pick])
            last_key = self.keys[pick]
        if sum(counts) > self.max_sites:
            return "too many sites"
        from pymatgen.core import Composition

        comp = Composition({n: c for n, c in zip(names, counts, strict=True)})
        if not CHARGE_BALANCE[self.charge_balance](comp):
            return f"not charge balanced ({self.charge_balance})"
        if self.avoid_training and comp.reduced_formula in self.training_formulas:
            # on the nearest template of its inventory it would re-make that training crystal
            return "a training formula"
        return names, counts

    def _draw_inventory(self, count_logits: torch.Tensor, rng: np.random.Generator) -> list[int]:
        """Site counts of the whole cell, drawn jointly: one of the training crystals'
        inventories, weighted by the count heads' probability of all its slots together.
        Drawn slot by slot, the heads' independent odds combine into cells no training
        crystal has (measured: a third of samples, none of them near a held-out perovskite),
        and such a cell has no template to take its sites from."""
        logp = torch.log_softmax(count_logits.double() / self.temperature, -1)
        inv = self.inventories
        score = logp.gather(1, inv.T).sum(0)  # (M,): log p of every slot's count at once
        p = torch.softmax(score, 0).numpy()
        row = inv[int(rng.choice(len(p), p=p / p.sum()))]
        return [int(c) for c in row if c > 0]

    def _draw_slot_counts(self, count_logits: torch.Tensor, rng: np.random.Generator) -> list[int]:
        """Site counts slot by slot: slot 0 always, each next one with its own odds of being
        empty, then a count per filled slot (any inventory, also ones no training crystal has)."""
        count_p = torch.softmax(count_logits / self.temperature, -1).numpy()
        n_used = 1
        while n_used < count_p.shape[0] and rng.random() >= count_p[n_used, 0]:
            n_used += 1
        counts = []
        for slot in range(n_used):
            q = count_p[slot, 1:] / count_p[slot, 1:].sum()
            counts.append(int(rng.choice(len(q), p=q)) + 1)
        return counts

    def _template(self, z: torch.Tensor, counts: list[int]) -> tuple[np.ndarray, float] | None:
        """Coordinates and length of the training crystal nearest to `z` in latent space
        among those with the same site inventory (None when there is none)."""
        t = self.state.get("templates")
        if t is None:
            return None
        k = self.fp_settings.n_slots
        want = torch.tensor(counts + [0] * (k - len(counts)), dtype=torch.int8)
        rows = torch.nonzero((t["counts"] == want).all(1)).flatten()
        if len(rows) == 0:
            return None
        d = ((t["mu"][rows].float() - z) ** 2).sum(1)
        best = int(rows[int(torch.argmin(d))])
        n = sum(counts)
        return t["frac"][best, :n].double().numpy(), float(t["length"][best])

    # --------------------------------------------------------------------------- pipeline
    def decode_latents(
        self, z: torch.Tensor, deciles: Sequence[int], seeds: Sequence[int]
    ) -> list[tuple[Target, int] | None]:
        """Fingerprint + composition per latent; None where no composition draw passed."""
        cond = self.model.condition(torch.as_tensor(list(deciles), dtype=torch.long))
        with torch.no_grad():
            out = self.model.decode(z, cond)
        fps = (out["fingerprint"] * self.std + self.mean).double().numpy()
        rejected: Counter[str] = Counter()
        targets: list[tuple[Target, int] | None] = []
        for i, seed in enumerate(seeds):
            rng = np.random.default_rng(int(seed))
            drawn = None
            for attempt in range(self.max_tries):
                result = self._draw_composition(
                    out["element_logits"][i], out["count_logits"][i], rng
                )
                if isinstance(result, str):
                    rejected[result] += 1
                    continue
                drawn = (result, attempt + 1)
                break
            if drawn is None:
                rejected["no acceptable composition"] += 1
                targets.append(None)
                continue
            (names, counts), tries = drawn
            fp = _zero_empty_slots(fps[i], len(counts), self.fp_settings)
            target = Target(fp, names, counts)
            if self.warm_start:
                target.start = self._template(z[i], counts)
                if target.start is not None and self.arrangement == "ewald":
                    target.start = (
                        arrange_on_template(names, counts, *target.start),
                        target.start[1],
                    )
            targets.append((target, tries))
        self.last_report = {"composition_rejections": dict(rejected)}
        return targets

    def _run(
        self,
        z: torch.Tensor,
        deciles: Sequence[int],
        seeds: Sequence[int],
        mode: str,
        extra: Sequence[dict[str, Any]] | None = None,
    ) -> list[Candidate]:
        start = time.perf_counter()
        decoded = self.decode_latents(z, deciles, seeds)
        keep = [i for i, d in enumerate(decoded) if d is not None]
        # a target with a template start uses the sampling inversion; one without has no
        # sites to keep, so its sites are inverted too
        by_start: dict[bool, list[int]] = {True: [], False: []}
        for i in keep:
            by_start[decoded[i][0].start is not None].append(i)
        inverted: dict[int, InversionResult] = {}
        for has_start, rows in by_start.items():
            if rows:
                settings = self.inversion if has_start else self.free_inversion
                results = invert_many([decoded[i][0] for i in rows], settings, self.fp_settings)
                inverted.update(zip(rows, results, strict=True))
        out = []
        for i in keep:
            result = inverted[i]
            info = (extra[i] if extra else {}) | {
                "fingerprint_loss": result.loss,
                "inversion": result.summary(),
                "composition_draws": decoded[i][1],
            }
            out.append(
                Candidate(
                    structure=result.structure,
                    provenance=Provenance(
                        generator=GENERATOR_NAME,
                        model_version=self.model_version,
                        mode=mode,
                        condition=self._condition(deciles[i]),
                        seed=int(seeds[i]),
                        latent=[round(float(v), 5) for v in z[i]],
                        base_id=(extra[i].get("base_id") if extra else None),
                        extra=info,
                    ),
                )
            )
        self.last_report |= {
            "requested": len(decoded),
            "returned": len(out),
            "seconds": time.perf_counter() - start,
        }
        return out

    @staticmethod
    def _seeds(n: int, seed: int | None) -> list[int]:
        base = int(np.random.SeedSequence().entropy % 2**31) if seed is None else int(seed)
        return [base + i for i in range(n)]

    # ------------------------------------------------------------------------------- modes
    def sample_random(self, n: int, decile: int, seed: int | None = None) -> list[Candidate]:
        """`n` samples of one formation-energy decile (latents from its fitted prior)."""
        self._check_decile(decile)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n == 0:
            return []
        seeds = self._seeds(n, seed)
        z = self._prior_latents(n, decile, seeds)
        return self._run(z, [decile] * n, seeds, "random")

    def base_decile(self, base: Structure, decile: int | None = None) -> int:
        """The decile of a base compound: given, or the one whose prior makes its latent most
        likely (the base's own energy is rarely known on the model's scale)."""
        if decile is not None:
            self._check_decile(decile)
            return int(decile)
        best, best_score = 0, -np.inf
        for d in range(self.n_deciles):
            g = self.prior.get(str(d))
            if g is None:
                continue
            mu = self.encode([base], [d])[0].double()
            dist = torch.distributions.MultivariateNormal(
                torch.tensor(g["mean"], dtype=torch.float64),
                covariance_matrix=torch.tensor(g["cov"], dtype=torch.float64),
            )
            score = float(dist.log_prob(mu))
            if score > best_score:
                best, best_score = d, score
        return best

    def sample_around(
        self,
        base: Structure,
        n: int,
        seed: int | None = None,
        decile: int | None = None,
        scale: float = 0.5,
    ) -> list[Candidate]:
        """Samples near a base compound: its posterior mean plus noise of `scale` prior
        standard deviations."""
        d = self.base_decile(base, decile)
        mu = self.encode([base], [d])[0]
        seeds = self._seeds(n, seed)
        g = self.prior.get(str(d)) or self.prior.get("all")
        sd = torch.tensor(
            np.sqrt(np.diag(g["cov"])) if g else np.ones(len(mu)), dtype=torch.float32
        )
        z = torch.stack(
            [
                mu + scale * sd * torch.randn(len(mu), generator=torch.Generator().manual_seed(s))
                for s in seeds
            ]
        )
        base_id = base.composition.reduced_formula
        extra = [{"base_id": base_id, "scale": scale}] * n
        return self._run(z, [d] * n, seeds, "targeted", extra)

    def interpolate(
        self,
        a: Structure,
        b: Structure,
        n: int,
        seed: int | None = None,
        decile: int | None = None,
    ) -> list[Candidate]:
        """`n` crystals along the straight latent line from `a` to `b` (ends included)."""
        if n < 2:
            raise ValueError("interpolation needs n >= 2 (the two ends)")
        da, db = self.base_decile(a, decile), self.base_decile(b, decile)
        za, zb = self.encode([a], [da])[0], self.encode([b], [db])[0]
        ts = np.linspace(0.0, 1.0, n)
        z = torch.stack([(1 - t) * za + t * zb for t in ts]).float()
        deciles = [int(round((1 - t) * da + t * db)) for t in ts]
        seeds = self._seeds(n, seed)
        ids = f"{a.composition.reduced_formula}->{b.composition.reduced_formula}"
        extra = [{"base_id": ids, "t": float(t)} for t in ts]
        return self._run(z, deciles, seeds, "interpolation", extra)


def _zero_empty_slots(fp: np.ndarray, n_used: int, settings: FingerprintSettings) -> np.ndarray:
    """A decoded fingerprint has small non-zero values in blocks that belong to empty slots
    (as centres or as neighbours); a real crystal has exact zeros there, so set them."""
    k, nr, per = settings.n_slots, settings.n_radial, settings.per_atom_dim
    out = np.array(fp, dtype=np.float64).reshape(k, 3, per)
    out[n_used:] = 0.0
    radial = out[:, :, : k * nr].reshape(k, 3, k, nr)
    radial[:, :, n_used:] = 0.0
    angular = out[:, :, k * nr :].reshape(k, 3, -1, settings.n_pairs, settings.angular_order + 1)
    t_idx, u_idx = np.triu_indices(k)
    angular[..., (t_idx >= n_used) | (u_idx >= n_used), :] = 0.0
    return out.reshape(-1)
