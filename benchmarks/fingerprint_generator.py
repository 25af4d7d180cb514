"""Fingerprint generator against issue 11's targets, in CDVAE's terms.

Phases (each writes its own JSON under benchmarks/results/, so they can run in parallel):
- `reconstruct-perov`: inversion of the held-out perov_5 crystals (the 379 ids the shipped
  model keeps out of training; the voxel model holds out the same ones);
- `reconstruct-matminer`: inversion of the cubic Materials Project crystals (<= 10 sites) of
  matminer 0.4.0's flla_2015;
- `sample`: 100 random samples per decile from the shipped model: CDVAE validity, uniqueness,
  novelty against the model's whole training set (perovskites and MP crystals), COV-R / COV-P
  against the held-out perovskites next to the ceiling of as many real training crystals,
  candidates/s end to end, and the Spearman correlation between the decile and the mean
  CGCNN-predicted formation energy (Materials Project scale) of its samples.

    python benchmarks/fingerprint_generator.py reconstruct-perov [--limit N] [--threads 1]
    python benchmarks/fingerprint_generator.py reconstruct-matminer [--limit N]
    python benchmarks/fingerprint_generator.py sample [--per-decile 100]
    python benchmarks/fingerprint_generator.py throughput [--per-decile 100]  (sampling only)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
PEROV = SHARED / "perov_5" / "val.csv.gz"
FLLA = SHARED / "matminer_0.4.0" / "flla_2015.csv.gz"
RESULTS = REPO / "benchmarks" / "results"

TARGETS = {
    "match_rate": (">=", 0.95),
    "match_rate_lattice": (">=", 0.95),
    "median_seconds_per_structure": ("<=", 3.0),
    "struct_valid": (">=", 0.99),
    "comp_valid": (">=", 0.95),
    "uniqueness": (">=", 0.90),
    "novelty": (">=", 0.90),
    "valid_candidates_per_s": (">=", 10.0),
    "spearman_decile_vs_predicted_ef": (">=", 0.8),
}


def _met(key: str, value) -> str:
    if key not in TARGETS or value is None:
        return ""
    op, target = TARGETS[key]
    ok = value >= target if op == ">=" else value <= target
    return f"{op} {target}: {'met' if ok else 'NOT met'}"


def _report(name: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"fingerprint_{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    print(f"\n{name}")
    for key, value in payload.items():
        if isinstance(value, (int, float)) or value is None:
            shown = (
                "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else value)
            )
            print(f"  {key:36s} {shown:>10}  {_met(key, value)}")
    print(f"wrote {path}")


def reconstruct(which: str, limit: int | None) -> None:
    from generators.data import load_source, select_cubic
    from generators.evaluation import reconstruction_figures
    from generators.fingerprint.sample import FingerprintGenerator
    from generators.splits import record_id

    if which == "perov":
        records, _ = load_source(str(PEROV))
        val_ids = set(FingerprintGenerator.load().state["val_ids"])
        records = [r for r in records if record_id(str(PEROV), r) in val_ids]
    else:
        records, _ = load_source(str(FLLA))
        records, _ = select_cubic(records, max_atoms=10)
    records = records[:limit] if limit else records
    start = time.perf_counter()
    figures, _ = reconstruction_figures(
        "fingerprint",
        None,
        records,
        progress=lambda done: print(f"\r{done}/{len(records)}", end="", flush=True),
    )
    per = figures.pop("per_structure")
    failures = [p for p in per if not p["lattice_match"]]
    payload = {
        "data": str(PEROV if which == "perov" else FLLA),
        "selection": "held-out split of the shipped model"
        if which == "perov"
        else "cubic conventional cells with <= 10 sites",
        **figures,
        "wall_seconds": time.perf_counter() - start,
        "failures": failures,
    }
    _report(f"reconstruct_{which}", payload)


def sample(
    per_decile: int, workers: int, temperature: float | None = None, slot_counts: bool = False
) -> None:
    from scipy.stats import spearmanr

    from generators.data import load_source, select_cubic
    from generators.evaluation import sampling_figures, split_records
    from generators.fingerprint.sample import FingerprintGenerator
    from policies.surrogate import load_default

    options = {"training_inventories": False} if slot_counts else {}
    if temperature is not None:
        options["composition_temperature"] = temperature
    gen = FingerprintGenerator.load(**options)
    default = FingerprintGenerator.load()
    records, _ = load_source(str(PEROV))
    held, train, _ = split_records(gen, records, str(PEROV))
    # the model's whole training set: novelty is against every crystal it learnt, and the
    # coverage ceiling puts as many of them in the samples' place (the issue's definition)
    mp, _ = select_cubic(load_source(str(FLLA))[0], max_atoms=10)
    _, mp_train, _ = split_records(gen, mp, str(FLLA))
    train = train + mp_train
    figures, candidates = sampling_figures(gen, held, train, per_decile, seed=0, workers=workers)
    surrogate = load_default()
    by_decile = []
    for d in range(gen.n_deciles):
        structures = [c.structure for c in candidates if c.provenance.condition["decile"] == d]
        if not structures:
            by_decile.append(None)
            continue
        mean, _ = surrogate.predict(structures, properties=["formation_energy_per_atom"])[
            "formation_energy_per_atom"
        ]
        by_decile.append(float(np.mean(mean)))
    finite = [(d, v) for d, v in enumerate(by_decile) if v is not None]
    rho = spearmanr([d for d, _ in finite], [v for _, v in finite]).statistic
    sites = [len(c.structure) for c in candidates]
    payload = {
        "model_version": gen.model_version,
        "per_decile": per_decile,
        "reference": f"{len(held)} held-out perov_5 crystals",
        "training": f"{len(train) - len(mp_train)} perov_5 + {len(mp_train)} cubic MP crystals "
        "(the model's training set: novelty and the coverage ceiling)",
        "avoid_training_formulas": gen.avoid_training,
        "training_inventories": gen.inventories is not None,
        "arrangement": gen.arrangement,
        "composition_temperature": gen.temperature,
        **figures,
        "spearman_decile_vs_predicted_ef": float(rho),
        "mean_predicted_ef_per_decile_mp_scale": by_decile,
        "mean_sites": float(np.mean(sites)) if sites else None,
        "inversion": gen.inversion.model_dump(),
    }
    name = "sample"
    if gen.temperature != default.temperature:
        name += f"_t{gen.temperature:g}"
    if slot_counts:
        name += "_slot_counts"
    _report(name, payload)


def throughput(per_decile: int) -> None:
    """Sampling alone (no coverage fingerprints), so that it can be timed on free cores."""
    from generators.evaluation import sample_deciles
    from generators.fingerprint.sample import FingerprintGenerator
    from generators.generation_metrics import composition_valid, structure_valid

    gen = FingerprintGenerator.load()
    candidates, seconds = sample_deciles(gen, per_decile, seed=0)
    valid = sum(
        structure_valid(c.structure) and composition_valid(c.structure.composition)
        for c in candidates
    )
    _report(
        "throughput",
        {
            "model_version": gen.model_version,
            "requested": per_decile * gen.n_deciles,
            "returned": len(candidates),
            "valid": valid,
            "sampling_seconds": seconds,
            "valid_candidates_per_s": valid / seconds,
        },
    )


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "phase", choices=["reconstruct-perov", "reconstruct-matminer", "sample", "throughput"]
    )
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--per-decile", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1, help="CrystalNN processes")
    parser.add_argument(
        "--composition-temperature",
        type=float,
        default=None,
        help="sample: softmax temperature of the composition heads (default: the generator's; "
        "results in fingerprint_sample_t<T>.json when another)",
    )
    parser.add_argument(
        "--slot-counts",
        action="store_true",
        help="sample: draw site counts slot by slot instead of among the training inventories "
        "(results in fingerprint_sample[_t<T>]_slot_counts.json)",
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.phase == "sample":
        sample(args.per_decile, args.workers, args.composition_temperature, args.slot_counts)
    elif args.phase == "throughput":
        throughput(args.per_decile)
    else:
        reconstruct(args.phase.split("-")[1], args.limit)


if __name__ == "__main__":
    main()
