"""Joint species assignment of a decoded cell under charge neutrality.

The UNet votes each site's element on its own, so a decoded cell often has a composition
that no set of oxidation states can balance (35 % of the shipped model's random samples).
The sites' votes usually leave several elements nearly as likely; taking, among the
assignments close to the vote, the most probable one that SMACT accepts (the same test as
CDVAE's composition validity, `generators.generation_metrics.composition_valid`) keeps the
UNet's evidence and returns a cell that chemistry allows. When no assignment within the
search budget balances, the vote stands and the result says so.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Composition, Element

from generators.generation_metrics import composition_valid


@dataclass(frozen=True)
class Assignment:
    """The chosen element per site and what choosing it cost."""

    z: tuple[int, ...]
    balanced: bool
    log_prob_lost: float  # summed log-probability given up against the per-site vote
    tried: int  # assignments tested


@dataclass(frozen=True)
class AssignmentSettings:
    """How far the search may stray from the vote.

    top_k: elements considered per site (the vote's k most probable). budget: assignments
    tested, best first, before the vote is kept unbalanced; 5-site perovskites with k = 4 have
    1,024 in all, so 256 reaches every one that gives up less than the fourth choice at two
    sites. floor: probability given to an element a site never voted for (log 0 would forbid
    nothing and rank nothing).
    """

    top_k: int = 4
    budget: int = 256
    floor: float = 1e-4


def _formula_ok(z: tuple[int, ...]) -> bool:
    counts = Counter(z)
    return composition_valid(Composition({Element.from_Z(k): v for k, v in counts.items()}))


def assign_species(
    probabilities: np.ndarray,
    elements: np.ndarray,
    settings: AssignmentSettings | None = None,
) -> Assignment:
    """Most probable charge-balanced assignment of `elements` to sites.

    `probabilities` is (sites, len(elements)): each site's normalised vote. Assignments are
    enumerated in order of summed log-probability (a best-first walk over the per-site
    rankings), so the first balanced one is the most probable balanced one in the top-k set.
    """
    settings = settings or AssignmentSettings()
    probabilities = np.asarray(probabilities, dtype=np.float64)
    elements = np.asarray(elements)
    if probabilities.ndim != 2 or probabilities.shape[1] != elements.size:
        raise ValueError(
            f"probabilities must be (sites, {elements.size}), got {probabilities.shape}"
        )
    n_sites = probabilities.shape[0]
    if n_sites == 0:
        return Assignment((), False, 0.0, 0)
    logp = np.log(np.maximum(probabilities, settings.floor))
    k = min(settings.top_k, elements.size)
    order = np.argsort(-logp, axis=1)[:, :k]  # (sites, k) element indices, best first
    ranked = np.take_along_axis(logp, order, axis=1)
    best = float(ranked[:, 0].sum())
    start = (0,) * n_sites
    heap = [(-best, start)]
    seen = {start}
    tried = 0
    while heap and tried < settings.budget:
        neg, ranks = heapq.heappop(heap)
        z = tuple(int(elements[order[i, r]]) for i, r in enumerate(ranks))
        tried += 1
        if _formula_ok(z):
            return Assignment(z, True, best + neg, tried)
        for i in range(n_sites):
            if ranks[i] + 1 < k:
                nxt = ranks[:i] + (ranks[i] + 1,) + ranks[i + 1 :]
                if nxt not in seen:
                    seen.add(nxt)
                    score = -neg - ranked[i, ranks[i]] + ranked[i, ranks[i] + 1]
                    heapq.heappush(heap, (-score, nxt))
    vote = tuple(int(elements[order[i, 0]]) for i in range(n_sites))
    return Assignment(vote, False, 0.0, tried)
