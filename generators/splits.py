"""Train/validation splits and condition deciles shared by every generator.

Why one module: the voxel and fingerprint generators must hold out *the same* crystals, so
their figures on "the held-out perovskites" compare, and a campaign's decile means the same
thing whichever model it samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def record_id(spec: str, record: Any) -> str:
    """Stable id of a record across runs: '<source name>:<source id>' (used for the split)."""
    prefix = (
        spec.split(":", 1)[1] if spec.startswith("matminer:") else Path(spec).name.split(".")[0]
    )
    return f"{prefix}:{record.source_id}"


def split_indices(ids: list[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split that depends only on the ids and the seed."""
    order = np.argsort(np.asarray(ids), kind="stable")
    perm = order[np.random.default_rng(seed).permutation(len(ids))]
    n_val = max(1, int(round(len(ids) * val_fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def decile_edges(values: np.ndarray, n_deciles: int = 10) -> np.ndarray:
    """Inner quantile edges (n_deciles-1) of the finite property values."""
    finite = values[np.isfinite(values)]
    if finite.size < n_deciles:
        raise ValueError(
            f"need at least {n_deciles} structures with the conditioning property, got {finite.size}"
        )
    return np.quantile(finite, np.linspace(0, 1, n_deciles + 1)[1:-1])


def assign_deciles(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), np.asarray(values), side="right").astype(np.int64)
