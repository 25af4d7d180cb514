"""Training of the fingerprint CVAE: resumable, and every checkpoint is self-contained.

A checkpoint holds the descriptor settings, the input standardisation, the element list, the
per-source decile edges with their energy scales, the validation ids, the fitted per-decile
latent prior and the metric history, so sampling needs nothing but the file.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from generators.fingerprint.data import (
    FingerprintData,
    load_fingerprint_data,
    scale_of,
    source_deciles,
    split,
)
from generators.fingerprint.model import FingerprintVAE, ModelConfig, vae_loss
from generators.fingerprint.settings import FingerprintSettings

CHECKPOINT_KIND = "fingerprint-cvae"


class TrainSettings(BaseSettings):
    """Hyper-parameters (env CRYSTALLOOP_FP_TRAIN_*). Defaults were set by the validation
    loss on the 10 % held-out split, never by the benchmark figures."""

    model_config = SettingsConfigDict(env_prefix="CRYSTALLOOP_FP_TRAIN_", extra="forbid")

    max_sites: int = Field(10, ge=1, le=40, description="largest cubic cell kept for training")
    n_deciles: int = Field(10, ge=2)
    latent_dim: int = Field(32, ge=2)
    hidden: tuple[int, ...] = Field((256, 256), description="MLP widths (shipped file ~5 MB)")
    dropout: float = Field(0.0, ge=0, lt=1)
    lr: float = Field(1e-3, gt=0)
    batch: int = Field(128, ge=1)
    epochs: int = Field(300, ge=1, description="total epochs (a resumed run continues to this)")
    beta: float = Field(1.0, ge=0, description="KL weight of the summed ELBO")
    composition_weight: float = Field(10.0, ge=0, description="weight of the composition heads")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 0
    seed: int = 0
    max_minutes: float | None = Field(None, gt=0, description="stop cleanly after this long")
    checkpoint_minutes: float = Field(2.0, gt=0, description="write a resumable checkpoint")
    threads: int | None = Field(None, ge=1)


def _version(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def save(path: Path, payload: dict[str, Any]) -> None:
    """Atomic: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no fingerprint-generator checkpoint at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{path} is not a fingerprint-generator checkpoint")
    return payload


def _tensors(data: FingerprintData, elements: list[str], deciles: np.ndarray, max_count: int):
    index = {el: i for i, el in enumerate(elements)}
    k = data.counts.shape[1]
    el = np.full((len(data), k), -1, dtype=np.int64)
    for row, names in enumerate(data.elements):
        for s, name in enumerate(names):
            el[row, s] = index[name]
    return (
        torch.as_tensor(data.fingerprints, dtype=torch.float32),
        torch.as_tensor(el),
        torch.as_tensor(np.minimum(data.counts, max_count)),
        torch.as_tensor(deciles),
    )


def evaluate_rows(model: FingerprintVAE, tensors, rows, settings) -> dict[str, float]:
    """Loss parts, element accuracy and exact-composition rate of `rows` (validation, or a
    fine-tune's new crystals); `tensors` = (standardised x, elements, counts, deciles)."""
    xs, el, ct, dec = tensors
    was_training = model.training
    model.eval()
    with torch.no_grad():
        o = model(xs[rows], model.condition(dec[rows]), model.composition(el[rows], ct[rows]))
        _, parts = vae_loss(
            o, xs[rows], el[rows], ct[rows], settings.beta, settings.composition_weight
        )
        occupied = el[rows] >= 0
        el_hit = o["element_logits"].argmax(-1) == el[rows]
        ct_hit = (o["count_logits"].argmax(-1) == ct[rows]).all(1)
        comp_ok = (el_hit | ~occupied).all(1) & ct_hit
    model.train(was_training)
    return parts | {
        "element_accuracy": float(el_hit[occupied].float().mean()),
        "counts_exact": float(ct_hit.float().mean()),
        "composition_exact": float(comp_ok.float().mean()),
    }


