"""Benchmark: the trained voxel generator against the figures of Court et al. 2020 (issue 3).

    python benchmarks/voxel_generator.py --json benchmarks/results/voxel_generator.json
    python benchmarks/voxel_generator.py --model path/to/models --data ../shared/data/perov_5/val.csv.gz

Evaluates the shipped default model (or --model DIR|vae.pt) on the held-out part of its own
training data (the validation ids stored in the checkpoints) and by random sampling per decile.
Prints a table and writes JSON with: VAE reconstruction MSE, UNet nonzero-class recall, mean EMD,
lattice MAE and mean |delta N sites| of encode -> VAE -> UNet -> decode (and of UNet-only
segmentation of the true density), random-sampling validity, uniqueness, novelty, charge balance
and candidates/s. Same as `crystalloop evaluate generator`.
Targets: recall >= 0.87, EMD <= 0.09 A, lattice MAE <= 0.06 A, |dN| <= 0.2, validity >= 0.90,
>= 40 candidates/s (issue 12; the paper: validity 0.76).
"""

from __future__ import annotations

import argparse

from generators.voxel.evaluate import run_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="model dir or vae.pt (default: shipped)")
    parser.add_argument(
        "--data",
        nargs="*",
        default=None,
        help="CSV / matminer:NAME / folder (default: the model's training source, held-out split)",
    )
    parser.add_argument("--json", default=None, help="write figures here")
    parser.add_argument(
        "--per-decile", type=int, default=100, help="random samples per decile (0: skip)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="held-out structures to use (0: skip)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes (default 1)")
    args = parser.parse_args()
    run_evaluation(
        args.model,
        args.data,
        args.json,
        args.per_decile,
        args.limit,
        args.seed,
        args.threads,
        workers=args.workers,
    )


if __name__ == "__main__":
    main()
