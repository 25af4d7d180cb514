"""Voxel generator: species by per-site vote vs joint charge-balanced assignment.

Why: the campaign option `generators[].options.species` picks the decoder, and its default
must be the one that measures better. For each mode: random samples (`--per-decile` x 10
deciles, the same seeds), their structural and SMACT composition validity (CDVAE's tests,
`generators.generation_metrics`) and candidates/s end to end; then the CDVAE reconstruction
match rate on the held-out perovskites (encode -> posterior mean -> decode).

    python benchmarks/voxel_species_assignment.py [--per-decile 50] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared/data/perov_5/val.csv.gz"
RESULT = Path(__file__).resolve().parent / "results/voxel_species_assignment.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--per-decile", type=int, default=50)
    parser.add_argument("--json", type=Path, default=RESULT)
    args = parser.parse_args()

    from generators.data import load_source
    from generators.evaluation import reconstruction_figures, split_records
    from generators.generation_metrics import composition_valid, structure_valid
    from generators.voxel.sample import SPECIES_MODES, VoxelGenerator

    records, _ = load_source(args.data)
    out: dict = {"data": args.data, "per_decile": args.per_decile, "modes": {}}
    for mode in SPECIES_MODES:
        gen = VoxelGenerator.load(species=mode)
        held, _, _ = split_records(gen, records, args.data)
        start = time.perf_counter()
        cands = [
            c for d in range(gen.n_deciles) for c in gen.sample_random(args.per_decile, d, 1000 * d)
        ]
        seconds = time.perf_counter() - start
        structures = [c.structure for c in cands]
        decoded = [s for s in structures if len(s) > 0]
        assigned = [c.provenance.extra.get("assignment") for c in cands]
        assigned = [a for a in assigned if a]
        recon, _ = reconstruction_figures("voxel", gen, held)
        out["model_version"] = gen.model_version
        out["modes"][mode] = {
            "samples": len(cands),
            "candidates_per_s": round(len(cands) / seconds, 2),
            "structure_valid": float(np.mean([structure_valid(s) for s in decoded])),
            "composition_valid_smact": float(
                np.mean([composition_valid(s.composition) for s in decoded])
            ),
            "assignment_balanced": float(np.mean([a["balanced"] for a in assigned]))
            if assigned
            else None,
            "assignment_mean_log_prob_lost": float(np.mean([a["log_prob_lost"] for a in assigned]))
            if assigned
            else None,
            "reconstruction": {
                k: v for k, v in recon.items() if isinstance(v, (int, float)) or v is None
            },
        }
        print(mode, json.dumps(out["modes"][mode]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
