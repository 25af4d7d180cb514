"""The one train / hold-out split of labelled rows, shared by `crystalloop surrogate train`,
`crystalloop surrogate calibrate` and benchmarks/surrogate.py: calibration must be fitted on
exactly the rows that training held out, so all three must draw the same split."""

from __future__ import annotations

import numpy as np


def train_holdout(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, hold-out rows): a seeded permutation, the last `holdout` fraction held out."""
    order = np.random.default_rng(seed).permutation(n)
    cut = n - int(round(holdout * n))
    return order[:cut], order[cut:]
