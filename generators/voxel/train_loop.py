"""The mechanics both voxel trainers share, so the UNet and the VAE train and resume alike.

Both walk epochs of shuffled, randomly rotated batches drawn from (seed, epoch), so a resumed
run replays exactly the order it stopped in; both validate every `val_every` steps, write a
resumable checkpoint every few minutes, stop cleanly on a time budget, and record the same
facts about their data (source, hash, the validation ids that let benchmarks evaluate on
structures the model never saw). What differs per model (inputs, loss, checkpoint payload)
is passed in as callables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generators.splits import split_indices
from generators.voxel.checkpoints import save_checkpoint
from generators.voxel.data_cache import VoxelData
from generators.voxel.rotations import ROTATIONS
from generators.voxel.training_settings import GeneratorSettings


@dataclass
class TrainResult:
    """What a training run returns: the checkpoint written and where the run ended."""

    path: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]
    steps: int
    seconds: float


def epoch_batches(
    n: int, batch: int, seed: int, epoch: int, augment: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Deterministic (indices, rotations) per epoch; a resumed run replays the same order."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    rot = rng.integers(0, len(ROTATIONS), size=n) if augment else np.zeros(n, dtype=np.int64)
    for start in range(0, n - batch + 1 if n >= batch else 1, batch):
        idx = order[start : start + batch]
        yield idx, rot[start : start + batch]


class TrainingLoop:
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
                batches = epoch_batches(n_train, batch, settings.seed, self.epoch, settings.augment)
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
                        self.log(format_metrics(name, metrics))
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
        self.log(format_metrics(f"{name} final", metrics))
        save_checkpoint(self.out, payload(metrics))
        return metrics

    def out_of_time(self) -> bool:
        """The budget is per invocation, so a resumed run gets a fresh `max_minutes`."""
        if self.settings.max_minutes is None:
            return False
        return time.monotonic() - self.start > 60 * self.settings.max_minutes

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self.last_ckpt > 60 * self.settings.checkpoint_minutes


def train_val_split(settings: GeneratorSettings, data: VoxelData) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of `data`, fixed by the settings' fraction and split seed."""
    return split_indices(data.ids, settings.val_fraction, settings.split_seed)


def data_info(data: VoxelData, train_idx, val_idx, settings: GeneratorSettings) -> dict[str, Any]:
    """The checkpoint's record of its data: source, hash, split and the validation ids."""
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


def voxel_info(data: VoxelData) -> dict[str, Any]:
    """The VoxelSettings the data were encoded with (sampling decodes with the same)."""
    return dict(data.voxel)


def check_resume(
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


def format_metrics(prefix: str, metrics: dict[str, float]) -> str:
    """One log line of metrics, floats to 4 significant digits."""
    return (
        prefix
        + ": "
        + ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
        )
    )
