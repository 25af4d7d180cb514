"""What a generator's gated fine-tune on a campaign's DFT results did.

Both learning generators (`generators.fingerprint.finetune`, `generators.voxel.finetune`)
return it, so the retraining that records their verdicts (agent.generator_retrain) reads one
shape whichever model learnt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GeneratorFineTune:
    """The verdict, both versions' figures, and `state`: the new checkpoint when deployed."""

    deployed: bool
    reason: str
    used: int
    skipped: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    condition: str = ""  # how the new crystals' condition deciles were set

    def summary(self) -> dict[str, Any]:
        return {
            "deployed": self.deployed,
            "reason": self.reason,
            "used": self.used,
            "skipped": self.skipped,
            "metrics": self.metrics,
            "condition": self.condition,
            "model_version": (self.state or {}).get("model_version"),
        }
