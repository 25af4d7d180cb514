"""Generation and reconstruction metrics computed the way CDVAE computes them.

Crystal-generation papers (CDVAE, DiffCSP, ...) report perov_5 / mp_20 figures from one
evaluation script (Xie et al. 2021, txie-93/cdvae `scripts/eval_utils.py` and
`scripts/compute_metrics.py`). A figure is comparable with theirs only when every choice below
is the same as theirs: the 0.5 A / 0.1 A^3 validity thresholds, SMACT's full (smact14)
oxidation-state lists, the matminer fingerprints, the fixed composition scaler, the coverage
cutoffs and the StructureMatcher tolerances. This module reimplements those definitions on top
of pymatgen, smact and matminer; see the notes on each function where it departs from CDVAE.

`cdvae_comp_scaler.json` (132 means and standard deviations of the magpie composition
features) is data copied from `cdvae/common/constants.py` of txie-93/cdvae, MIT licence,
Copyright (c) Facebook, Inc. and its affiliates.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition, Structure
from scipy.spatial.distance import cdist

from generators.metrics import min_interatomic_distance

__all__ = [
    "CDVAE_MATCHER",
    "composition_fingerprint",
    "composition_valid",
    "coverage",
    "evaluate_samples",
    "fingerprints",
    "match",
    "match_rates",
    "novelty",
    "oxidation_states_balanced",
    "structure_fingerprint",
    "structure_valid",
    "uniqueness",
]

#: StructureMatcher tolerances of CDVAE's reconstruction, uniqueness and novelty checks.
CDVAE_MATCHER = dict(stol=0.5, angle_tol=10, ltol=0.3)

#: CDVAE's coverage cutoffs (structure, composition fingerprint distance) per data set.
COV_CUTOFFS = {"perov_5": (0.2, 4.0), "carbon_24": (0.2, 4.0), "mp_20": (0.4, 10.0)}

_SCALER_PATH = Path(__file__).with_name("cdvae_comp_scaler.json")

Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------------- validity


def structure_valid(
    structure: Structure | None, min_distance: float = 0.5, min_volume: float = 0.1
) -> bool:
    """A generated cell is physically meaningless when two atoms (or an atom and its own
    periodic image) nearly coincide or the cell has collapsed; CDVAE calls such samples
    structurally invalid and so do we, with its thresholds (>= 0.5 A, >= 0.1 A^3).

    Unlike CDVAE, which only looks at distinct sites, the distance to a site's own images
    counts too, so a one-atom cell with a 0.3 A lattice vector is invalid as well."""
    if structure is None or len(structure) == 0:
        return False
    try:
        if not structure.volume >= min_volume:  # also rejects NaN
            return False
        # LLL reduction first: min_interatomic_distance only looks at +-1 lattice images,
        # which finds the shortest ones only for a reasonably reduced cell
        reduced = structure.get_reduced_structure(reduction_algo="LLL")
        return bool(min_interatomic_distance(reduced) >= min_distance)
    except (ValueError, ArithmeticError, np.linalg.LinAlgError):
        return False


def _integer_counts(composition: Composition) -> dict[str, int]:
    """Element -> integer amount; oxidation states are dropped, fractional occupancies are
    replaced by pymatgen's integer formula for them."""
    amounts = composition.element_composition.get_el_amt_dict()
    if all(abs(v - round(v)) < 1e-6 for v in amounts.values()):
        return {el: int(round(v)) for el, v in amounts.items() if round(v) > 0}
    formula, _ = composition.element_composition.get_integer_formula_and_factor()
    return {el: int(v) for el, v in Composition(formula).get_el_amt_dict().items()}


@lru_cache(maxsize=65536)
def _smact_valid(counts: tuple[tuple[str, int], ...]) -> bool:
    from smact.screening import smact_validity

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # smact >= 3 defaults to the ICSD-24 oxidation states; CDVAE used
            # Element.oxidation_states of smact 2, which smact 4 calls "smact14"
            return bool(
                smact_validity(
                    Composition(dict(counts)),
                    use_pauling_test=True,
                    include_alloys=True,
                    oxidation_states_set="smact14",
                )
            )
    except KeyError:  # an element SMACT has no data for (e.g. a dummy species)
        return False


def composition_valid(composition: Composition | str) -> bool:
    """Whether some assignment of SMACT oxidation states makes the formula charge-neutral with
    cations less electronegative than anions (Pauling); single elements and all-metal
    alloys pass. This is CDVAE's chemical sanity check, so a generator's "composition
    validity" can be set against the published figures.

    Only the reduced integer formula matters (as in CDVAE), so results are cached by it."""
    key = _reduced_key(composition)
    return bool(key) and _smact_valid(key)


