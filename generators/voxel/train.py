"""Training of the voxel UNet and the conditional DFC-VAE.

One settings object (`GeneratorSettings`, env CRYSTALLOOP_GENERATOR_*) holds every
hyper-parameter; the paper's values are its defaults. Training data are encoded once and cached
by content hash, split into train/validation with a fixed seed (the validation ids travel in
every checkpoint, so benchmarks evaluate on data the model never saw), and streamed with random
proper rotations of the cube as augmentation. Checkpoints carry everything needed to resume or
to use a model: config, weights, optimizer state, RNG position, element list, input scales,
decile edges, data hash and the metric history.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import permutations, product
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from generators.splits import assign_deciles, decile_edges, record_id, split_indices
from generators.voxel.losses import class_weights, unet_loss, vae_loss
from generators.voxel.settings import VoxelSettings
from generators.voxel.unet import UNet3D, UNetConfig
from generators.voxel.vae import ConditionalVAE, VAEConfig, one_hot_decile

CHECKPOINT_FORMAT = 1


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
    # running
    max_minutes: float | None = Field(None, gt=0, description="stop cleanly after this wall time")
    val_every: int = Field(200, ge=1, description="validate every this many optimizer steps")
    val_max: int = Field(200, ge=1, description="validation structures used per check")
    checkpoint_minutes: float = Field(5.0, gt=0, description="write a resumable checkpoint")
    threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores)")
    device: str = Field("auto", description="auto | cpu | cuda")
    cache_dir: Path | None = Field(None, description="encoded-data cache (default: home)")


# ------------------------------------------------------------------------------------ data


@dataclass
class VoxelData:
    """Encoded training data held in memory (coordinate grids are rebuilt from `lattice`)."""

    density: np.ndarray  # (N, n, n, n) float32
    species: np.ndarray  # (N, n, n, n) int16 atomic numbers
    lattice: np.ndarray  # (N,) float32 cubic cell length
    values: np.ndarray  # (N,) float64 conditioning property (nan where missing)
    ids: list[str]
    data_hash: str
    source: str
    report: dict[str, Any] = field(default_factory=dict)
    voxel: dict[str, Any] = field(default_factory=dict)  # VoxelSettings used to encode

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> VoxelData:
        return VoxelData(
            self.density[index],
            self.species[index],
            self.lattice[index],
            self.values[index],
            [self.ids[i] for i in index],
            self.data_hash,
            self.source,
            self.report,
            self.voxel,
        )


# VoxelSettings fields that change the encoded arrays; decode-only fields do not invalidate data
ENCODING_FIELDS = (
    "n_grid",
    "max_atoms",
    "length_tolerance",
    "angle_tolerance",
    "density_width_scale",
    "min_radius",
    "label_radius_scale",
    "label_gap_voxels",
    "min_label_radius_voxels",
)


def encoding_settings(voxel: VoxelSettings) -> dict[str, Any]:
    dump = voxel.model_dump()
    return {k: dump[k] for k in ENCODING_FIELDS if k in dump}


def _hash_source(spec: str, voxel: VoxelSettings, property_key: str) -> str:
    h = hashlib.sha256()
    path = Path(spec)
    if path.is_file():
        h.update(path.read_bytes())
    elif path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                h.update(f.name.encode())
                h.update(f.read_bytes())
    else:
        h.update(spec.encode())
    h.update(json.dumps(encoding_settings(voxel), sort_keys=True).encode())
    h.update(property_key.encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    from generators.data import crystalloop_home

    return crystalloop_home() / "voxel-cache"


def load_voxel_data(
    sources: list[str] | str,
    property_key: str = "formation_energy_per_atom",
    voxel: VoxelSettings | None = None,
    cache_dir: Path | None = None,
    max_records: int | None = None,
    progress: bool = True,
) -> VoxelData:
    """Read data sources (CSV, 'matminer:NAME', CIF folder), keep cubic cells, encode, cache.

    Records without the conditioning property are kept for the UNet (it needs none) but get
    value nan; the VAE drops them.
    """
    from generators.data import load_source, select_cubic
    from generators.voxel.encode import encode_many

    voxel = voxel or VoxelSettings()
    specs = [sources] if isinstance(sources, str) else list(sources)
    digest = hashlib.sha256(
        "|".join(_hash_source(s, voxel, property_key) for s in specs).encode()
        + str(max_records).encode()
    ).hexdigest()[:16]
    cache_dir = Path(cache_dir or default_cache_dir())
    cache = cache_dir / f"voxel-{digest}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return VoxelData(
                z["density"],
                z["species"],
                z["lattice"],
                z["values"],
                list(z["ids"]),
                digest,
                meta["source"],
                meta["report"],
                voxel.model_dump(),
            )
    densities, species, lattices, values, ids = [], [], [], [], []
    report: dict[str, Any] = {}
    for spec in specs:
        records, read_report = load_source(spec)
        if max_records is not None:
            records = records[:max_records]
        cubic, cubic_report = select_cubic(records, max_atoms=voxel.max_atoms)
        batch = _encode_with_progress(encode_many, cubic, voxel, progress, spec)
        report[spec] = {
            "read": read_report.read,
            "parse_dropped": read_report.dropped,
            "cubic_dropped": cubic_report.dropped,
            "encode_dropped": len(batch.errors),
            "kept": len(batch),
        }
        densities.append(batch.density)
        species.append(batch.species)
        lattices.append(batch.lattice[:, 0])
        for i in batch.index:
            rec = cubic[int(i)]
            values.append(rec.properties.get(property_key, np.nan))
            ids.append(record_id(spec, rec))
    data = VoxelData(
        np.concatenate(densities),
        np.concatenate(species),
        np.concatenate(lattices).astype(np.float32),
        np.asarray(values, dtype=np.float64),
        ids,
        digest,
        "+".join(specs),
        report,
        voxel.model_dump(),
    )
    if len(data) == 0:
        raise ValueError(f"no encodable cubic structures in {specs}: {report}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        density=data.density,
        species=data.species,
        lattice=data.lattice,
        values=data.values,
        ids=np.asarray(data.ids),
        meta=json.dumps({"source": data.source, "report": report}),
    )
    os.replace(tmp, cache)
    return data


def _encode_with_progress(encode_many, records, voxel, progress: bool, label: str):
    """Encode in chunks so a progress bar can move; errors are skipped and counted."""
    from rich.progress import Progress

    from generators.voxel.encode import VoxelBatch

    chunk = 200
    parts = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"encoding {label}", total=len(records))
        for start in range(0, len(records), chunk):
            part = encode_many(
                [r.structure for r in records[start : start + chunk]],
                voxel,
                skip_errors=True,
                with_coords=False,
            )
            part.index = part.index + start
            part.errors = {k + start: v for k, v in part.errors.items()}
            parts.append(part)
            bar.advance(task, min(chunk, len(records) - start))
    n = voxel.n_grid
    if not parts:
        return VoxelBatch(
            np.zeros((0, n, n, n), np.float32),
            np.zeros((0, n, n, n), np.int16),
            np.zeros((0, n, n, n), bool),
            np.zeros((0, n, n, n, 3), np.float32),
            np.zeros((0, 3), np.float32),
            np.zeros(0, np.int64),
        )
    errors: dict[int, str] = {}
    for p in parts:
        errors.update(p.errors)
    return VoxelBatch(
        np.concatenate([p.density for p in parts]),
        np.concatenate([p.species for p in parts]),
        np.concatenate([p.mask for p in parts]),
        np.zeros((0, n, n, n, 3), np.float32),
        np.concatenate([p.lattice for p in parts]),
        np.concatenate([p.index for p in parts]),
        errors,
    )


# ------------------------------------------------------------------------------ rotations


def cube_rotations() -> list[tuple[tuple[int, int, int], tuple[bool, bool, bool]]]:
    """The 24 proper rotations of the cube as (axis permutation, axis flips) with det +1."""
    out = []
    for perm in permutations(range(3)):
        parity = sum(1 for i in range(3) for j in range(i + 1, 3) if perm[i] > perm[j]) % 2
        for flips in product((False, True), repeat=3):
            if (parity + sum(flips)) % 2 == 0:
                out.append((perm, flips))
    return out


_ROTATIONS = cube_rotations()


def rotate_grid(x: torch.Tensor, rotation: int) -> torch.Tensor:
    """Rotate the last three (spatial) axes about the origin voxel (index 0 stays index 0).

    A flip maps voxel i to n-1-i; the roll by one makes it i -> -i (mod n), a true rotation
    about the cell origin, so the coordinate channels stay valid unchanged.
    """
    perm, flips = _ROTATIONS[rotation]
    lead = list(range(x.dim() - 3))
    x = x.permute(*lead, *(len(lead) + p for p in perm))
    for axis, flip in enumerate(flips):
        if flip:
            d = len(lead) + axis
            x = torch.roll(torch.flip(x, dims=(d,)), 1, dims=(d,))
    return x


# ------------------------------------------------------------------------------- helpers


def density_scale_of(data: VoxelData, index: np.ndarray) -> float:
    """Input scale of the density channel: 99th percentile of per-structure maxima.

    Deterministic from the training split, so a VAE trained before its UNet exists uses the
    same scale the UNet will.
    """
    per_max = data.density[index].reshape(len(index), -1).max(axis=1)
    return float(np.percentile(per_max, 99))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def setup_threads(threads: int | None) -> int:
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def vae_input(
    density: np.ndarray, lattice: np.ndarray, density_scale: float, coord_scale: float
) -> torch.Tensor:
    """(B,4,n,n,n) VAE input: scaled density (B,n,n,n) plus the cubic cells' coordinate channels."""
    dens = torch.from_numpy(density / density_scale).float().unsqueeze(1)
    lat = torch.as_tensor(lattice)
    return torch.cat([dens, coordinate_channels(lat, density.shape[-1], coord_scale)], dim=1)


