"""Training of the segmentation UNet (scaled density -> species and occupancy per voxel).

The UNet is the first model of the voxel generator: it turns a generated density into atoms,
and its frozen encoder supplies the VAE's perceptual loss. Its checkpoint therefore fixes what
later stages must agree with (element list, density scale, grid size), all stored here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generators.voxel.checkpoints import CHECKPOINT_FORMAT, load_checkpoint, model_version
from generators.voxel.data_cache import VoxelData
from generators.voxel.devices import pick_device, setup_threads
from generators.voxel.inputs import class_lookup, density_scale_of
from generators.voxel.losses import class_weights, unet_loss
from generators.voxel.rotations import rotate_batch
from generators.voxel.train_loop import (
    TrainingLoop,
    TrainResult,
    check_resume,
    data_info,
    train_val_split,
    voxel_info,
)
from generators.voxel.training_settings import GeneratorSettings
from generators.voxel.unet import UNet3D, UNetConfig


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
    train_idx, val_idx = train_val_split(settings, data)
    state: dict[str, Any] | None = load_checkpoint(resume, "unet") if resume else None
    if state is not None:
        check_resume(state, data, settings, log)
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
    loop = TrainingLoop(settings, Path(out), progress, log, state and state["train_state"])

    def tensors(index: np.ndarray, rotations: np.ndarray | None = None):
        dens = torch.from_numpy(data.density[index] / density_scale).float().unsqueeze(1)
        spec = torch.from_numpy(data.species[index].astype(np.int64))
        if rotations is not None:
            dens = rotate_batch(dens, rotations)
            spec = rotate_batch(spec, rotations)
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
            "voxel": voxel_info(data),
            "data": data_info(data, train_idx, val_idx, settings),
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
