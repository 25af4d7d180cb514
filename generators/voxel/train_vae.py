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
from generators.voxel.inputs import coordinate_channels, density_scale_of, lattice_from_channels
from generators.voxel.losses import vae_loss
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
from generators.voxel.vae import ConditionalVAE, VAEConfig, freeze_batchnorm, one_hot_decile


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
    model = ConditionalVAE(config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=settings.vae_lr)
    history: list[dict[str, float]] = []
    phases: list[dict[str, Any]] = []
    if state is not None:
        phases = list(state.get("phases", []))
        check_resume(state, data, settings, log)
        model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state["state_dict"].items()}
        )
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
        for group in opt.param_groups:  # a resumed run may change the learning rate
            group["lr"] = settings.vae_lr
        history = state["metrics"]["history"]
    log(
        f"VAE: {sum(p.numel() for p in model.parameters()):,} parameters, latent "
        f"{config.latent_dim}, {len(train_idx)} train / {len(val_idx)} val, "
        f"{threads} threads on {device}"
    )
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
        }
    )

    def train_mode() -> None:
        model.train()
        if settings.vae_freeze_batchnorm:
            freeze_batchnorm(model)

    def tensors(index: np.ndarray, rotations: np.ndarray | None = None):
        dens = torch.from_numpy(data.density[index] / density_scale).float().unsqueeze(1)
        if rotations is not None:
            dens = rotate_batch(dens, rotations)
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
                        lattice_from_channels(recon[:, 1:], coord_scale)
                        - torch.from_numpy(data.lattice[vi[s : s + 20]]).to(device)
                    )
                    .abs()
                    .sum()
                )
        train_mode()
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
            "voxel": voxel_info(data),
            "unet_version": unet_state["model_version"],
            "phases": phases,
            "elements": unet_state["elements"],
            "data": data_info(data, train_idx, val_idx, settings),
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