def fit_prior(
    model: FingerprintVAE, x, composition, cond_deciles, n_deciles: int
) -> dict[str, Any]:
    """Per-decile Gaussian of the posterior means (plus the mean posterior variance), and the
    same over all crystals: the sampler's latent distribution."""
    model.eval()
    with torch.no_grad():
        mu, logvar = model.encode(x, model.condition(cond_deciles), composition)
    mu, var = mu.double(), logvar.exp().double()

    def gaussian(rows: torch.Tensor) -> dict[str, list]:
        m = mu[rows]
        cov = torch.cov(m.T) if len(m) > 1 else torch.zeros(m.shape[1], m.shape[1]).double()
        cov = cov + torch.diag(var[rows].mean(0)) + 1e-6 * torch.eye(m.shape[1]).double()
        return {"mean": m.mean(0).tolist(), "cov": cov.tolist(), "n": int(len(m))}

    prior = {"all": gaussian(torch.arange(len(mu)))}
    for d in range(n_deciles):
        rows = torch.nonzero(cond_deciles == d).flatten()
        if len(rows) >= 2:
            prior[str(d)] = gaussian(rows)
    return prior


def templates(model, data: FingerprintData, rows, xs, composition, deciles) -> dict[str, Any]:
    """Posterior means, site inventories and coordinates of the training crystals: the
    sampler starts each inversion from the nearest one with the same site inventory."""
    model.eval()
    with torch.no_grad():
        mu, _ = model.encode(xs[rows], model.condition(deciles[rows]), composition)
    model.train()
    return {
        "mu": mu.half(),
        "counts": torch.as_tensor(data.counts[rows], dtype=torch.int8),
        "frac": torch.as_tensor(data.frac[rows], dtype=torch.float32),
        "length": torch.as_tensor(data.lengths[rows], dtype=torch.float32),
        "ids": [data.ids[i] for i in rows],
        # reduced formulas: the sampler can tell a draw that re-makes a training compound
        "formulas": [data.formula(i) for i in rows],
    }


