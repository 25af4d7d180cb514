"""A campaign is one YAML file, validated in full before anything touches the store.

Every section forbids unknown keys, so a typo (``bach_size``) is an error naming the field,
not a silently ignored setting. ``CampaignConfig.from_yaml`` raises ``ConfigError`` with one
line per problem (``dft.ecutwfc: ...``); callers print it and write nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from policies.settings import GateSettings

Property = Literal[
    "formation_energy_per_atom",
    "e_above_hull",
    "band_gap",
    "bulk_modulus",
    "shear_modulus",
    "poisson_ratio",
    "refractive_index",
    "dielectric_constant",
    "energy_per_atom",
]
PROPERTIES: tuple[str, ...] = get_args(Property)

TEMPLATE = Path(__file__).with_name("campaign_template.yaml")


class ConfigError(ValueError):
    """A campaign file that cannot be used; the message names every offending field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Objective(_Section):
    """What the campaign looks for. ``minimise``: the policies rank candidates by the lowest
    predicted ``property``; ``window``: by predicted values inside [min, max].
    ``e_above_hull`` is predicted from the formation energy against the campaign's hull.
    Whatever the goal, a discovery is what ``agent.hull.is_discovery`` says: new against
    ``filters.known_sources``, below its elements and within ``hull_tolerance`` of the hull,
    and inside the window for a window goal."""

    goal: Literal["minimise", "window"] = "minimise"
    property: Property = "formation_energy_per_atom"
    min: float | None = None
    max: float | None = None
    hull_tolerance: float = Field(
        0.0,
        ge=0,
        le=1,
        description="eV/atom above the campaign's convex hull that a discovery may lie "
        "(0 = on the hull; 0.05-0.1 admits metastable crystals)",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Objective:
        if self.goal == "window":
            if self.min is None and self.max is None:
                raise ValueError("a window objective needs min and/or max")
            if self.min is not None and self.max is not None and self.min >= self.max:
                raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        elif self.min is not None or self.max is not None:
            raise ValueError("min/max only apply to goal: window")
        return self


class FingerprintOptions(_Section):
    """``options`` of the fingerprint generator (generators.fingerprint)."""

    elements: list[str] | None = Field(
        None,
        description="elements samples may contain; None = the campaign's filters.elements "
        "(or any element the model knows when that is None too)",
    )
    composition_temperature: float = Field(
        0.7,
        gt=0,
        le=10,
        description="softmax temperature of the composition heads (measured over 1,000 "
        "samples: 0.7 gives COV-P 54.4 %, 1.0 gives 53.2 %, with unique 93.6 / 94.9 %)",
    )
    training_inventories: bool = Field(
        True,
        description="a cell's site counts are one of the training crystals' inventories, drawn "
        "jointly; false = slot by slot (measured: a third of samples then have cells no "
        "training crystal has, COV-P 40.8 % instead of 53.2 %)",
    )
    warm_start: bool = Field(
        True, description="start each inversion from the nearest training crystal's sites"
    )
    max_sites: int | None = Field(
        None, ge=1, le=10, description="largest cell sampled (sites); None = the model's 10"
    )
    refine_sites: bool = Field(
        False,
        description="fit the sites to the decoded fingerprint too, not only the lattice "
        "(measured: it distorts them; COV-P 0.04 instead of 0.45)",
    )
    avoid_training_formulas: bool = Field(
        True,
        description="redraw a composition whose reduced formula is a training crystal's (on "
        "its template it would re-make that crystal); false lets known formulas through",
    )
    arrangement: Literal["ewald", "template"] = Field(
        "ewald",
        description="which drawn element takes which template site: ewald = the arrangement "
        "of lowest electrostatic energy among slots of equal count and charge sign; template "
        "= the training crystal's slot order (measured: Sr on a perovskite's octahedral site)",
    )
    charge_balance: Literal["smact", "oxidation-states"] | None = Field(
        None,
        description="how a drawn composition's charge balance is judged: smact = SMACT's "
        "full oxidation-state lists (CDVAE's composition validity), oxidation-states = "
        "pymatgen's common ones, the funnel's charge_balance test; None = oxidation-states "
        "when filters.charge_balance is on, else smact",
    )
    trials: int = Field(1, ge=1, le=64, description="inversion trials per sample")
    hops: int = Field(1, ge=1, le=50, description="basin-hopping hops per sample")
    steps_per_hop: int = Field(25, ge=1, le=1000, description="Adam steps per hop")

    @field_validator("elements")
    @classmethod
    def _symbols(cls, value: list[str] | None) -> list[str] | None:
        from pymatgen.core import Element

        if value is not None:
            bad = [e for e in value if not Element.is_valid_symbol(e)]
            if bad or not value:
                raise ValueError(f"not element symbols: {bad}" if bad else "give an element")
        return value


class VoxelOptions(_Section):
    """``options`` of the voxel generator (generators.voxel)."""

    workers: int = Field(1, ge=1, le=64, description="decoding worker processes")
    prior: Literal["auto", "kde", "fitted", "standard"] = Field(
        "auto",
        description="latent prior of random samples: kde (around the training posteriors of "
        "the asked decile: the condition is obeyed), fitted (one Gaussian over all training "
        "posteriors), standard (the paper's N(0, I)); auto = the first the model has",
    )
    bandwidth: float | None = Field(
        None,
        gt=0,
        description="kde prior only: spread around each training latent, in units of the "
        "fitted Gaussian's (default: the model's, 0.3; larger = more novel, less on-decile)",
    )
    species: Literal["vote", "charge-balanced"] = Field(
        "charge-balanced",
        description="how a decoded cell's elements are chosen: each site by its UNet vote, or "
        "all sites together, the most probable charge-balanced (SMACT) assignment",
    )
    decoder: Literal["auto", "unet", "vae"] = Field(
        "auto",
        description="what reads a generated grid's sites and elements: the paper's UNet on "
        "the density, or the VAE's species head (models trained with --species-head); auto = "
        "the head when the model has one",
    )


GENERATOR_NAMES = ("voxel-vae", "fingerprint", "dataset")
GENERATOR_ALIASES = {"voxel": "voxel-vae"}


class GeneratorConfig(_Section):
    """One generator and how it samples each cycle."""

    name: str = Field("voxel-vae", min_length=1, description="voxel-vae | fingerprint | dataset")
    candidates_per_cycle: int = Field(1000, ge=1, le=1_000_000)
    mode: Literal["random-per-decile", "around-base"] = "random-per-decile"
    condition_property: Literal["formation_energy_per_atom"] = Field(
        "formation_energy_per_atom",
        description="what the deciles are deciles of: the shipped generators are conditioned "
        "on formation energy only (each on its training sources' scales)",
    )
    deciles: list[int] = Field(default_factory=lambda: [0, 1, 2])
    base_compounds: list[str] = Field(
        default_factory=list, description="formulas (e.g. SrTiO3) or CIF paths"
    )
    checkpoint: str | None = Field(None, description="model version or path; None = shipped")
    options: dict[str, Any] = Field(default_factory=dict, description="generator-specific")

    @field_validator("deciles")
    @classmethod
    def _deciles(cls, value: list[int]) -> list[int]:
        bad = [d for d in value if not 0 <= d <= 9]
        if bad:
            raise ValueError(f"deciles are 0..9, got {bad}")
        return sorted(set(value))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = GENERATOR_ALIASES.get(value, value)
        if value not in GENERATOR_NAMES:
            raise ValueError(f"unknown generator {value!r}: use {', '.join(GENERATOR_NAMES)}")
        return value

    @model_validator(mode="after")
    def _typed_options(self) -> GeneratorConfig:
        typed = {"fingerprint": FingerprintOptions, "voxel-vae": VoxelOptions}.get(self.name)
        if typed is not None:
            try:
                typed.model_validate(self.options)
            except ValidationError as exc:
                bad = "; ".join(
                    f"options.{'.'.join(str(p) for p in e['loc'])}: "
                    + ("unknown option" if e["type"] == "extra_forbidden" else e["msg"])
                    for e in exc.errors()
                )
                raise ValueError(f"generator '{self.name}': {bad}") from None
        return self

    @model_validator(mode="after")
    def _base(self) -> GeneratorConfig:
        if self.mode == "around-base" and not self.base_compounds:
            raise ValueError("mode around-base needs base_compounds (formulas or CIF paths)")
        if self.mode == "random-per-decile" and not self.deciles:
            raise ValueError("mode random-per-decile needs at least one decile")
        return self


class Filters(_Section):
    """The funnel between generation and the pool. ``None`` / ``false`` turns a step off."""

    min_distance: float | None = Field(0.5, gt=0, le=5, description="Angstrom; None = off")
    charge_balance: bool = True
    stoichiometry: bool = True
    novelty: bool = True
    batch_duplicates: bool = True
    property_window: float | None = Field(
        0.2, gt=0, le=10, description="fraction around the base's value; None = off"
    )
    elements: list[str] | None = Field(
        None, description="allowed chemical space, e.g. [Sr, Ba, Ti, Zr, O]; None = any"
    )
    known_sources: list[str] = Field(
        default_factory=list,
        description="data sets whose crystals are already known (matminer:flla_2015, a "
        "matminer or perov_5-style CSV path): a candidate matching one (CDVAE's "
        "StructureMatcher) is rejected, and the summary checks each relaxed crystal against "
        "them; [] = no check",
    )

    @field_validator("elements")
    @classmethod
    def _elements(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        from pymatgen.core import Element

        bad = [e for e in value if not Element.is_valid_symbol(e)]
        if bad or not value:
            raise ValueError(f"not element symbols: {bad}" if bad else "give at least one element")
        return sorted(set(value))


class Acquisition(_Section):
    """Which policy scores the pool, with its parameters (e.g. kappa for UCB/LCB)."""

    policy: Literal["random", "greedy", "lcb", "ucb", "ei", "thompson", "max-uncertainty"] = "lcb"
    params: dict[str, float] = Field(default_factory=lambda: {"kappa": 1.0})
    diversity: bool = True
    one_per_formula: bool = Field(
        True,
        description="spend at most one DFT relaxation per reduced formula in the campaign "
        "(polymorphs of a formula already selected are passed over); false lets the policy "
        "pick polymorphs knowingly",
    )


class DFTConfig(_Section):
    """Quantum ESPRESSO relaxations of the selected candidates."""

    backend: Literal["local", "fireworks"] = "local"
    pseudo_family: Literal["pseudodojo-pbe-standard", "sg15"] = "pseudodojo-pbe-standard"
    ecutwfc: float | Literal["auto"] = Field("auto", description="Ry, or auto from pseudo hints")
    kpoint_density: float = Field(1000.0, gt=0, description="k-points per reciprocal atom")
    max_concurrent: int = Field(2, ge=1, le=256)
    chgnet_prerelax: bool = True
    max_seconds: float = Field(7200.0, gt=0, description="wall-time limit per pw.x job")
    calculation: Literal["vc-relax", "relax", "scf"] = "vc-relax"
    convergence: Literal["tight", "screening"] = Field(
        "tight",
        description="relaxation thresholds: tight = forces 1e-3 Ry/bohr (0.026 eV/A), pressure "
        "0.5 kbar, SCF 1e-8 Ry; screening = 2e-3 Ry/bohr (0.05 eV/A, Materials Project's), 2 kbar, "
        "1e-7 Ry: fewer ionic and SCF steps, formation energies within a few meV/atom",
    )
    symprec: float | None = Field(
        0.1,
        gt=0,
        le=0.5,
        description="Angstrom: snap each cell onto its symmetry before pw.x (a generated cell "
        "with noise has no symmetry and ~9x the k-points); null = relax the cell as given",
    )

    @field_validator("ecutwfc")
    @classmethod
    def _ecut(cls, value: float | str) -> float | str:
        if value != "auto" and not 5 < float(value) <= 400:
            raise ValueError("ecutwfc must be 'auto' or a cutoff in Ry in (5, 400]")
        return value

    def input_overrides(self) -> dict[str, Any]:
        """The pw.x thresholds of `convergence` (``dft.inputs.PWInput`` fields)."""
        if self.convergence == "screening":
            return {"forc_conv_thr": 2e-3, "press_conv_thr": 2.0, "conv_thr": 1e-7}
        return {}

    def settings_overrides(self, elements: list[str] | None = None) -> dict[str, Any]:
        """The matching ``dft.settings.DFTSettings`` fields, for ``DFTSettings(**...)``.

        With the campaign's `elements` (filters.elements), ``ecutwfc: auto`` becomes the cutoff
        of the whole chemical space, not of each compound: every calculation of the campaign
        then shares one basis, so each elemental reference is computed once (per compound
        cutoffs computed Ca and Cl twice in a K-Rb-Ca-Cl demo, at 68 and 74 Ry) and all
        formation energies on the hull come from the same settings."""
        overrides: dict[str, Any] = {
            "pseudo_family": self.pseudo_family,
            "kpoint_density": self.kpoint_density,
            "concurrency": self.max_concurrent,
            "walltime_s": self.max_seconds,
        }
        if self.ecutwfc != "auto":
            overrides["ecutwfc"] = float(self.ecutwfc)
        elif elements:
            from dft.pseudos import recommended_ecutwfc
            from dft.settings import DFTSettings

            overrides["ecutwfc"] = recommended_ecutwfc(list(elements), DFTSettings(**overrides))
        return overrides


class Budgets(_Section):
    max_dft_calculations: int = Field(50, ge=1)
    max_wall_time: float | None = Field(None, gt=0, description="seconds for the whole campaign")


class Retraining(_Section, GateSettings):
    """Fine-tune the surrogate every N new DFT results, with replay of its own training data,
    and deploy only what passes the gate of ``policies.finetune``: per fine-tuned head, the
    campaign's k-fold cross-validated MAE not worse than the deployed model's and the MAE on a
    fixed anchor slice (rows the shipped model held out) not risen beyond a tolerance. The
    gate's own fields (folds, epochs, min_improvement, anchor_tolerance) are
    ``policies.settings.GateSettings``'s."""

    enabled: bool = True
    every_n_results: int = Field(20, ge=1)
    replay_source: str | None = Field(
        "matminer:flla_2015",
        description="the data the surrogate's formation-energy head learnt (Materials Project "
        "scale; `crystalloop data fetch` brings it): replay and anchor rows come from it, "
        "split as the shipped model was; null = fine-tune on campaign results alone, gate on "
        "CV alone",
    )
    replay_size: int = Field(
        200, ge=0, description="original crystals mixed into every fine-tune (0 = no replay)"
    )
    anchor_size: int = Field(
        200, ge=0, description="held-out original crystals every version is judged on (0 = none)"
    )
    generators: bool = Field(
        True,
        description="also fine-tune the campaign's fingerprint and voxel-vae generators on the "
        "DFT-relaxed crystals (cubic ones; each gated on its own held-out reconstruction, "
        "generators.fingerprint.finetune / generators.voxel.finetune); false = the surrogate "
        "alone",
    )
    generator_sources: dict[Literal["fingerprint", "voxel-vae"], list[str]] | None = Field(
        None,
        description="per generator, where its training data is, for replay (as many sources "
        "as it was trained on, same order); a generator not named uses the paths stored in "
        "its checkpoint",
    )

    @field_validator("generator_sources", mode="before")
    @classmethod
    def _sources_by_generator(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise ValueError(
                "give a mapping from generator to its sources, e.g. {fingerprint: [...]}"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "holdout_fraction" in data:
            raise ValueError(
                "retraining.holdout_fraction is gone: the campaign's results are judged by "
                "k-fold cross-validation (retraining.folds) plus a fixed anchor slice"
            )
        return data

    def gate_settings(self) -> GateSettings:
        return GateSettings(**self.model_dump(include=set(GateSettings.model_fields)))


class Stopping(_Section):
    """Stop when the budget is spent, or after ``patience`` cycles without a discovery."""

    max_cycles: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1)


class StoreConfig(_Section):
    uri: str | None = Field(None, description="mongodb://...; None = env or embedded store")
    database: str = Field("crystalloop", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value and not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("uri must start with mongodb:// or mongodb+srv://")
        return value


class CampaignConfig(_Section):
    """The whole campaign: see ``crystalloop init`` for a commented example."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    objective: Objective = Field(default_factory=Objective)
    generators: list[GeneratorConfig] = Field(default_factory=lambda: [GeneratorConfig()])
    filters: Filters = Field(default_factory=Filters)
    acquisition: Acquisition = Field(default_factory=Acquisition)
    batch_size: int = Field(4, ge=1, le=10_000)
    dft: DFTConfig = Field(default_factory=DFTConfig)
    budgets: Budgets = Field(default_factory=Budgets)
    retraining: Retraining = Field(default_factory=Retraining)
    stopping: Stopping = Field(default_factory=Stopping)
    store: StoreConfig = Field(default_factory=StoreConfig)
    seed: int = 0

    @field_validator("generators")
    @classmethod
    def _generators(cls, value: list[GeneratorConfig]) -> list[GeneratorConfig]:
        if not value:
            raise ValueError("at least one generator is needed")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CampaignConfig:
        if self.batch_size > self.budgets.max_dft_calculations:
            raise ValueError(
                f"batch_size ({self.batch_size}) exceeds budgets.max_dft_calculations "
                f"({self.budgets.max_dft_calculations})"
            )
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> CampaignConfig:
        """Read and validate a campaign file; ``ConfigError`` names every bad field."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such campaign file") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "campaign") -> CampaignConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_errors(exc, source)) from None

    def to_document(self) -> dict[str, Any]:
        """The JSON-safe form stored with the campaign."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        """A short hash of the settings, to notice a changed file on restart."""
        text = json.dumps(self.to_document(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting (typo?)"
        # cross-field checks have no location; their message starts with the field name
        lines.append(f"  {where}: {message}" if where else f"  {message}")
    count = len(lines)
    head = f"{source}: {count} invalid setting{'s' if count > 1 else ''}"
    return "\n".join([head, *lines])