def coordinate_channels(lattice: torch.Tensor, n_grid: int, coord_scale: float) -> torch.Tensor:
    """(B,3,n,n,n) scaled coordinate channels, voxel (i,j,k) at (i,j,k)/n * a (encode.py rule)."""
    axis = torch.arange(n_grid, dtype=torch.float32, device=lattice.device) / n_grid
    a = (lattice.float() / coord_scale)[:, None, None, None]
    b = lattice.shape[0]
    x = (axis[None, :, None, None] * a).expand(b, n_grid, n_grid, n_grid)
    y = (axis[None, None, :, None] * a).expand(b, n_grid, n_grid, n_grid)
    z = (axis[None, None, None, :] * a).expand(b, n_grid, n_grid, n_grid)
    return torch.stack([x, y, z], dim=1)


def class_lookup(elements: list[int]) -> np.ndarray:
    """Z -> class index (0 = empty or an element the model has not seen)."""
    lut = np.zeros(128, dtype=np.int64)
    for i, z in enumerate(elements):
        lut[z] = i + 1
    return lut


def model_version(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint with clear errors for a missing file or the wrong model kind."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (train one with `crystalloop train unet|vae`)"
        )
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or "kind" not in payload:
        raise ValueError(f"{path} is not a crystalloop voxel checkpoint")
    if kind is not None and payload["kind"] != kind:
        raise ValueError(f"{path} holds a {payload['kind']} checkpoint, expected {kind}")
    return payload


