"""Settings of the fingerprint generator: the descriptor, the inversion and the training.

One pydantic object per component (env prefix ``CRYSTALLOOP_FP_``, ``..._INVERT_``,
``..._TRAIN_``). The descriptor settings travel inside every checkpoint: a model and the
fingerprints it generates are only meaningful with the exact settings they were made with.
"""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class FingerprintSettings(BaseSettings):
    """Element-resolved periodic symmetry functions (Behler-Parrinello G2 / G5).

    Defaults were chosen for cubic cells of 3-10 A with up to 10 sites:
    - a 6 A radial cutoff reaches the second shell of a perovskite (a ~ 4 A) and the first
      shells of rock-salt and Heusler cells, and keeps the image sum at 5^3 cells;
    - 21 radial Gaussians 0.25 A apart with 0.2 A width: a 1 % error of a 4 A lattice moves the
      nearest-neighbour peak by 0.02-0.04 A, which these widths resolve, so a wrong lattice
      costs loss (the inversion's lattice must come out within 1 %);
    - angular terms up to cos^4 of bond angles (the span of G5 with zeta <= 4, lambda = +-1)
      inside a 4.5 A cutoff: the first coordination shell, where bond angles tell octahedra
      from cubes;
    - five element slots (perov_5 has ABXYZ cells such as LaSnNOF; elements of a crystal are
      ordered by electronegativity), so the vector
      has one fixed length across chemistries; the composition itself travels beside it.
    """

    model_config = SettingsConfigDict(env_prefix="CRYSTALLOOP_FP_", extra="forbid")

    cutoff: float = Field(6.0, gt=1, le=12, description="radial cutoff (A)")
    radial_start: float = Field(1.0, gt=0, description="first radial Gaussian centre (A)")
    radial_step: float = Field(0.25, gt=0, description="spacing of Gaussian centres (A)")
    radial_width: float = Field(0.2, gt=0, description="Gaussian sigma (A)")
    angular_cutoff: float = Field(4.5, gt=1, le=12, description="cutoff of bond-angle terms (A)")
    angular_etas: tuple[float, ...] = Field(
        (0.0, 0.15), description="exp(-eta r^2) weights of the angular terms (1/A^2)"
    )
    angular_order: int = Field(4, ge=1, le=4, description="highest power of cos(theta)")
    n_slots: int = Field(5, ge=1, le=8, description="element slots (max elements per crystal)")
    core_radius: float = Field(
        0.7, ge=0, description="pairs closer than this (A) are penalised during inversion"
    )

    @model_validator(mode="after")
    def _radial_inside_cutoff(self) -> FingerprintSettings:
        if self.radial_start >= self.cutoff:
            raise ValueError("radial_start must lie inside the cutoff")
        return self

    @property
    def radial_centres(self) -> list[float]:
        n = int((self.cutoff - 0.5 - self.radial_start) / self.radial_step + 1e-9) + 1
        return [self.radial_start + i * self.radial_step for i in range(n)]

    @property
    def n_radial(self) -> int:
        return len(self.radial_centres)

    @property
    def n_pairs(self) -> int:
        return self.n_slots * (self.n_slots + 1) // 2

    @property
    def per_atom_dim(self) -> int:
        angular = self.n_pairs * (self.angular_order + 1) * len(self.angular_etas)
        return self.n_slots * self.n_radial + angular

    @property
    def dim(self) -> int:
        """Length of the pooled crystal vector: per centre slot, mean / max / min of atoms."""
        return self.n_slots * 3 * self.per_atom_dim


class InversionSettings(BaseSettings):
    """Basin hopping over fractional coordinates and the cubic lattice length.

    Defaults were set on the perov_5 training split (never the held-out crystals): enough
    trials that one of them starts near the right arrangement, a short local optimisation per
    hop, and a loss threshold below which a structure reproduces its target to within the
    descriptor's own resolution.
    """

    model_config = SettingsConfigDict(env_prefix="CRYSTALLOOP_FP_INVERT_", extra="forbid")

    trials: int = Field(32, ge=1, le=4096, description="structures optimised per target at once")
    hops: int = Field(12, ge=1, description="basin-hopping hops (local optimisations)")
    steps_per_hop: int = Field(40, ge=1, description="Adam steps per local optimisation")
    lr_position: float = Field(
        0.02, ge=0, description="Adam step on fractional coordinates; 0 keeps the start's sites"
    )
    lr_lattice: float = Field(0.01, gt=0, description="Adam step on log(lattice length)")
    kick: float = Field(0.12, ge=0, description="random fractional displacement per hop")
    kick_lattice: float = Field(0.03, ge=0, description="sigma of the log-lattice kick per hop")
    temperature: float = Field(
        0.002, gt=0, description="Metropolis temperature, in loss units (mean squared error)"
    )
    lattice_spread: float = Field(
        0.12, ge=0, description="trials start at the guessed lattice x exp(U(-s, s))"
    )
    stop_loss: float = Field(
        5e-4, gt=0, description="a target is done below this loss (MSE over non-zero entries)"
    )
    restart_after: int = Field(
        4, ge=1, description="hops without improvement before a trial restarts from random"
    )
    polish_steps: int = Field(
        40, ge=0, description="float64 steps on the best trial before symmetry refinement"
    )
    symmetrize: bool = Field(True, description="try spglib refinement, keep it if not worse")
    symprecs: tuple[float, ...] = Field((0.01, 0.05, 0.1), description="refinement tolerances")
    seed: int = Field(0, description="RNG seed of starts, kicks and acceptance")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's)")
