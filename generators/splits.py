"""Train/validation splits and condition deciles shared by every generator.

Why one module: the voxel and fingerprint generators must hold out *the same* crystals, so
their figures on "the held-out perovskites" compare, and a campaign's decile means the same
thing whichever model it samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# the energy scale of each training source's formation energies (see the brief: a model
# trained on one scale does not predict the other, so every decile names its scale)
SCALES = {
    "perov_5": "perov_5 heat_ref: GPAW RPBE vs Castelli's elemental references (eV/atom)",
    "val": "perov_5 heat_ref: GPAW RPBE vs Castelli's elemental references (eV/atom)",
    "flla_2015": "Materials Project PBE formation energy, matminer flla_2015 (eV/atom)",
}


def scale_of(spec: str) -> str:
    """The energy scale a source's formation energies are on."""
    name = spec.split(":", 1)[1] if spec.startswith("matminer:") else Path(spec).name.split(".")[0]
    return SCALES.get(name, f"formation_energy_per_atom as given in {spec}")


def locate_source(spec: str) -> str:
    """A training source as a checkpoint names it, found on this machine. Checkpoints store
    the path their training command was given: relative to the repository root, or absolute
    on the machine that trained them; the data lives in `shared/data/` beside the repository
    (CI's layout), so a path that is not there is looked up from the root and then under the
    `shared/` beside it."""
    path = Path(spec)
    if spec.startswith("matminer:") or path.exists():
        return spec
    repo = Path(__file__).resolve().parents[1]
    candidates = [] if path.is_absolute() else [repo / path]
    parts = path.parts
    if "shared" in parts:
        candidates.append(repo.parent / Path(*parts[parts.index("shared") :]))
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    return spec


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
