"""The campaign's working parts, built from its configuration: generators, surrogate, filters,
acquisition policy and DFT backend. The loop talks only to this object, so the seams between
generators -> policies -> dft stay in one place."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from agent.config import CampaignConfig, GeneratorConfig, VoxelOptions
from agent.store import Store
from generators.candidate import Candidate


class ComponentError(ValueError):
    """A campaign names something that cannot be built (unknown generator, missing file)."""


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class GeneratorSlot:
    """One configured generator: knows how to draw its share of a cycle's candidates."""

    def __init__(
        self,
        config: GeneratorConfig,
        campaign_elements: list[str] | None = None,
        funnel_charge_balance: bool = False,
    ):
        self.config = config
        self.campaign_elements = campaign_elements
        self.funnel_charge_balance = funnel_charge_balance
        self._impl: Any = None
        self.version = "configured"  # or the campaign's fine-tuned version once deployed

    def _build(self, state: dict | None = None) -> Any:
        cfg = self.config
        if cfg.name == "fingerprint":
            from agent.config import FingerprintOptions
            from generators.fingerprint.sample import (
                FREE_SITES,
                SAMPLING_INVERSION,
                FingerprintGenerator,
            )
            from generators.fingerprint.settings import InversionSettings

            opts = FingerprintOptions.model_validate(cfg.options)
            inversion = InversionSettings(
                **SAMPLING_INVERSION
                | {"trials": opts.trials, "hops": opts.hops, "steps_per_hop": opts.steps_per_hop}
                | (FREE_SITES if opts.refine_sites else {})
            )
            try:
                options = dict(
                    inversion=inversion,
                    elements=opts.elements or self.campaign_elements,
                    composition_temperature=opts.composition_temperature,
                    warm_start=opts.warm_start,
                    max_sites=opts.max_sites,
                    avoid_training_formulas=opts.avoid_training_formulas,
                    training_inventories=opts.training_inventories,
                    arrangement=opts.arrangement,
                    charge_balance=opts.charge_balance
                    or ("oxidation-states" if self.funnel_charge_balance else "smact"),
                )
                if state is not None:  # a version fine-tuned on the campaign's DFT results
                    return FingerprintGenerator(state, **options)
                return FingerprintGenerator.load(cfg.checkpoint, **options)
            except (FileNotFoundError, ValueError) as exc:
                raise ComponentError(f"generator 'fingerprint': {exc}") from exc
        if cfg.name == "voxel-vae":
            from generators.voxel.sample import VoxelGenerator

            voxel = VoxelOptions.model_validate(cfg.options)
            options = dict(
                workers=voxel.workers,
                prior=voxel.prior,
                species=voxel.species,
                decoder=voxel.decoder,
                bandwidth=voxel.bandwidth,
            )
            try:
                if state is not None:  # a VAE fine-tuned on the campaign's DFT results
                    from generators.voxel.checkpoints import load_checkpoint
                    from generators.voxel.sample import checkpoint_paths

                    unet = load_checkpoint(checkpoint_paths(cfg.checkpoint)[1], "unet")
                    return VoxelGenerator(state, unet, **options)
                return VoxelGenerator.load(cfg.checkpoint, **options)
            except (FileNotFoundError, ValueError) as exc:
                raise ComponentError(f"generator 'voxel-vae': {exc}") from exc
        if cfg.name == "dataset":
            from generators.data import load_source, select_cubic
            from generators.dataset import DatasetGenerator

            opts = cfg.options
            source = opts.get("source")
            if not source:
                raise ComponentError(
                    "generator 'dataset' needs options.source: a CSV, a CIF folder or matminer:NAME"
                )
            if str(source).startswith("matminer:"):
                from generators.data import fetch_matminer

                fetch_matminer()  # idempotent: pip-downloads matminer's sdist only the first time
            records, _ = load_source(source)
            max_sites = int(opts.get("max_sites", 40))
            if opts.get("cubic", True):
                records, _ = select_cubic(records, max_atoms=max_sites)
            records = [r for r in records if len(r.structure) <= max_sites]
            if opts.get("elements"):
                allowed = set(opts["elements"])
                records = [
                    r for r in records if {e.symbol for e in r.structure.composition} <= allowed
                ]
            min_elements = int(opts.get("min_elements", 1))
            records = [r for r in records if len(r.structure.composition) >= min_elements]
            if not records:
                raise ComponentError(f"generator 'dataset': no structures in {source} match")
            return DatasetGenerator(records, rattle=float(cfg.options.get("rattle", 0.0)))
        raise ComponentError(
            f"unknown generator {cfg.name!r}: use 'voxel-vae', 'fingerprint' or 'dataset'"
        )

    @property
    def impl(self) -> Any:
        if self._impl is None:
            self._impl = self._build()
        return self._impl

    def use(self, state: dict, version: str) -> None:
        """Sample from `state` (a checkpoint fine-tuned on the campaign's results) from now on."""
        self._impl = self._build(state)
        self.version = version

    def sample(self, seed: int) -> list[Candidate]:
        cfg = self.config
        n = cfg.candidates_per_cycle
        if cfg.name == "dataset":
            return self.impl.sample(n, seed=seed)
        if cfg.mode == "around-base":
            bases = [_base_structure(b) for b in cfg.base_compounds]
            out: list[Candidate] = []
            for i, (base, k) in enumerate(zip(bases, _split(n, len(bases)), strict=True)):
                out += self.impl.sample_around(base, k, seed=(seed * 31 + i) * 100_003)
            return out
        out = []
        for decile, k in zip(cfg.deciles, _split(n, len(cfg.deciles)), strict=True):
            # candidate i of a decile uses seed + i: space the deciles' seeds so they never
            # share latents (the decoder's output depends mostly on z, little on the decile)
            out += self.impl.sample_random(k, decile, seed=(seed * 31 + decile) * 100_003)
        return out


