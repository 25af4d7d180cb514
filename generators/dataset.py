"""A generator that proposes known crystals from a data set, optionally rattled.

Why: campaigns need a baseline to compare the VAE against, replay benchmarks need candidates
whose labels are known, and the agent's crash tests need candidates that pw.x relaxes in
seconds. Each draw is reproducible from (seed, index).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from generators.candidate import Candidate, Provenance
from generators.data.records import Record


class DatasetGenerator:
    name = "dataset"

    def __init__(self, records: Sequence[Record], rattle: float = 0.0, label: str = "dataset"):
        if not records:
            raise ValueError("DatasetGenerator needs at least one record")
        if rattle < 0:
            raise ValueError(f"rattle must be >= 0 Angstrom, got {rattle}")
        self.records = list(records)
        self.rattle = rattle
        self.label = label

    def sample(self, n: int, seed: int = 0) -> list[Candidate]:
        """Draw `n` records without replacement (with replacement once the pool is exhausted)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = np.random.default_rng(seed)
        replace = n > len(self.records)
        picks = rng.choice(len(self.records), size=n, replace=replace)
        candidates = []
        for draw, index in enumerate(picks):
            record = self.records[int(index)]
            structure = record.structure.copy()
            if self.rattle > 0:
                displacement = rng.normal(0.0, self.rattle, size=(len(structure), 3))
                for i, vector in enumerate(displacement):
                    structure.translate_sites([i], vector, frac_coords=False, to_unit_cell=True)
            candidates.append(
                Candidate(
                    structure=structure,
                    provenance=Provenance(
                        generator=self.name,
                        model_version=self.label,
                        mode="dataset",
                        seed=seed,
                        base_id=record.source_id,
                        extra={"draw": draw, "rattle": self.rattle},
                    ),
                )
            )
        return candidates
