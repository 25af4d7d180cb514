"""Hyper-parameters of the voxel generator's training, in one settings object.

Every trainer, the CLI and the checkpoints (which store a dump of it) read the same object, so
a value set once (flag, env CRYSTALLOOP_GENERATOR_*, or default) is the value every stage
uses and records. The paper's values are the defaults. It lives apart from the training code
so that code that only needs the settings (the CLI, a benchmark) does not import the loops.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GeneratorSettings(BaseSettings):
    """Hyper-parameters of the voxel generator. Defaults: Court et al. 2020 where they give one."""

    model_config = SettingsConfigDict(env_prefix="CRYSTALLOOP_GENERATOR_", extra="ignore")

    property: str = Field("formation_energy_per_atom", description="conditioning property")
    n_deciles: int = Field(10, ge=2, description="condition classes (property quantile bins)")
    seed: int = Field(0, description="seed of weights, shuffling, augmentation and sampling")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="held-out validation share")
    split_seed: int = Field(0, description="seed of the train/validation split")
    augment: bool = Field(True, description="random proper cube rotations during training")
    # UNet
    unet_channels: tuple[int, ...] = (8, 16, 32)
    unet_stem_pool: bool = Field(False, description="UNet convolves at n/2 and below (CPU)")
    unet_lr: float = Field(3e-6, gt=0, description="paper: 3e-6")
    unet_batch: int = Field(10, ge=1, description="paper: 10")
    unet_epochs: int = Field(10, ge=1)
    unet_class_weight_power: float = Field(
        1.0, ge=0, description="species CE weights = counts**-power (paper: 1, inverse frequency)"
    )
    # VAE
    vae_channels: tuple[int, ...] = (8, 16, 32, 64, 64)
    vae_convs_per_block: int = 1
    latent_dim: int = Field(256, ge=1, description="paper: 256")
    vae_lr: float = Field(1e-4, gt=0, description="paper: 1e-4")
    vae_batch: int = Field(20, ge=1, description="paper: 20")
    vae_epochs: int = Field(10, ge=1)
    alpha: float = Field(1.0, ge=0, description="perceptual-loss weight (paper: 1.0)")
    beta: float = Field(0.0005, ge=0, description="KL weight (paper: 0.0005)")
    vae_freeze_batchnorm: bool = Field(
        False,
        description="batch norm in eval mode while the VAE trains: optimise the function that "
        "is evaluated (running statistics) instead of the batch-statistics one",
    )
    vae_species_head: bool = Field(
        False,
        description="the VAE carries the species matrix: species embedding in, per-voxel "
        "species logits out (added to a resumed paper-style VAE with its weights kept)",
    )
    vae_species_weight: float = Field(
        0.01, gt=0, description="species term = weight * n^3 * (class-weighted CE + occupancy BCE)"
    )
    vae_species_class_weight_power: float = Field(
        0.5, ge=0, description="species-head CE weights = counts**-power"
    )
    # running
    max_minutes: float | None = Field(None, gt=0, description="stop cleanly after this wall time")
    val_every: int = Field(200, ge=1, description="validate every this many optimizer steps")
    val_max: int = Field(200, ge=1, description="validation structures used per check")
    checkpoint_minutes: float = Field(5.0, gt=0, description="write a resumable checkpoint")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores)")
    device: str = Field("auto", description="auto | cpu | cuda")
    cache_dir: Path | None = Field(None, description="encoded-data cache (default: home)")
