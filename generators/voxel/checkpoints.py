"""Checkpoint files of the voxel models: writing, reading, slimming, and rebuilding models.

A checkpoint is a plain dict (config, weights, optimizer and RNG state, element list, input
scales, decile edges, data hash, validation ids, metric history) saved with torch.save; it
holds no pickled project classes, so a file stays loadable however the code is reorganised.
Training, resuming, sampling, the latent prior and the decoding tuning all read and write
these files, so the rules (atomic writes, a clear error for a missing file or the wrong model
kind, float16 shipping copies) live in one place.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from generators.voxel.unet import UNet3D, UNetConfig
from generators.voxel.vae import ConditionalVAE, VAEConfig

CHECKPOINT_FORMAT = 1


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
