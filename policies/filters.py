"""The candidate funnel (the voxel paper's Table 2, generalised): every rejection has a reason.

A `Funnel` runs `FilterStep`s in order; each step sees only the survivors of the previous ones,
records one human-readable reason per candidate it rejects and the counts in/out. Steps that
need something the caller did not supply (predictions, a base compound, reference structures)
are skipped and say so in the counts, instead of silently passing or failing everything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from generators.candidate import Candidate


@dataclass
class FunnelContext:
    """What the steps compare against. `predictions` is aligned with the funnel's input."""

    predictions: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
    reference: Sequence[Structure] = ()
    reference_ids: Sequence[str] | None = None
    base: Structure | Composition | str | None = None
    base_properties: Mapping[str, float] = field(default_factory=dict)


@dataclass
class Rejection:
    candidate_id: str
    index: int
    step: str
    reason: str


@dataclass
class StepCount:
    step: str
    entered: int
    rejected: int
    kept: int
    skipped: str | None = None


@dataclass
class FunnelResult:
    kept: list[Candidate]
    kept_index: list[int]
    rejections: list[Rejection]
    counts: list[StepCount]

    @property
    def reasons(self) -> dict[str, str]:
        """candidate id -> 'step: reason'."""
        return {r.candidate_id: f"{r.step}: {r.reason}" for r in self.rejections}

    def summary(self) -> list[dict[str, Any]]:
        return [vars(c).copy() for c in self.counts]


class FilterStep(ABC):
    name: str = "step"

    def skip_reason(self, context: FunnelContext) -> str | None:
        """Why this step cannot run with this context, or None."""
        return None

    @abstractmethod
    def reasons(
        self, candidates: Sequence[Candidate], index: np.ndarray, context: FunnelContext
    ) -> list[str | None]:
        """One entry per candidate: None keeps it, a string rejects it and says why.
        `index` holds the candidates' positions in the funnel input (for predictions)."""


class MinDistanceFilter(FilterStep):
    """No two atoms closer than `min_distance` (A), periodic images included."""

    name = "min_distance"

    def __init__(self, min_distance: float = 0.5) -> None:
        self.min_distance = min_distance

    def reasons(self, candidates, index, context):
        from generators.metrics import min_interatomic_distance

        out = []
        for c in candidates:
            d = min_interatomic_distance(c.structure) if len(c.structure) else 0.0
            ok = d > self.min_distance
            c.validity[self.name] = ok
            out.append(None if ok else f"atoms {d:.2f} A apart (<= {self.min_distance} A)")
        return out


class ChargeBalanceFilter(FilterStep):
    """At least one charge-neutral assignment of common oxidation states (pymatgen's
    `oxi_state_guesses`, cached per reduced formula: batches repeat formulas a lot)."""

    name = "charge_balance"

    @staticmethod
    def balanced(composition: Composition) -> bool:
        from generators.generation_metrics import oxidation_states_balanced

        return oxidation_states_balanced(composition)

    def reasons(self, candidates, index, context):
        out = []
        for c in candidates:
            ok = self.balanced(c.structure.composition)
            c.validity[self.name] = ok
            out.append(None if ok else f"{c.formula} has no charge-balanced oxidation states")
        return out


def _composition(value: Structure | Composition | str) -> Composition:
    if isinstance(value, Structure):
        return value.composition
    return Composition(value)


class StoichiometryFilter(FilterStep):
    """Keep the base compound's stoichiometry when sampling around it: same anonymised formula
    (ABX3 stays ABX3) or, with mode='elements', also the same elements."""

    name = "stoichiometry"

    def __init__(self, base: Structure | Composition | str | None = None, mode: str = "anonymous"):
        if mode not in {"anonymous", "elements", "formula"}:
            raise ValueError("mode must be anonymous, elements or formula")
        self.base, self.mode = base, mode

    def skip_reason(self, context):
        return None if (self.base or context.base) is not None else "no base compound"

    def reasons(self, candidates, index, context):
        base = _composition(self.base if self.base is not None else context.base)
        out = []
        for c in candidates:
            comp = c.structure.composition
            if comp.anonymized_formula != base.anonymized_formula:
                out.append(f"{comp.reduced_formula} is not {base.anonymized_formula}")
            elif self.mode == "elements" and set(comp.elements) != set(base.elements):
                out.append(f"{comp.reduced_formula} has other elements than {base.reduced_formula}")
            elif self.mode == "formula" and comp.reduced_formula != base.reduced_formula:
                out.append(f"{comp.reduced_formula} != {base.reduced_formula}")
            else:
                out.append(None)
        return out


