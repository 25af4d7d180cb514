"""CDVAE's evaluation of a generator, for either of ours: one script's worth of figures.

Reconstruction (match rate, lattice-checked match rate, RMS, seconds per crystal) on the
held-out crystals of a data set, and random sampling over the deciles scored with
`generators.generation_metrics.evaluate_samples` against the same held-out crystals, next to
the ceiling that as many real training crystals reach. The held-out split is the one stored
in the model, so figures are never measured on training data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from generators.data.records import Record
from generators.splits import record_id


def model_val_ids(generator: Any) -> set[str]:
    """The validation ids stored with a model (fingerprint CVAE or voxel VAE + UNet)."""
    state = getattr(generator, "state", None)
    if state is not None:
        return set(state.get("val_ids", []))
    ids = set(generator.vae_state["data"]["val_ids"])
    return ids | set(generator.unet_state["data"]["val_ids"])


def split_records(
    generator: Any, records: Sequence[Record], spec: str
) -> tuple[list[Record], list[Record], bool]:
    """(held-out, training, whether the split came from the model). Records the model has
    never seen count as held out, and then there are no training records to compare with."""
    val_ids = model_val_ids(generator)
    ids = [record_id(spec, r) for r in records]
    held = [r for r, i in zip(records, ids, strict=True) if i in val_ids]
    if not held:
        return list(records), [], False
    train = [r for r, i in zip(records, ids, strict=True) if i not in val_ids]
    return held, train, True


def reconstruction_figures(
    kind: str,
    generator: Any,
    records: Sequence[Record],
    progress: Callable[[int], None] | None = None,
    inversion: Any = None,
) -> tuple[dict[str, Any], list[Any]]:
    """Match rates (CDVAE StructureMatcher, and with the lattice within 1 %) and timing."""
    from generators.generation_metrics import match, match_rates
    from generators.reconstruct import reconstruct_fingerprint, reconstruct_voxel

    if kind == "fingerprint":
        recon = reconstruct_fingerprint([r.structure for r in records], inversion, progress)
    else:
        recon = reconstruct_voxel(records, generator, progress)
    pairs = [(r.structure, rec.structure) for r, rec in zip(recon, records, strict=True)]
    figures = match_rates(pairs)
    per = [match(p, t) for p, t in pairs]
    seconds = [r.seconds for r in recon]
    figures |= {
        "median_seconds_per_structure": float(np.median(seconds)) if seconds else None,
        "mean_seconds_per_structure": float(np.mean(seconds)) if seconds else None,
        "per_structure": [
            {
                "id": rec.source_id,
                "formula": rec.structure.composition.reduced_formula,
                "match": m["match"],
                "lattice_match": m["lattice_match"],
                "rms": m["rms"],
                "seconds": round(r.seconds, 3),
                "a_true": round(float(rec.structure.lattice.a), 4),
                "a_pred": None if r.structure is None else round(float(r.structure.lattice.a), 4),
                **{k: v for k, v in r.info.items() if k in ("loss", "hops", "restarts", "error")},
            }
            for r, rec, m in zip(recon, records, per, strict=True)
        ],
    }
    return figures, recon


def sample_deciles(
    generator: Any, per_decile: int, seed: int, deciles: Sequence[int] | None = None
) -> tuple[list[Any], float]:
    """Random samples of every decile and the wall time they took, end to end."""
    deciles = list(range(generator.n_deciles)) if deciles is None else list(deciles)
    start = time.perf_counter()
    out = []
    for d in deciles:
        out += generator.sample_random(per_decile, d, seed=seed + 100_003 * d)
    return out, time.perf_counter() - start


def sampling_figures(
    generator: Any,
    reference: Sequence[Record],
    training: Sequence[Record],
    per_decile: int,
    seed: int = 0,
    workers: int = 1,
) -> tuple[dict[str, Any], list[Any]]:
    """`evaluate_samples` of per_decile x deciles random samples, plus candidates/s."""
    from generators.generation_metrics import evaluate_samples

    candidates, seconds = sample_deciles(generator, per_decile, seed)
    requested = per_decile * generator.n_deciles
    structures = [c.structure if len(c.structure) else None for c in candidates]
    structures += [None] * (requested - len(structures))  # dropped samples count as invalid
    figures = evaluate_samples(
        structures,
        [r.structure for r in reference],
        [r.structure for r in training],
        workers=workers,
    )
    n_valid = figures.get("n_valid") or 0
    figures |= {
        "requested": requested,
        "sampling_seconds": seconds,
        "candidates_per_s": len(candidates) / seconds if seconds else None,
        "valid_candidates_per_s": n_valid / seconds if seconds else None,
    }
    return figures, candidates