def _base_structure(spec: str) -> Structure:
    """A base compound: a CIF/POSCAR path, or a formula looked up among the shipped perovskite
    prototypes (cubic ABX3 with the B site at the centre)."""
    path = Path(spec).expanduser()
    if path.exists():
        return Structure.from_file(path)
    from pymatgen.core import Composition, Lattice

    comp = Composition(spec)
    if len(comp) == 3 and comp.num_atoms == 5:
        # ideal cubic perovskite: the element with 3 atoms is X, the smaller cation sits at B
        x = next(el for el, n in comp.items() if n == 3)
        a_el, b_el = sorted(
            (el for el in comp if el != x), key=lambda el: -(el.atomic_radius or 1.5)
        )
        return Structure(
            Lattice.cubic(3.9),
            [a_el, b_el, x, x, x],
            [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
        )
    raise ComponentError(f"base compound {spec!r}: give a structure file for non-ABX3 compounds")


class Components:
    def __init__(self, config: CampaignConfig, backend: Any = None):
        self.config = config
        self.generators = [
            GeneratorSlot(g, config.filters.elements, config.filters.charge_balance)
            for g in config.generators
        ]
        self._backend = backend
        self._surrogate: Any = None
        self.surrogate_version: str | None = None
        self._policy: Any = None
        self._known: Any = None
        # (formula, DFT formation energy per atom) of the campaign's results: the hull that a
        # predicted e_above_hull is measured against; the loop refreshes it before each use
        self.hull_points: list[tuple[str, float]] = []
        self._known_phases: dict[frozenset[str], list[tuple[str, float]]] = {}

    @property
    def known(self) -> Any:
        """The crystals of `filters.known_sources` (None when none are named): what a
        candidate must not be, and what a relaxed crystal is compared with in the summary."""
        sources = self.config.filters.known_sources
        if self._known is None and sources:
            from generators.known import KnownCrystals

            try:
                self._known = KnownCrystals(sources)
            except (OSError, ValueError) as exc:
                raise ComponentError(f"filters.known_sources: {exc}") from exc
        return self._known

    def known_phases(self, elements: Iterable[str]) -> list[tuple[str, float]]:
        """(formula, formation energy per atom, MP scale) of the known crystals made of the
        campaign's elements (`filters.elements`, else `elements`: those of its results),
        for its hull; empty without `filters.known_sources` on that scale."""
        if self.known is None:
            return []
        chemsys = frozenset(self.config.filters.elements or elements)
        if chemsys not in self._known_phases:
            self._known_phases[chemsys] = self.known.formation_energies(chemsys)
        return self._known_phases[chemsys]

    # -- generation ----------------------------------------------------------------------
    def generate(self, seed: int) -> list[Candidate]:
        out: list[Candidate] = []
        for i, slot in enumerate(self.generators):
            out += slot.sample(seed * 7 + i)
        return out

    def refresh_generators(self, store: Store, campaign: str) -> None:
        """Use the campaign's deployed fine-tuned generators, once there are some."""
        from agent.generator_retrain import KINDS, load_generator_state

        for slot in self.generators:
            kind = KINDS.get(slot.config.name)
            doc = store.deployed_model(campaign, kind) if kind else None
            if not doc or not doc.get("weights_id") or slot.version == doc["version"]:
                continue
            state, version = load_generator_state(
                store, campaign, slot.config.checkpoint, slot.config.name
            )
            slot.use(state, version)

    # -- surrogate -----------------------------------------------------------------------
    def refresh_surrogate(self, store: Store, campaign: str) -> str:
        """Use the campaign's deployed model (after a retraining passed the gate)."""
        doc = store.deployed_model(campaign, "surrogate")
        version = doc["version"] if doc else "shipped-default"
        if self._surrogate is None or version != self.surrogate_version:
            from agent.retrain import load_deployed

            self._surrogate, _ = load_deployed(store, campaign)
            self.surrogate_version = version
        return version

    @property
    def surrogate(self) -> Any:
        if self._surrogate is None:
            from policies.surrogate import load_default

            self._surrogate = load_default()
            self.surrogate_version = "shipped-default"
        return self._surrogate

    def predict(
        self,
        structures: Sequence[Structure],
        embeddings: bool = False,
        properties: Sequence[str] | None = None,
    ) -> Any:
        """The surrogate's predictions, plus ``e_above_hull`` when the objective asks for it:
        no network predicts a distance to this campaign's hull, so it is derived from the
        predicted formation energy and the hull of the DFT results so far (`hull_points`)."""
        wanted = list(properties) if properties is not None else None
        derived = self.config.objective.property == "e_above_hull" and (
            wanted is None or "e_above_hull" in wanted
        )
        if wanted is not None and derived:
            wanted = [p for p in wanted if p != "e_above_hull"] + ["formation_energy_per_atom"]
        predictions = self.surrogate.predict(structures, properties=wanted, embeddings=embeddings)
        if derived:
            from dft.formation import hull_formation_energy

            mean, std = predictions["formation_energy_per_atom"]
            hull = hull_formation_energy([s.composition for s in structures], self.hull_points)
            predictions["e_above_hull"] = (mean - hull, std)  # sigma: the hull itself is DFT
            members = predictions.members.get("formation_energy_per_atom")
            if members is not None:
                predictions.members["e_above_hull"] = members - hull
        return predictions

    @staticmethod
    def prediction_summary(predictions: Any, index: int) -> dict[str, dict[str, float | None]]:
        def finite(x: float) -> float | None:
            x = float(x)
            return x if math.isfinite(x) else None

        return {
            prop: {"mean": finite(mean[index]), "std": finite(std[index])}
            for prop, (mean, std) in predictions.items()
        }

    # -- filters -------------------------------------------------------------------------
    @staticmethod
    def known_structures(store: Store, campaign: str, exclude_cycle: int) -> list[Structure]:
        """Structures the campaign already holds (earlier cycles), for the novelty filter."""
        docs = store.find_candidates(
            campaign,
            ("pooled", "selected", "submitted", "running", "completed", "failed"),
            extra={"cycle": {"$ne": exclude_cycle}},
            projection={"structure": 1},
        )
        return [Store.structure_of(d) for d in docs]

    def base_compound(self) -> Structure | None:
        """The first base compound of an around-base generator: the stoichiometry and property
        window filters compare candidates with it."""
        for g in self.config.generators:
            if g.mode == "around-base" and g.base_compounds:
                return _base_structure(g.base_compounds[0])
        return None

    def screen(
        self,
        docs: Sequence[dict],
        structures: Sequence[Structure],
        predictions: Any,
        known: Sequence[Structure],
    ) -> dict[str, dict[str, str]]:
        """candidate id -> {filter step: reason} ({} = passed every step)."""
        from policies import filters as fl

        f = self.config.filters
        prop = self.config.objective.property
        steps: list[Any] = []
        if f.elements is not None:
            from policies.chemistry import AllowedElementsFilter

            steps.append(AllowedElementsFilter(f.elements))
        if f.min_distance is not None:
            steps.append(fl.MinDistanceFilter(f.min_distance))
        if f.charge_balance:
            steps.append(fl.ChargeBalanceFilter())
        if f.stoichiometry:
            steps.append(fl.StoichiometryFilter())
        if f.batch_duplicates:
            steps.append(fl.DuplicateFilter())
        if f.novelty:
            steps.append(fl.NoveltyFilter())
        if self.known is not None:
            steps.append(fl.KnownCrystalFilter(self.known))
        if f.property_window is not None:
            steps.append(fl.PropertyWindowFilter(prop, relative=f.property_window))
        base = self.base_compound()
        base_properties = {}
        if base is not None and f.property_window is not None:
            base_properties = {prop: float(self.predict([base])[prop][0][0])}
        candidates = [
            Candidate(
                structure=s, provenance=d.get("provenance") or {"generator": "?"}, id=d["_id"]
            )
            for d, s in zip(docs, structures, strict=True)
        ]
        context = fl.FunnelContext(reference=known, base=base, base_properties=base_properties)
        result = fl.Funnel(steps).run(candidates, predictions, context)
        verdicts: dict[str, dict[str, str]] = {c.id: {} for c in candidates}
        for rejection in result.rejections:
            verdicts[rejection.candidate_id][rejection.step] = rejection.reason
        return verdicts

    # -- selection -----------------------------------------------------------------------
    def objective(self) -> dict[str, Any]:
        obj = self.config.objective
        if obj.goal == "window":
            low = obj.min if obj.min is not None else -math.inf
            high = obj.max if obj.max is not None else math.inf
            return {"property": obj.property, "goal": "window", "window": (low, high)}
        return {"property": obj.property, "goal": "minimize"}

    def policy(self, seed: int) -> Any:
        from policies.acquisition import make_policy

        acq = self.config.acquisition
        params = dict(acq.params)
        if acq.diversity:
            return make_policy(
                "diverse",
                inner=acq.policy,
                inner_params=params,
                objective=self.objective(),
                seed=seed,
            )
        return make_policy(acq.policy, objective=self.objective(), seed=seed, **params)

    def select(
        self,
        structures: Sequence[Structure],
        n: int,
        best: float | None,
        seed: int,
        taken_formulas: Iterable[str] = (),
    ) -> tuple[np.ndarray, list[int]]:
        """Scores for the whole pool and the indices of the `n` picked. With
        `acquisition.one_per_formula`, a pick whose reduced formula is in `taken_formulas` (or
        already picked) is passed over for the policy's next choice: two polymorphs of one
        formula are rarely worth two relaxations in one small campaign."""
        predictions = self.predict(
            structures,
            embeddings=self.config.acquisition.diversity,
            properties=[self.config.objective.property],
        )
        scores = np.asarray(self.policy(seed).score(None, predictions, best), dtype=float)
        if not self.config.acquisition.one_per_formula:
            return scores, list(self.policy(seed).select(None, predictions, n, best))
        formulas = [s.composition.reduced_formula for s in structures]
        ask = n
        while True:
            # A fresh policy per ask: a stochastic policy (Thompson) redraws from its seed.
            ranked = list(self.policy(seed).select(None, predictions, ask, best))
            seen, picks = set(taken_formulas), []
            for i in ranked:
                if formulas[i] not in seen:
                    seen.add(formulas[i])
                    picks.append(i)
            if len(picks) >= n or ask >= len(structures):
                return scores, picks[:n]
            ask = min(len(structures), 2 * ask)

    # -- DFT -----------------------------------------------------------------------------
    @property
    def backend(self) -> Any:
        if self._backend is None:
            from dft.backends import get_backend

            kwargs = (
                {"concurrency": self.config.dft.max_concurrent}
                if self.config.dft.backend == "local"
                else {}
            )
            self._backend = get_backend(self.config.dft.backend, **kwargs)
        return self._backend

    def flow(self, structure: Structure, candidate_id: str) -> Any:
        from dft.makers import relax_candidate

        return relax_candidate(
            structure,
            candidate_id=candidate_id,
            prerelax=self.config.dft.chgnet_prerelax,
            settings_overrides=self.config.dft.settings_overrides(self.config.filters.elements),
            input_overrides=self.config.dft.input_overrides(),
            calculation=self.config.dft.calculation,
            symprec=self.config.dft.symprec,
        )