def slim_checkpoint(payload: dict[str, Any], half: bool = False) -> dict[str, Any]:
    """Drop optimizer/RNG state (for shipping); optionally store weights as float16."""
    out = {k: v for k, v in payload.items() if k not in ("optimizer", "train_state")}
    if half:
        out["state_dict"] = {
            k: (v.half() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()
        }
        out["weights_dtype"] = "float16"
    return out


def build_unet(payload: dict[str, Any]) -> UNet3D:
    model = UNet3D(UNetConfig.from_dict(payload["config"]))
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    )
    return model.eval()


def build_vae(payload: dict[str, Any]) -> ConditionalVAE:
    model = ConditionalVAE(VAEConfig.from_dict(payload["config"]))
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    )
    return model.eval()


# ------------------------------------------------------------------------------ training


@dataclass
class TrainResult:
    path: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]
    steps: int
    seconds: float


def _batches(
    n: int, batch: int, seed: int, epoch: int, augment: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Deterministic (indices, rotations) per epoch; a resumed run replays the same order."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    rot = rng.integers(0, 24, size=n) if augment else np.zeros(n, dtype=np.int64)
    for start in range(0, n - batch + 1 if n >= batch else 1, batch):
        idx = order[start : start + batch]
        yield idx, rot[start : start + batch]


def _rotate_batch(x: torch.Tensor, rotations: np.ndarray) -> torch.Tensor:
    if not rotations.any():
        return x
    return torch.stack([rotate_grid(x[i], int(r)) for i, r in enumerate(rotations)])


class _Loop:
    """Shared loop mechanics: progress bar, periodic validation, time budget, checkpoints."""

    def __init__(
        self,
        settings: GeneratorSettings,
        out: Path,
        progress: bool,
        log: Callable,
        train_state: dict[str, Any] | None = None,
    ):
        self.settings = settings
        self.out = Path(out)
        self.progress = progress
        self.log = log
        self.start = time.monotonic()
        self.last_ckpt = time.monotonic()
        ts = train_state or {}
        self.epoch, self.step, self.skip = ts.get("epoch", 0), ts.get("step", 0), ts.get("batch", 0)
        self.elapsed_before = ts.get("elapsed", 0.0)

    def train_state(self) -> dict[str, Any]:
        """Where training stands, for a checkpoint that a later run resumes from."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "batch": self.skip,
            "elapsed": self.elapsed_before + time.monotonic() - self.start,
            "torch_rng": torch.get_rng_state(),
        }

    def run(
        self,
        name: str,
        epochs: int,
        batch: int,
        n_train: int,
        train_step: Callable[[np.ndarray, np.ndarray], float],
        validate: Callable[[], dict[str, float]],
        payload: Callable[[dict[str, float]], dict[str, Any]],
        history: list[dict[str, float]],
    ) -> dict[str, float]:
        """Epochs of shuffled (rotated) batches from where a resumed run stopped, with a rich
        progress bar, validation every `val_every` steps, periodic checkpoints and the time
        budget; ends with a final validation and checkpoint. Returns the final metrics."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        settings = self.settings
        metrics: dict[str, float] = {}
        n_batches = max(1, n_train // batch)
        stop = False
        run_loss: float | None = None
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, disable=not self.progress) as bar:
            while self.epoch < epochs and not stop:
                task = bar.add_task(
                    f"{name} epoch {self.epoch + 1}/{epochs}", total=n_batches, info=""
                )
                batches = _batches(n_train, batch, settings.seed, self.epoch, settings.augment)
                for b, (idx, rot) in enumerate(batches):
                    if b < self.skip:
                        bar.advance(task)
                        continue
                    loss = train_step(idx, rot)
                    self.step += 1
                    self.skip = b + 1
                    run_loss = loss if run_loss is None else 0.98 * run_loss + 0.02 * loss
                    bar.update(task, advance=1, info=f"loss {run_loss:.4g}")
                    if self.step % settings.val_every == 0:
                        metrics = validate() | {
                            "train_loss": run_loss,
                            "step": self.step,
                            "epoch": self.epoch,
                        }
                        history.append(metrics)
                        self.log(_fmt(name, metrics))
                    if self.checkpoint_due():
                        save_checkpoint(self.out, payload(metrics))
                        self.last_ckpt = time.monotonic()
                    if self.out_of_time():
                        self.log(f"{name}: time budget reached, stopping")
                        stop = True
                        break
                if not stop:
                    self.epoch += 1
                    self.skip = 0
                bar.remove_task(task)
        final_loss = run_loss if run_loss is not None else float("nan")
        metrics = validate() | {"train_loss": final_loss, "step": self.step, "epoch": self.epoch}
        history.append(metrics)
        self.log(_fmt(f"{name} final", metrics))
        save_checkpoint(self.out, payload(metrics))
        return metrics

    def out_of_time(self) -> bool:
        """The budget is per invocation, so a resumed run gets a fresh `max_minutes`."""
        if self.settings.max_minutes is None:
            return False
        return time.monotonic() - self.start > 60 * self.settings.max_minutes

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self.last_ckpt > 60 * self.settings.checkpoint_minutes


def _prepare(settings: GeneratorSettings, data: VoxelData) -> tuple[np.ndarray, np.ndarray]:
    return split_indices(data.ids, settings.val_fraction, settings.split_seed)


def train_unet(
    data: VoxelData,
    out: str | Path,
    settings: GeneratorSettings | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train the segmentation UNet on (density -> species, occupancy) pairs."""
    settings = settings or GeneratorSettings()
    threads = setup_threads(settings.threads)
    device = pick_device(settings.device)
    torch.manual_seed(settings.seed)
    n_grid = data.density.shape[-1]
    train_idx, val_idx = _prepare(settings, data)
    state: dict[str, Any] | None = load_checkpoint(resume, "unet") if resume else None
    if state is not None:
        _check_resume(state, data, settings, log)
    if state is None:
        elements = sorted(int(z) for z in np.unique(data.species[train_idx]) if z > 0)
        density_scale = density_scale_of(data, train_idx)
    else:
        elements, density_scale = state["elements"], state["density_scale"]
    lut = class_lookup(elements)
    counts = np.bincount(lut[data.species[train_idx]].ravel(), minlength=len(elements) + 1)
    weights = class_weights(counts, settings.unet_class_weight_power).to(device)
    config = UNetConfig(
        n_classes=len(elements) + 1,
        channels=tuple(settings.unet_channels),
        stem_pool=settings.unet_stem_pool,
    )
    if state is not None:
        config = UNetConfig.from_dict(state["config"])
    model = UNet3D(config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=settings.unet_lr)
    history: list[dict[str, float]] = []
    if state is not None:
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        for group in opt.param_groups:  # a resumed run may change the learning rate
            group["lr"] = settings.unet_lr
        torch.set_rng_state(state["train_state"]["torch_rng"])
        history = state["metrics"]["history"]
    log(
        f"UNet: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{len(elements)} elements, {len(train_idx)} train / {len(val_idx)} val, "
        f"{threads} threads on {device}"
    )
    loop = _Loop(settings, Path(out), progress, log, state and state["train_state"])

    def tensors(index: np.ndarray, rotations: np.ndarray | None = None):
        dens = torch.from_numpy(data.density[index] / density_scale).float().unsqueeze(1)
        spec = torch.from_numpy(data.species[index].astype(np.int64))
        if rotations is not None:
            dens = _rotate_batch(dens, rotations)
            spec = _rotate_batch(spec, rotations)
        return dens.to(device), spec.to(device)

    def validate() -> dict[str, float]:
        model.eval()
        vi = val_idx[: settings.val_max]
        tot = ce = bce = 0.0
        hit = nonzero = occ_right = voxels = 0
        with torch.no_grad():
            for s in range(0, len(vi), 20):
                dens, z = tensors(vi[s : s + 20])
                target = torch.from_numpy(lut[z.cpu().numpy()]).to(device)
                logits, occ = model(dens)
                parts = unet_loss(logits, occ, target, weights, occupied=z > 0)
                k = len(dens)
                tot += float(parts["total"]) * k
                ce += float(parts["ce"]) * k
                bce += float(parts["bce"]) * k
                labels, _ = model.predict(dens)
                nz = target > 0
                hit += int((labels[nz] == target[nz]).sum())
                nonzero += int(nz.sum())
                occ_right += int(((occ > 0) == (z > 0)).sum())
                voxels += z.numel()
        model.train()
        n = len(vi)
        return {
            "val_loss": tot / n,
            "val_ce": ce / n,
            "val_bce": bce / n,
            "val_recall_nonzero": hit / max(nonzero, 1),
            "val_occupancy_acc": occ_right / max(voxels, 1),
        }

    def payload(final_metrics: dict[str, float]) -> dict[str, Any]:
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return {
            "kind": "unet",
            "format": CHECKPOINT_FORMAT,
            "model_version": model_version(sd),
            "config": config.to_dict(),
            "state_dict": sd,
            "optimizer": opt.state_dict(),
            "train_state": loop.train_state(),
            "settings": json.loads(settings.model_dump_json()),
            "elements": elements,
            "density_scale": density_scale,
            "n_grid": n_grid,
            "voxel": _voxel_info(data),
            "data": _data_info(data, train_idx, val_idx, settings),
            "metrics": {"final": final_metrics, "history": history},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def train_step(idx: np.ndarray, rot: np.ndarray) -> float:
        dens, z = tensors(train_idx[idx], rot)
        target = torch.from_numpy(lut[z.cpu().numpy()]).to(device)
        logits, occ = model(dens)
        parts = unet_loss(logits, occ, target, weights, occupied=z > 0)
        opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        opt.step()
        return parts["total"].item()

    model.train()
    metrics = loop.run(
        "UNet",
        settings.unet_epochs,
        settings.unet_batch,
        len(train_idx),
        train_step,
        validate,
        payload,
        history,
    )
    return TrainResult(Path(out), metrics, history, loop.step, time.monotonic() - loop.start)


def _data_info(data: VoxelData, train_idx, val_idx, settings: GeneratorSettings) -> dict[str, Any]:
    return {
        "source": data.source,
        "hash": data.data_hash,
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "val_fraction": settings.val_fraction,
        "split_seed": settings.split_seed,
        "val_ids": [data.ids[i] for i in val_idx],
        "report": data.report,
    }


def _voxel_info(data: VoxelData) -> dict[str, Any]:
    return dict(data.voxel)


def _check_resume(
    state: dict[str, Any], data: VoxelData, settings: GeneratorSettings, log: Callable
) -> None:
    """A resumed run must see the same validation split; a changed data hash is only logged
    (the hash also covers settings, and a decode-only change must not block a resume)."""
    _, val_idx = split_indices(data.ids, settings.val_fraction, settings.split_seed)
    current = {data.ids[i] for i in val_idx}
    stored = set(state["data"]["val_ids"])  # the VAE stores the subset with the property
    if not stored <= current or (state["kind"] == "unet" and stored != current):
        raise ValueError(
            "cannot resume: the checkpoint's validation split differs from this data's "
            f"(data hash {state['data']['hash']} vs {data.data_hash})"
        )
    if state["data"]["hash"] != data.data_hash:
        log(
            f"note: data hash {data.data_hash} differs from the checkpoint's {state['data']['hash']}"
        )


def _fmt(prefix: str, metrics: dict[str, float]) -> str:
    return (
        prefix
        + ": "
        + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
        )
    )


def train_vae(
    data: VoxelData,
    unet_path: str | Path | None,
    out: str | Path,
    settings: GeneratorSettings | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train the conditional DFC-VAE against the frozen UNet's encoder features.

    Without a UNet (`unet_path=None`) the perceptual term is off: a warm-up phase that can run
    while the UNet trains; resume it later with the UNet to add the perceptual term.
    """
    settings = settings or GeneratorSettings()
    threads = setup_threads(settings.threads)
    device = pick_device(settings.device)
    torch.manual_seed(settings.seed)
    n_grid = data.density.shape[-1]
    train_all, val_all = _prepare(settings, data)
    density_scale = density_scale_of(data, train_all)
    unet_state: dict[str, Any] = {"model_version": None, "elements": None}
    features = None
    if unet_path is not None:
        unet_state = load_checkpoint(unet_path, "unet")
        unet = build_unet(unet_state).to(device)
        for p in unet.parameters():
            p.requires_grad_(False)
        features = unet.features
        if unet_state.get("n_grid", n_grid) != n_grid:
            raise ValueError(
                f"UNet was trained on n_grid={unet_state['n_grid']}, data has {n_grid}"
            )
        if abs(float(unet_state["density_scale"]) - density_scale) > 1e-6 * density_scale:
            raise ValueError("UNet and VAE data differ (density scale); train both on one split")
    else:
        log("VAE: no UNet given, perceptual term off (warm-up phase)")
    has_value = np.isfinite(data.values)
    train_idx, val_idx = train_all[has_value[train_all]], val_all[has_value[val_all]]
    if len(train_idx) == 0:
        raise ValueError(f"no training structure has the property '{settings.property}'")
    state = load_checkpoint(resume, "vae") if resume else None
    if state is not None:
        edges = np.asarray(state["decile_edges"])
        coord_scale = float(state["coord_scale"])
        config = VAEConfig.from_dict(state["config"])
    else:
        edges = decile_edges(data.values[train_idx], settings.n_deciles)
        coord_scale = float(np.ceil(data.lattice[train_idx].max()))
        config = VAEConfig(
            n_grid=n_grid,
            n_conditions=settings.n_deciles,
            latent_dim=settings.latent_dim,
            channels=tuple(settings.vae_channels),
            convs_per_block=settings.vae_convs_per_block,
        )
    deciles = assign_deciles(data.values, edges)
    model = ConditionalVAE(config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=settings.vae_lr)
    history: list[dict[str, float]] = []
    phases: list[dict[str, Any]] = []
    if state is not None:
        phases = list(state.get("phases", []))
        _check_resume(state, data, settings, log)
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        for group in opt.param_groups:  # a resumed run may change the learning rate
            group["lr"] = settings.vae_lr
        torch.set_rng_state(state["train_state"]["torch_rng"])
        history = state["metrics"]["history"]
    log(
        f"VAE: {sum(p.numel() for p in model.parameters()):,} parameters, latent "
        f"{config.latent_dim}, {len(train_idx)} train / {len(val_idx)} val, "
        f"{threads} threads on {device}"
    )
    loop = _Loop(settings, Path(out), progress, log, state and state["train_state"])
    phases.append(
        {
            "from_step": loop.step,
            "unet_version": unet_state["model_version"],
            "lr": settings.vae_lr,
            "alpha": settings.alpha if features is not None else 0.0,
            "beta": settings.beta,
            "batch": settings.vae_batch,
        }
    )

    def tensors(index: np.ndarray, rotations: np.ndarray | None = None):
        dens = torch.from_numpy(data.density[index] / density_scale).float().unsqueeze(1)
        if rotations is not None:
            dens = _rotate_batch(dens, rotations)
        lat = torch.from_numpy(data.lattice[index])
        x = torch.cat([dens, coordinate_channels(lat, n_grid, coord_scale)], dim=1)
        cond = one_hot_decile(deciles[index], config.n_conditions)
        return x.to(device), cond.to(device)

    def validate() -> dict[str, float]:
        model.eval()
        vi = val_idx[: settings.val_max]
        sums = {"total": 0.0, "mse": 0.0, "kld": 0.0, "perceptual": 0.0}
        lat_err = 0.0
        with torch.no_grad():
            for s in range(0, len(vi), 20):
                x, cond = tensors(vi[s : s + 20])
                recon, mu, logvar = model(x, cond)
                parts = vae_loss(recon, x, mu, logvar, settings.alpha, settings.beta, features)
                for k in sums:
                    sums[k] += float(parts[k]) * len(x)
                lat_err += float(
                    (
                        _lattice_from_channels(recon[:, 1:], coord_scale)
                        - torch.from_numpy(data.lattice[vi[s : s + 20]]).to(device)
                    )
                    .abs()
                    .sum()
                )
        model.train()
        n = len(vi)
        return {f"val_{k}": v / n for k, v in sums.items()} | {"val_lattice_mae": lat_err / n}

    def payload(final_metrics: dict[str, float]) -> dict[str, Any]:
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return {
            "kind": "vae",
            "format": CHECKPOINT_FORMAT,
            "model_version": model_version(sd),
            "config": config.to_dict(),
            "state_dict": sd,
            "optimizer": opt.state_dict(),
            "train_state": loop.train_state(),
            "settings": json.loads(settings.model_dump_json()),
            "property": settings.property,
            "decile_edges": [float(e) for e in edges],
            "density_scale": density_scale,
            "coord_scale": coord_scale,
            "n_grid": n_grid,
            "voxel": _voxel_info(data),
            "unet_version": unet_state["model_version"],
            "phases": phases,
            "elements": unet_state["elements"],
            "data": _data_info(data, train_idx, val_idx, settings),
            "metrics": {"final": final_metrics, "history": history},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def train_step(idx: np.ndarray, rot: np.ndarray) -> float:
        x, cond = tensors(train_idx[idx], rot)
        recon, mu, logvar = model(x, cond)
        parts = vae_loss(recon, x, mu, logvar, settings.alpha, settings.beta, features)
        opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        opt.step()
        return parts["total"].item()

    model.train()
    metrics = loop.run(
        "VAE",
        settings.vae_epochs,
        settings.vae_batch,
        len(train_idx),
        train_step,
        validate,
        payload,
        history,
    )
    return TrainResult(Path(out), metrics, history, loop.step, time.monotonic() - loop.start)


def _lattice_from_channels(coords: torch.Tensor, coord_scale: float) -> torch.Tensor:
    """Least-squares cell length from (B,3,n,n,n) scaled coordinate channels (mean of 3 axes)."""
    n = coords.shape[-1]
    idx = torch.arange(n, dtype=coords.dtype, device=coords.device)
    centred = idx - idx.mean()
    slopes = []
    for axis in range(3):
        other = tuple(2 + a for a in range(3) if a != axis)
        profile = coords[:, axis].mean(dim=tuple(o - 1 for o in other))
        slopes.append((profile * centred).sum(-1) / (centred * centred).sum())
    return torch.stack(slopes, dim=1).mean(dim=1) * n * coord_scale