def spacegroup_number(structure: Structure, symprec: float = 0.1) -> int:
    try:
        return SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number()
    except Exception:  # spglib fails on some broken cells: treat as P1
        return 1


class _MatcherIndex:
    """Structures bucketed by reduced formula; inside a bucket the space group (computed lazily,
    once per structure) must agree before StructureMatcher (slow) runs. Indexing thousands of
    references is then nearly free and checks stay fast."""

    def __init__(self, matcher: StructureMatcher, symprec: float) -> None:
        self.matcher, self.symprec = matcher, symprec
        self.buckets: dict[str, list[list[Any]]] = {}

    def add(self, label: str, structure: Structure, spacegroup: int | None = None) -> None:
        formula = structure.composition.reduced_formula
        self.buckets.setdefault(formula, []).append([label, structure, spacegroup])

    def find(self, structure: Structure) -> tuple[str | None, int | None]:
        """(label of the first match or None, the structure's space group if computed)."""
        entries = self.buckets.get(structure.composition.reduced_formula, [])
        if not entries:
            return None, None
        spacegroup = spacegroup_number(structure, self.symprec)
        for entry in entries:
            if entry[2] is None:
                entry[2] = spacegroup_number(entry[1], self.symprec)
            if entry[2] == spacegroup and self.matcher.fit(structure, entry[1]):
                return entry[0], spacegroup
        return None, spacegroup


class NoveltyFilter(FilterStep):
    """Not already in the store (context.reference: the campaign's earlier cycles); the
    training data is `KnownCrystalFilter`'s."""

    name = "novelty"

    def __init__(
        self,
        reference: Sequence[Structure] | None = None,
        reference_ids: Sequence[str] | None = None,
        symprec: float = 0.1,
        matcher: StructureMatcher | None = None,
    ) -> None:
        self.reference, self.reference_ids = reference, reference_ids
        self.symprec = symprec
        self.matcher = matcher or StructureMatcher()
        self._index: _MatcherIndex | None = None
        self._indexed: int | None = None

    def _build(self, context: FunnelContext) -> _MatcherIndex:
        reference = self.reference if self.reference is not None else context.reference
        ids = self.reference_ids if self.reference is not None else context.reference_ids
        if self._index is None or self._indexed != id(reference):
            index = _MatcherIndex(self.matcher, self.symprec)
            for i, s in enumerate(reference):
                index.add(str(ids[i]) if ids is not None else f"reference #{i}", s)
            self._index, self._indexed = index, id(reference)
        return self._index

    def skip_reason(self, context):
        ref = self.reference if self.reference is not None else context.reference
        return None if ref else "no reference structures"

    def reasons(self, candidates, index, context):
        known = self._build(context)
        out = []
        for c in candidates:
            match, _ = known.find(c.structure)
            c.validity[self.name] = match is None
            out.append(None if match is None else f"matches known structure {match}")
        return out


class KnownCrystalFilter(FilterStep):
    """Not a crystal some data set already holds (a generator's training data, the Materials
    Project): a DFT relaxation of one re-computes what is known. `known` answers
    ``find(structure) -> 'source:id' | None`` (``generators.known.KnownCrystals``)."""

    name = "known"

    def __init__(self, known: Any) -> None:
        self.known = known

    def reasons(self, candidates, index, context):
        out = []
        for c in candidates:
            match = self.known.find(c.structure)
            c.validity[self.name] = match is None
            out.append(None if match is None else f"is the known crystal {match}")
        return out


