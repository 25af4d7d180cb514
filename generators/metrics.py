"""Structure-comparison metrics shared by every benchmark and policy.

All distances are in Angstrom and periodic (minimum image). Predicted and true structures may
differ in cell, site count and species; each metric says what it does then.
"""

from __future__ import annotations

import numpy as np
from pymatgen.core import Lattice, Structure
from scipy.optimize import linear_sum_assignment


def _lengths(value: Structure | Lattice | np.ndarray | tuple[float, ...]) -> np.ndarray:
    if isinstance(value, Structure):
        return np.array(value.lattice.abc, dtype=np.float64)
    if isinstance(value, Lattice):
        return np.array(value.abc, dtype=np.float64)
    return np.asarray(value, dtype=np.float64).reshape(3)


def periodic_distances(pred: Structure, true: Structure) -> np.ndarray:
    """(len(pred), len(true)) minimum-image distances, measured in the *true* cell.

    Fractional positions of pred are placed in the true lattice, so a wrong cell length is
    not counted twice: `lattice_mae` measures it on its own.
    """
    return true.lattice.get_all_distances(pred.frac_coords, true.frac_coords)


def worst_case_distance(structure: Structure) -> float:
    """Largest possible minimum-image distance in the cell (half the body diagonal when
    orthogonal); the cost of a site that has no partner in `emd`."""
    return 0.5 * float(np.linalg.norm(structure.lattice.matrix.sum(axis=0)))


def emd(
    pred: Structure,
    true: Structure,
    *,
    species_aware: bool = False,
    unmatched_cost: float | None = None,
) -> float:
    """Earth mover's distance (A) between predicted and true sites: mean cost per site of the
    optimal one-to-one assignment (Hungarian, `scipy.optimize.linear_sum_assignment`) under
    periodic minimum-image distances in the true cell.

    Different site counts: the min(Np, Nt) sites are matched optimally and each of the
    |Np - Nt| unmatched sites costs `unmatched_cost` (default: `worst_case_distance(true)`);
    the total is divided by max(Np, Nt). Equal counts give the plain mean matched distance.
    With `species_aware`, pairing two different elements also costs `unmatched_cost`, so the
    metric measures where each element went. An empty prediction costs `unmatched_cost`.
    """
    penalty = worst_case_distance(true) if unmatched_cost is None else float(unmatched_cost)
    n_pred, n_true = len(pred), len(true)
    if n_true == 0 and n_pred == 0:
        return 0.0
    if n_pred == 0 or n_true == 0:
        return penalty
    cost = periodic_distances(pred, true)
    if species_aware:
        zp = np.array([s.specie.Z for s in pred])
        zt = np.array([s.specie.Z for s in true])
        cost = np.where(zp[:, None] == zt[None, :], cost, np.maximum(cost, penalty))
    rows, cols = linear_sum_assignment(cost)
    total = float(cost[rows, cols].sum()) + penalty * abs(n_pred - n_true)
    return total / max(n_pred, n_true)


def lattice_mae(pred, true) -> float:
    """Mean absolute error (A) of the cell lengths a, b, c (Structures, Lattices or arrays)."""
    return float(np.mean(np.abs(_lengths(pred) - _lengths(true))))


def delta_n_sites(pred: Structure | None, true: Structure) -> int:
    """|N_pred - N_true|; a missing prediction (None) counts as zero sites."""
    return abs((0 if pred is None else len(pred)) - len(true))


def composition_match(pred: Structure | None, true: Structure, *, reduced: bool = False) -> bool:
    """Same elements in the same amounts (`reduced=True`: same reduced formula only)."""
    if pred is None:
        return False
    if reduced:
        return pred.composition.reduced_composition == true.composition.reduced_composition
    return pred.composition == true.composition


def min_interatomic_distance(structure: Structure) -> float:
    """Shortest periodic distance (A) between two sites, including a site and its own images;
    inf for an empty structure."""
    if len(structure) == 0:
        return float("inf")
    # shortest non-zero lattice vector = distance between a site and its own nearest image
    # (combinations up to +-1 suffice for the reduced cells used here)
    steps = np.array(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij")).reshape(3, -1).T
    vectors = steps[np.any(steps != 0, axis=1)] @ structure.lattice.matrix
    shortest = float(np.linalg.norm(vectors, axis=1).min())
    if len(structure) == 1:
        return shortest
    dist = structure.distance_matrix.copy()
    np.fill_diagonal(dist, np.inf)
    return float(min(dist.min(), shortest))


def is_valid(structure: Structure | None, min_distance: float = 0.5) -> bool:
    """A crystal is valid when it has sites and no two are closer than `min_distance` (A)."""
    if structure is None or len(structure) == 0:
        return False
    return min_interatomic_distance(structure) > min_distance