def train(
    sources: list[str],
    out: Path,
    settings: TrainSettings | None = None,
    fp_settings: FingerprintSettings | None = None,
    resume: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or continue training) and write `out`; returns the final checkpoint."""
    settings = settings or TrainSettings()
    state = load(resume) if resume else None
    if state is not None:
        fp_settings = FingerprintSettings(**state["fingerprint_settings"])
        if state["sources"] != list(sources):
            raise ValueError(
                f"resume: checkpoint was trained on {state['sources']}, not {list(sources)}"
            )
    fp_settings = fp_settings or FingerprintSettings()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    log(f"fingerprinting {', '.join(sources)} (cached after the first run)")
    data = load_fingerprint_data(sources, fp_settings, settings.max_sites)
    train_rows, val_rows = split(data, settings.val_fraction, settings.split_seed)
    deciles, edges = source_deciles(data, train_rows, settings.n_deciles)
    train_rows = train_rows[deciles[train_rows] >= 0]
    val_rows = val_rows[deciles[val_rows] >= 0]
    elements = sorted({el for names in data.elements for el in names})
    if state is not None and state["elements"] != elements:
        raise ValueError("resume: the data's element list differs from the checkpoint's")
    max_count = int(data.counts.max())
    x, el, ct, dec = _tensors(data, elements, deciles, max_count)
    mean = x[train_rows].mean(0)
    std = x[train_rows].std(0).clamp(min=1e-3)
    if state is not None:
        mean, std = torch.tensor(state["x_mean"]), torch.tensor(state["x_std"])
    xs = (x - mean) / std
    config = ModelConfig(
        dim=fp_settings.dim,
        n_conditions=settings.n_deciles,
        latent_dim=settings.latent_dim,
        hidden=settings.hidden,
        n_elements=len(elements),
        n_slots=fp_settings.n_slots,
        max_count=max_count,
        dropout=settings.dropout,
    )
    if state is not None:
        config = ModelConfig(**state["config"])
    model = FingerprintVAE(config)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    epoch, history = 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        if state.get("optimizer"):
            opt.load_state_dict(state["optimizer"])
            for group in opt.param_groups:
                group["lr"] = settings.lr
        epoch, history = state["epoch"], state["history"]
        log(f"resumed at epoch {epoch}")
    log(
        f"{len(train_rows)} train / {len(val_rows)} validation crystals, {len(elements)} "
        f"elements, fingerprint dim {fp_settings.dim}, {sum(p.numel() for p in model.parameters()):,} parameters"
    )
    rng = np.random.default_rng(settings.seed + epoch)
    started = last_save = time.monotonic()

    def evaluate(rows: np.ndarray) -> dict[str, float]:
        return evaluate_rows(model, (xs, el, ct, dec), rows, settings)

    def payload(final: bool) -> dict[str, Any]:
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        out_state: dict[str, Any] = {
            "kind": CHECKPOINT_KIND,
            "model_version": _version(weights),
            "config": config.model_dump(),
            "model": weights,
            "fingerprint_settings": fp_settings.model_dump(mode="json"),
            "train_settings": settings.model_dump(mode="json"),
            "x_mean": mean.tolist(),
            "x_std": std.tolist(),
            "elements": elements,
            "property": "formation_energy_per_atom",
            "sources": list(sources),
            "decile_edges": edges,
            "scales": {spec: scale_of(spec) for spec in sources},
            "val_ids": [data.ids[i] for i in val_rows],
            "n_train": int(len(train_rows)),
            "epoch": epoch,
            "history": history,
            "data_report": data.report,
        }
        if final:  # slim: half-precision weights, no optimizer (the .resume.pt has it)
            out_state["model"] = {k: v.half() for k, v in weights.items()}
            comp = model.composition(el[train_rows], ct[train_rows])
            out_state["latent_prior"] = fit_prior(
                model, xs[train_rows], comp, dec[train_rows], settings.n_deciles
            )
            out_state["templates"] = templates(model, data, train_rows, xs, comp, dec)
        else:
            out_state["optimizer"] = opt.state_dict()
        return out_state

    model.train()
    while epoch < settings.epochs:
        perm = rng.permutation(train_rows)
        for start in range(0, len(perm), settings.batch):
            rows = perm[start : start + settings.batch]
            o = model(xs[rows], model.condition(dec[rows]), model.composition(el[rows], ct[rows]))
            loss, _ = vae_loss(
                o, xs[rows], el[rows], ct[rows], settings.beta, settings.composition_weight
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        epoch += 1
        if epoch % 10 == 0 or epoch == settings.epochs:
            metrics = {"epoch": epoch, **evaluate(val_rows)}
            history.append(metrics)
            log(
                f"epoch {epoch}: val mse/dim {metrics['mse']:.4f}, kl {metrics['kl']:.1f}, "
                f"element acc {metrics['element_accuracy']:.3f}, "
                f"composition exact {metrics['composition_exact']:.3f}"
            )
        elapsed = (time.monotonic() - started) / 60
        if settings.max_minutes and elapsed >= settings.max_minutes:
            log(f"stopping after {elapsed:.1f} min at epoch {epoch} (resume with --resume)")
            break
        if (time.monotonic() - last_save) / 60 >= settings.checkpoint_minutes:
            save(out.with_suffix(".resume.pt"), payload(final=False))
            last_save = time.monotonic()
    final = payload(final=True)
    # the resumable state (with optimizer) sits beside the slim shipped checkpoint
    save(
        out.with_suffix(".resume.pt"),
        payload(final=False) | {"latent_prior": final["latent_prior"]},
    )
    save(out, final)
    log(f"wrote {out} (model {final['model_version']}, epoch {epoch})")
    return final