class DuplicateFilter(FilterStep):
    """Duplicates within the batch: the first occurrence is kept."""

    name = "duplicates"

    def __init__(self, symprec: float = 0.1, matcher: StructureMatcher | None = None) -> None:
        self.symprec = symprec
        self.matcher = matcher or StructureMatcher()

    def reasons(self, candidates, index, context):
        seen = _MatcherIndex(self.matcher, self.symprec)
        out = []
        for c in candidates:
            match, spacegroup = seen.find(c.structure)
            if match is None:
                seen.add(c.id, c.structure, spacegroup)
                out.append(None)
            else:
                out.append(f"duplicate of candidate {match}")
        return out


class PropertyWindowFilter(FilterStep):
    """Predicted property inside [low, high], or within `relative` of the base compound's value
    (the paper keeps formation energies within 20 % of the base)."""

    name = "property_window"

    def __init__(
        self,
        property: str = "formation_energy_per_atom",
        low: float | None = None,
        high: float | None = None,
        relative: float | None = None,
        base_value: float | None = None,
    ) -> None:
        self.property, self.low, self.high = property, low, high
        self.relative, self.base_value = relative, base_value

    def bounds(self, context: FunnelContext) -> tuple[float, float]:
        low = -np.inf if self.low is None else self.low
        high = np.inf if self.high is None else self.high
        if self.relative is not None:
            base = self.base_value
            if base is None:
                base = context.base_properties.get(self.property)
            if base is not None:
                width = abs(base) * self.relative
                low, high = max(low, base - width), min(high, base + width)
        return low, high

    def skip_reason(self, context):
        if context.predictions is None or self.property not in context.predictions:
            return f"no predictions of {self.property}"
        if self.low is None and self.high is None:
            if self.relative is None or (
                self.base_value is None and self.property not in context.base_properties
            ):
                return "no window (neither bounds nor a base value)"
        return None

    def reasons(self, candidates, index, context):
        low, high = self.bounds(context)
        mean = np.asarray(context.predictions[self.property][0])[index]
        out = []
        for value in mean:
            if np.isfinite(value) and low <= value <= high:
                out.append(None)
            else:
                out.append(f"predicted {self.property} {value:.3g} outside [{low:.3g}, {high:.3g}]")
        return out


class Funnel:
    """Ordered filter steps; `run` returns survivors, reasons and per-step counts."""

    def __init__(self, steps: Sequence[FilterStep]) -> None:
        self.steps = list(steps)

    def run(
        self,
        candidates: Sequence[Candidate],
        predictions: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
        context: FunnelContext | None = None,
    ) -> FunnelResult:
        context = context or FunnelContext()
        if predictions is not None:
            context.predictions = predictions
        alive = np.arange(len(candidates))
        rejections: list[Rejection] = []
        counts: list[StepCount] = []
        for step in self.steps:
            entered = len(alive)
            skip = step.skip_reason(context)
            if skip is not None:
                counts.append(StepCount(step.name, entered, 0, entered, skipped=skip))
                continue
            reasons = step.reasons([candidates[i] for i in alive], alive, context)
            keep = []
            for i, reason in zip(alive, reasons, strict=True):
                if reason is None:
                    keep.append(i)
                else:
                    rejections.append(Rejection(candidates[i].id, int(i), step.name, reason))
            alive = np.asarray(keep, dtype=np.int64)
            counts.append(StepCount(step.name, entered, entered - len(alive), len(alive)))
        return FunnelResult(
            [candidates[i] for i in alive], [int(i) for i in alive], rejections, counts
        )


def default_funnel(
    min_distance: float = 0.5,
    base: Structure | Composition | str | None = None,
    window_property: str = "formation_energy_per_atom",
    relative_window: float | None = 0.2,
) -> Funnel:
    """The paper's order: cheap geometry and chemistry first, structure matching last but one,
    the model-based window at the end."""
    return Funnel(
        [
            MinDistanceFilter(min_distance),
            ChargeBalanceFilter(),
            StoichiometryFilter(base),
            DuplicateFilter(),
            NoveltyFilter(),
            PropertyWindowFilter(window_property, relative=relative_window),
        ]
    )
