"""Training of the conditional DFC-VAE, the generative half of the voxel generator.

The VAE learns density plus coordinate channels conditioned on a property decile, with a
perceptual loss on the frozen UNet's encoder features. It can start without a UNet (a warm-up
phase with the perceptual term off, run while the UNet trains) and be resumed with one; each
such phase is recorded in the checkpoint with the UNet version it used.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generators.splits import assign_deciles, decile_edges
from generators.voxel.checkpoints import (
    CHECKPOINT_FORMAT,
    build_unet,
    load_checkpoint,
    model_version,
)
from generators.voxel.data_cache import VoxelData
from generators.voxel.devices import pick_device, setup_threads
from generators.voxel.inputs import (
    class_lookup,
    coordinate_channels,
    density_scale_of,
    lattice_from_channels,
)
from generators.voxel.losses import class_weights, vae_objective
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
from generators.voxel.unet import classify_voxels
from generators.voxel.vae import (
    ConditionalVAE,
    VAEConfig,
    freeze_batchnorm,
    one_hot_decile,
    species_embedding,
    with_species_head,
)

# The species head's own layers start from scratch on top of a trained decoder: at the
# trunk's rate (1e-4) its 1x1 classifier moved CE 4.07 -> 4.04 in 100 steps; 10x is a rate
# a freshly initialised head trains at.
SPECIES_HEAD_LR_SCALE = 10.0


def _param_groups(model: ConditionalVAE, lr: float) -> list[dict[str, Any]]:
    """Adam groups: the trunk at `lr`, the species head (when there is one) at 10x."""
    head = [p for n, p in model.named_parameters() if n.startswith("species_")]
    trunk = [p for n, p in model.named_parameters() if not n.startswith("species_")]
    groups = [{"params": trunk, "lr": lr}]
    if head:
        groups.append({"params": head, "lr": lr * SPECIES_HEAD_LR_SCALE})
    return groups


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
    `settings.vae_species_head` trains the species head too (added, weights kept, when the
    resumed VAE has none); its classes are the UNet's elements, or the training split's.
    """
    settings = settings or GeneratorSettings()
    threads = setup_threads(settings.threads)
    device = pick_device(settings.device)
    torch.manual_seed(settings.seed)
    n_grid = data.density.shape[-1]
    train_all, val_all = train_val_split(settings, data)
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
    elements = unet_state["elements"]
    if state is not None and state.get("elements"):
        elements = state["elements"]
    if settings.vae_species_head and elements is None:
        elements = sorted(int(z) for z in np.unique(data.species[train_idx]) if z > 0)
    if config.species_classes and not settings.vae_species_head:
        raise ValueError(
            "the resumed VAE has a species head: train it with --species-head (the flag "
            "cannot remove one)"
        )
    widen = settings.vae_species_head and not config.species_classes
    if settings.vae_species_head and state is None:
        config = VAEConfig.from_dict(config.to_dict() | {"species_classes": len(elements) + 1})
    model = ConditionalVAE(config)
    history: list[dict[str, float]] = []
    phases: list[dict[str, Any]] = []
    if state is not None:
        phases = list(state.get("phases", []))
        check_resume(state, data, settings, log)
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state["state_dict"].items()}
        )
        if widen:
            log(f"VAE: adding a species head ({len(elements)} elements); trained weights kept")
            model = with_species_head(model, len(elements) + 1)
            config = model.config
            state.pop("optimizer", None)  # new parameters: Adam's moments start afresh
    model = model.to(device)
    opt = torch.optim.Adam(_param_groups(model, settings.vae_lr))
    lut = class_lookup(elements) if config.species_classes else None
    species_w = None
    if lut is not None:
        counts = np.bincount(lut[data.species[train_idx]].ravel(), minlength=len(elements) + 1)
        power = settings.vae_species_class_weight_power
        species_w = class_weights(counts, power).to(device)
    if state is not None:
        if "optimizer" in state:
            opt.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["train_state"]["torch_rng"])
        else:  # a shipped (slim) checkpoint: weights only, so Adam's moments start afresh
            log("VAE: resuming a slim checkpoint: optimizer state starts fresh")
            final = state["metrics"]["final"]
            state["train_state"] = {
                "step": int(final.get("step", 0)),
                "epoch": int(final.get("epoch", 0)),  # a new epoch's order, not epoch 0's again
            }
        for group, fresh in zip(
            opt.param_groups, _param_groups(model, settings.vae_lr), strict=True
        ):
            group["lr"] = fresh["lr"]  # a resumed run may change the learning rate
        history = state["metrics"]["history"]
    log(
        f"VAE: {sum(p.numel() for p in model.parameters()):,} parameters, latent "
        f"{config.latent_dim}, {len(train_idx)} train / {len(val_idx)} val, "
        f"{threads} threads on {device}"
    )
    phases_with_head = sum(1 for p in phases if p.get("species_weight") is not None)
    loop = TrainingLoop(settings, Path(out), progress, log, state and state["train_state"])
    phases.append(
        {
            "from_step": loop.step,
            "unet_version": unet_state["model_version"],
            "lr": settings.vae_lr,
            "alpha": settings.alpha if features is not None else 0.0,
            "beta": settings.beta,
            "batch": settings.vae_batch,
            "frozen_batchnorm": settings.vae_freeze_batchnorm,
            "species_weight": settings.vae_species_weight if lut is not None else None,
        }
    )

    def train_mode() -> None:
        model.train()
        if settings.vae_freeze_batchnorm:
            freeze_batchnorm(model)
            if lut is not None and phases_with_head == 0:
                # a species decoder added now starts from scratch: its batch norm learns its
                # statistics (with them frozen at their initial 0/1 it barely trained: occupancy
                # BCE 0.73 -> 0.64 in 300 steps); frozen again once a later phase resumes it
                model.species_decoder.train()

    def tensors(index: np.ndarray, rotations: np.ndarray | None = None):
        """Model input, condition and (with a species head) the class-index target."""
        dens = torch.from_numpy(data.density[index] / density_scale).float().unsqueeze(1)
        target = None
        if lut is not None:
            z = data.species[index]
            target = torch.from_numpy(lut[z])
            dens = torch.cat([dens, species_embedding(z)], dim=1)
        if rotations is not None:
            dens = rotate_batch(dens, rotations)
            if target is not None:
                target = rotate_batch(target, rotations)
        lat = torch.from_numpy(data.lattice[index])
        coords = coordinate_channels(lat, n_grid, coord_scale)
        x = torch.cat([dens[:, :1], coords, dens[:, 1:]], dim=1)
        cond = one_hot_decile(deciles[index], config.n_conditions)
        return x.to(device), cond.to(device), None if target is None else target.to(device)

    def losses(x, cond, target) -> tuple[dict[str, torch.Tensor], torch.Tensor, Any]:
        return vae_objective(
            model,
            x,
            cond,
            target,
            settings.alpha,
            settings.beta,
            features,
            species_w,
            settings.vae_species_weight,
        )

    def validate() -> dict[str, float]:
        model.eval()
        vi = val_idx[: settings.val_max]
        sums = {"total": 0.0, "mse": 0.0, "kld": 0.0, "perceptual": 0.0}
        if lut is not None:
            sums |= {"species_ce": 0.0, "species_bce": 0.0}
        hits = occupied = 0
        lat_err = 0.0
        with torch.no_grad():
            for s in range(0, len(vi), 20):
                x, cond, target = tensors(vi[s : s + 20])
                parts, recon, feats = losses(x, cond, target)
                for k in sums:
                    sums[k] += float(parts[k]) * len(x)
                if target is not None:
                    labels, _ = classify_voxels(feats, model.species_head)
                    hits += int(((labels == target) & (target > 0)).sum())
                    occupied += int((target > 0).sum())
                lat_err += float(
                    (
                        lattice_from_channels(recon[:, 1:], coord_scale)
                        - torch.from_numpy(data.lattice[vi[s : s + 20]]).to(device)
                    )
                    .abs()
                    .sum()
                )
        train_mode()
        n = len(vi)
        out = {f"val_{k}": v / n for k, v in sums.items()} | {"val_lattice_mae": lat_err / n}
        if lut is not None:  # voxel-level species recall on occupied voxels, as the UNet's
            out["val_species_recall"] = hits / max(occupied, 1)
        return out

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
            "voxel": voxel_info(data),
            "unet_version": unet_state["model_version"],
            "phases": phases,
            "elements": elements,
            "data": data_info(data, train_idx, val_idx, settings),
            "metrics": {"final": final_metrics, "history": history},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def train_step(idx: np.ndarray, rot: np.ndarray) -> float:
        parts, _, _ = losses(*tensors(train_idx[idx], rot))
        opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        opt.step()
        return parts["total"].item()

    train_mode()
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