def _reduced_key(composition: Composition | str) -> tuple[tuple[str, int], ...]:
    """(element, count) of the reduced integer formula, sorted: the cache key of both
    charge-balance tests (empty for an empty composition)."""
    counts = _integer_counts(Composition(composition))
    if not counts:
        return ()
    divisor = math.gcd(*counts.values())
    return tuple(sorted((el, n // divisor) for el, n in counts.items()))


def oxidation_states_balanced(composition: Composition | str) -> bool:
    """Whether pymatgen finds a charge-neutral assignment of its ICSD-common oxidation states
    (``oxi_state_guesses``); single elements pass. Stricter than `composition_valid`: SMACT's
    full lists include states such as Ti(-1) that let BaSrTi2O through. This is the campaign
    funnel's charge-balance test, so a generator that draws compositions with it proposes
    only formulas the funnel keeps."""
    key = _reduced_key(composition)
    return bool(key) and _oxi_balanced(key)


@lru_cache(maxsize=65536)
def _oxi_balanced(counts: tuple[tuple[str, int], ...]) -> bool:
    if len(counts) == 1:
        return True  # an element is neutral by definition
    return bool(Composition(dict(counts)).oxi_state_guesses(max_sites=-20))


# ----------------------------------------------------------------------------- fingerprints


@cache
def _crystalnn():
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops")


@cache
def _magpie():
    from matminer.featurizers.composition.composite import ElementProperty

    return ElementProperty.from_preset("magpie")


@cache
def _comp_scaler() -> tuple[np.ndarray, np.ndarray]:
    data = json.loads(_SCALER_PATH.read_text())
    return np.asarray(data["means"], dtype=np.float64), np.asarray(data["stds"], dtype=np.float64)


def structure_fingerprint(structure: Structure | None) -> np.ndarray | None:
    """A fixed-length description of local coordination (CrystalNN order parameters averaged
    over sites) so that crystals with different site counts can be compared by Euclidean
    distance, as CDVAE's coverage does. None when featurisation fails; CDVAE then counts the
    sample as invalid and leaves it out of coverage."""
    if structure is None or len(structure) == 0:
        return None
    featurizer = _crystalnn()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sites = [featurizer.featurize(structure, i) for i in range(len(structure))]
    except Exception:  # CrystalNN raises many kinds of errors on odd cells
        return None
    return np.asarray(sites, dtype=np.float64).mean(axis=0)


def composition_fingerprint(composition: Composition | str) -> np.ndarray:
    """Magpie element-property statistics, standardised with CDVAE's fixed constants (not with
    statistics of the data at hand), so the composition cutoff of coverage means the same as
    in the papers. Features magpie cannot compute (NaN) become 0, as in CDVAE's scaler."""
    comp = Composition(composition)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = np.asarray(_magpie().featurize(comp), dtype=np.float64)
    means, stds = _comp_scaler()
    scaled = (raw - means) / stds
    return np.where(np.isnan(scaled), 0.0, scaled)


def _both_fingerprints(structure: Structure | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    struct_fp = structure_fingerprint(structure)
    if struct_fp is None:
        return None, None
    try:
        return struct_fp, composition_fingerprint(structure.composition)
    except Exception:  # treat like a failed structure fingerprint
        return None, None


def fingerprints(
    structures: Sequence[Structure | None],
    progress: Progress | None = None,
    workers: int = 1,
) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Structure and composition fingerprints of many crystals, in order (both None where a
    structure is None or CrystalNN fails, as in CDVAE). CrystalNN costs a fraction of a second
    per crystal, so `workers` > 1 spreads the work over processes. `progress(done, total)`
    is called after each crystal."""
    total = len(structures)
    struct_fps: list[np.ndarray | None] = []
    comp_fps: list[np.ndarray | None] = []

    def collect(results: Iterable[tuple[np.ndarray | None, np.ndarray | None]]) -> None:
        for done, (sfp, cfp) in enumerate(results, start=1):
            struct_fps.append(sfp)
            comp_fps.append(cfp)
            if progress is not None:
                progress(done, total)

    if workers <= 1 or total < 2:
        collect(_both_fingerprints(s) for s in structures)
    else:
        _crystalnn(), _magpie(), _comp_scaler()  # built once; forked workers inherit them
        chunk = max(1, min(64, total // (4 * workers)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            collect(pool.map(_both_fingerprints, structures, chunksize=chunk))
    return struct_fps, comp_fps


# --------------------------------------------------------------------------------- coverage


def coverage(
    gen_struct_fps: Sequence[np.ndarray | None],
    gen_comp_fps: Sequence[np.ndarray | None],
    ref_struct_fps: Sequence[np.ndarray | None],
    ref_comp_fps: Sequence[np.ndarray | None],
    struct_cutoff: float = 0.2,
    comp_cutoff: float = 4.0,
    n_generated: int | None = None,
) -> dict:
    """CDVAE's COV-R (how much of the reference set the generator reaches) and COV-P (how
    much of what it generates resembles something real). A crystal is "near" another when
    both its structure and its composition fingerprints are within the cutoffs (defaults:
    perov_5; mp_20 uses 0.4 / 10).

    Generated entries with a None fingerprint (no sample or failed featurisation) are left
    out of the distances but still count in COV-P's denominator, `n_generated` (default: the
    number of entries passed in). Reference entries with None are dropped (CDVAE's
    references always featurise). Also returns the mean minimum distances (CDVAE's AMSD /
    AMCD), None when undefined."""
    if len(gen_struct_fps) != len(gen_comp_fps) or len(ref_struct_fps) != len(ref_comp_fps):
        raise ValueError("structure and composition fingerprint lists differ in length")
    if n_generated is None:
        n_generated = len(gen_struct_fps)
    gen = [
        (s, c)
        for s, c in zip(gen_struct_fps, gen_comp_fps, strict=True)
        if s is not None and c is not None
    ]
    ref = [
        (s, c)
        for s, c in zip(ref_struct_fps, ref_comp_fps, strict=True)
        if s is not None and c is not None
    ]
    if not ref:
        raise ValueError("no reference fingerprints")
    result = {
        "cov_recall": 0.0,
        "cov_precision": 0.0,
        "amsd_recall": None,
        "amsd_precision": None,
        "amcd_recall": None,
        "amcd_precision": None,
        "n_generated": int(n_generated),
        "n_generated_featurised": len(gen),
        "n_reference": len(ref),
    }
    if not gen:
        return result
    struct_dist = cdist(np.stack([s for s, _ in gen]), np.stack([s for s, _ in ref]))
    comp_dist = cdist(np.stack([c for _, c in gen]), np.stack([c for _, c in ref]))
    struct_recall, struct_precision = struct_dist.min(axis=0), struct_dist.min(axis=1)
    comp_recall, comp_precision = comp_dist.min(axis=0), comp_dist.min(axis=1)
    recall_hits = (struct_recall <= struct_cutoff) & (comp_recall <= comp_cutoff)
    precision_hits = (struct_precision <= struct_cutoff) & (comp_precision <= comp_cutoff)
    result.update(
        cov_recall=float(recall_hits.mean()),
        cov_precision=float(precision_hits.sum() / n_generated) if n_generated else 0.0,
        amsd_recall=float(struct_recall.mean()),
        amsd_precision=float(struct_precision.mean()),
        amcd_recall=float(comp_recall.mean()),
        amcd_precision=float(comp_precision.mean()),
    )
    return result


# ---------------------------------------------------------------------------------- matching


@cache
def _matcher() -> StructureMatcher:
    return StructureMatcher(**CDVAE_MATCHER)


def match(pred: Structure | None, true: Structure, lattice_tol: float = 0.01) -> dict:
    """Whether a reconstruction is the same crystal as its target under CDVAE's matcher
    (only structurally valid predictions count), its RMS displacement, and the stricter
    `lattice_match`: StructureMatcher scales volumes, so a cell 5 % too large still
    "matches"; lattice_match also demands every cell length (as given, not reduced) within
    `lattice_tol` relative error.

    CDVAE's own script also requires the prediction to be composition-valid (its `valid`);
    a match has the target's composition, so that only differs for targets SMACT rejects."""
    out = {"match": False, "rms": None, "lattice_match": False}
    if pred is None or not structure_valid(pred):
        return out
    matcher = _matcher()
    try:
        matched = bool(matcher.fit(pred, true))
        rms = matcher.get_rms_dist(pred, true) if matched else None
    except Exception:  # CDVAE counts a matcher error as no match
        return out
    out["match"] = matched
    out["rms"] = None if rms is None else float(rms[0])
    if matched:
        a_pred = np.asarray(pred.lattice.abc, dtype=np.float64)
        a_true = np.asarray(true.lattice.abc, dtype=np.float64)
        out["lattice_match"] = bool(np.all(np.abs(a_pred - a_true) / a_true <= lattice_tol))
    return out


def match_rates(
    pairs: Iterable[tuple[Structure | None, Structure]], lattice_tol: float = 0.01
) -> dict:
    """CDVAE's reconstruction figures over (prediction, target) pairs: match rate, mean RMS
    over the matches, and the lattice-aware match rate that volume scaling cannot flatter."""
    results = [match(pred, true, lattice_tol=lattice_tol) for pred, true in pairs]
    n = len(results)
    rms = [r["rms"] for r in results if r["match"] and r["rms"] is not None]
    return {
        "match_rate": sum(r["match"] for r in results) / n if n else 0.0,
        "match_rate_lattice": sum(r["lattice_match"] for r in results) / n if n else 0.0,
        "mean_rms": float(np.mean(rms)) if rms else None,
        "n": n,
    }


def _by_formula(structures: Iterable[Structure]) -> dict[str, list[Structure]]:
    groups: dict[str, list[Structure]] = defaultdict(list)
    for s in structures:
        groups[s.composition.reduced_formula].append(s)
    return groups


def uniqueness(structures: Sequence[Structure]) -> float:
    """Fraction of crystals that are not a repeat of an earlier one: a generator that keeps
    producing the same crystal scores low even when each one is valid. Two crystals can only
    match with the same reduced formula, so only those are compared, and each crystal is
    compared with the earlier *distinct* ones (a repeat of a repeat is a repeat). NaN for an
    empty list."""
    if not structures:
        return float("nan")
    matcher = _matcher()
    n_unique = 0
    for group in _by_formula(structures).values():
        distinct: list[Structure] = []
        for s in group:
            if not any(matcher.fit(s, d) for d in distinct):
                distinct.append(s)
        n_unique += len(distinct)
    return n_unique / len(structures)


def novelty(structures: Sequence[Structure], training: Sequence[Structure]) -> float:
    """Fraction of crystals that match no training crystal: what a generator adds beyond
    memorising its data. Only training crystals with the same reduced formula are compared.
    NaN for an empty list."""
    if not structures:
        return float("nan")
    matcher = _matcher()
    known = _by_formula(training)
    novel = 0
    for s in structures:
        candidates = known.get(s.composition.reduced_formula, ())
        if not any(matcher.fit(s, t) for t in candidates):
            novel += 1
    return novel / len(structures)


# -------------------------------------------------------------------------------- evaluation


def _offset(progress: Progress | None, start: int, total: int) -> Progress | None:
    if progress is None:
        return None
    return lambda done, _n: progress(start + done, total)


def evaluate_samples(
    samples: Sequence[Structure | None],
    reference: Sequence[Structure],
    training: Sequence[Structure],
    workers: int = 1,
    progress: Progress | None = None,
    *,
    struct_cutoff: float = 0.2,
    comp_cutoff: float = 4.0,
    seed: int = 0,
) -> dict:
    """CDVAE's generation table for one set of samples, plus the figure it lacks: coverage
    grows with the number of samples, so the same coverage is computed for as many real
    training crystals (`ceiling_*`, chosen at random with `seed`) against the same
    `reference`, and every sample size is reported.

    A None sample (the generator produced nothing) is invalid and counts in every
    denominator. As in CDVAE, `valid` needs structural and composition validity and a
    structure fingerprint; uniqueness and novelty are fractions of the valid samples;
    coverage uses every featurisable sample. `progress(done, total)` covers the fingerprints
    (samples, reference, ceiling crystals), the slow part."""
    n = len(samples)
    rng = np.random.default_rng(seed)
    n_ceiling = min(n, len(training))
    ceiling_idx = np.sort(rng.choice(len(training), size=n_ceiling, replace=False))
    ceiling = [training[int(i)] for i in ceiling_idx]
    total = n + len(reference) + n_ceiling

    gen_s, gen_c = fingerprints(samples, _offset(progress, 0, total), workers)
    ref_s, ref_c = fingerprints(list(reference), _offset(progress, n, total), workers)
    ceil_s, ceil_c = fingerprints(ceiling, _offset(progress, n + len(reference), total), workers)

    struct_ok = [structure_valid(s) for s in samples]
    comp_ok = [s is not None and len(s) > 0 and composition_valid(s.composition) for s in samples]
    valid = [a and b and fp is not None for a, b, fp in zip(struct_ok, comp_ok, gen_s, strict=True)]
    valid_structures = [s for s, ok in zip(samples, valid, strict=True) if ok]

    def rate(flags: list[bool]) -> float | None:
        return sum(flags) / len(flags) if flags else None

    def finite(x: float) -> float | None:
        return None if math.isnan(x) else x

    cov = coverage(gen_s, gen_c, ref_s, ref_c, struct_cutoff, comp_cutoff, n_generated=n)
    ceil = coverage(ceil_s, ceil_c, ref_s, ref_c, struct_cutoff, comp_cutoff, n_ceiling)
    result = {
        "n": n,
        "n_none": sum(s is None for s in samples),
        "struct_valid": rate(struct_ok),
        "comp_valid": rate(comp_ok),
        "valid": rate(valid),
        "n_valid": len(valid_structures),
        "uniqueness": finite(uniqueness(valid_structures)),
        "novelty": finite(novelty(valid_structures, training)),
        "n_training": len(training),
        "struct_cutoff": struct_cutoff,
        "comp_cutoff": comp_cutoff,
    }
    result.update(cov)
    result.update({f"ceiling_{k}": v for k, v in ceil.items() if k != "n_reference"})
    return result
