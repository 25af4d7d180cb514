"""A campaign's DFT-relaxed crystals taught to the fingerprint generator, behind a gate.

Why: the generator proposes from what it was trained on; a campaign's own relaxed crystals are
the best evidence of where the good chemistry is. The fine-tune adds them (with their DFT
formation energies) to the training data: the decile edges of their energy scale are re-fitted
on the enlarged data, the CVAE trains a few epochs on them mixed with a replay of its original
training crystals, and the crystals become templates the sampler starts inversions from. A
version is kept only if it reconstructs the original held-out crystals (fingerprint MSE,
exact composition) no worse than the deployed one, within stated tolerances, so a fine-tune on
a handful of crystals cannot trade the model's general knowledge for them.

Only cubic cells the descriptor accepts can be learnt (the fingerprint is defined on cubic
cells); the others are counted in the report, not silently dropped.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from generators.finetune_result import GeneratorFineTune
from generators.fingerprint.data import FingerprintData, load_fingerprint_data
from generators.fingerprint.model import FingerprintVAE, ModelConfig, vae_loss
from generators.fingerprint.settings import FingerprintSettings
from generators.fingerprint.train import (
    TrainSettings,
    _tensors,
    _version,
    evaluate_rows,
    fit_prior,
    templates,
)
from generators.splits import assign_deciles, decile_edges, locate_source, scale_of


class GeneratorFineTuneSettings(BaseModel):
    """How hard the new crystals are taught, and what the gate tolerates."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1, le=1000)
    lr: float = Field(2e-4, gt=0, description="a tenth of the original training rate")
    replay_size: int = Field(512, ge=0, description="original training crystals per epoch")
    new_weight: int = Field(8, ge=1, description="times each new crystal is seen per epoch")
    mse_tolerance: float = Field(
        0.02, ge=0, description="relative rise of the held-out fingerprint MSE allowed"
    )
    composition_tolerance: float = Field(
        0.01, ge=0, description="drop of the held-out exact-composition rate allowed"
    )
    seed: int = 0


def _concat(a: FingerprintData, b: FingerprintData, source_index: int) -> FingerprintData:
    """Rows of b appended to a (both read with the same max_sites), all of b counted as a's
    source `source_index`."""
    return FingerprintData(
        np.concatenate([a.fingerprints, b.fingerprints]),
        np.concatenate([a.counts, b.counts]),
        a.elements + b.elements,
        np.concatenate([a.lengths, b.lengths]),
        np.concatenate([a.frac, b.frac]),
        np.concatenate([a.values, b.values]),
        np.concatenate([a.source, np.full(len(b), source_index)]),
        a.ids + b.ids,
        a.sources,
        a.report,
    )


def _scale_source(state: dict[str, Any], scale: str) -> str:
    for spec in state["decile_edges"]:
        if scale_of(spec).startswith(scale):
            return spec
    raise ValueError(f"none of the model's sources is on the {scale!r} scale")


def fine_tune(
    state: dict[str, Any],
    new_source: str,
    sources: list[str] | None = None,
    scale: str = "Materials Project",
    settings: GeneratorFineTuneSettings | None = None,
) -> GeneratorFineTune:
    """Fine-tune the checkpoint `state` on the crystals of `new_source` (a CIF folder with
    properties.csv, as `crystalloop` writes a campaign's results), whose formation energies are
    on the energy `scale` of one of the model's training sources. `sources` locate the original
    training data for replay (default: the paths stored in the checkpoint)."""
    settings = settings or GeneratorFineTuneSettings()
    train_settings = TrainSettings(**state["train_settings"])
    fp_settings = FingerprintSettings(**state["fingerprint_settings"])
    sources = list(sources or [locate_source(spec) for spec in state["sources"]])
    if len(sources) != len(state["sources"]):
        raise ValueError(f"give the {len(state['sources'])} training sources, got {sources}")
    old = load_fingerprint_data(sources, fp_settings, train_settings.max_sites)
    try:
        new = load_fingerprint_data([new_source], fp_settings, train_settings.max_sites)
    except ValueError as exc:
        if "no usable cubic crystals" not in str(exc):
            raise
        n = len(list(Path(new_source).glob("*.cif"))) if Path(new_source).is_dir() else 0
        reason = f"none of the {n} result(s) is a cubic cell (the fingerprint needs one)"
        return GeneratorFineTune(False, reason, 0, {"not cubic": n})
    report = next(iter(new.report.values()))  # a cached copy may name the folder differently
    skipped = {k: v for k, v in report.items() if k.endswith("dropped")}
    skipped = {k: sum(v.values()) if isinstance(v, dict) else int(v) for k, v in skipped.items()}
    elements = list(state["elements"])
    known = [
        i
        for i, names in enumerate(new.elements)
        if set(names) <= set(elements) and np.isfinite(new.values[i])
    ]
    if len(known) < len(new):
        skipped["unknown element or no energy"] = len(new) - len(known)
    if not known:
        return GeneratorFineTune(False, "no usable result", 0, skipped)
    new = new.take(known)

    # deciles: stored edges per source; the new crystals' scale re-fitted with them included
    spec = _scale_source(state, scale)
    data = _concat(old, new, state["sources"].index(spec))
    # the model's validation crystals never train; the gate judges those whose formula is not
    # being taught (a campaign may relax a crystal the model held out)
    val_ids = set(state["val_ids"])
    taught = {new.formula(i) for i in range(len(new))}
    all_val = np.array([i for i, ident in enumerate(data.ids) if ident in val_ids])
    val_rows = np.array([i for i in all_val if data.formula(i) not in taught])
    new_rows = np.arange(len(old), len(data))
    edges = {k: list(v) for k, v in state["decile_edges"].items()}
    deciles = np.full(len(data), -1, dtype=np.int64)
    for index, source_spec in enumerate(state["sources"]):
        if source_spec not in edges:  # a source with too few energies trains unconditioned
            continue
        rows = np.flatnonzero((data.source == index) & np.isfinite(data.values))
        if source_spec == spec:
            fit_rows = np.setdiff1d(rows, all_val)
            edges[spec] = [
                float(x) for x in decile_edges(data.values[fit_rows], train_settings.n_deciles)
            ]
        deciles[rows] = assign_deciles(data.values[rows], np.asarray(edges[source_spec]))
    train_rows = np.setdiff1d(np.flatnonzero(deciles >= 0), np.concatenate([all_val, new_rows]))

    config = ModelConfig(**state["config"])
    model = FingerprintVAE(config)
    model.load_state_dict({k: v.float() for k, v in state["model"].items()})
    x, el, ct, dec = _tensors(data, elements, deciles, config.max_count)
    mean, std = torch.tensor(state["x_mean"]), torch.tensor(state["x_std"])
    xs = (x - mean) / std
    tensors = (xs, el, ct, dec)
    metrics = {
        "held_out_before": evaluate_rows(model, tensors, val_rows, train_settings),
        "new_before": evaluate_rows(model, tensors, new_rows, train_settings),
    }

    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    model.train()
    for _ in range(settings.epochs):
        replay = rng.choice(train_rows, min(settings.replay_size, len(train_rows)), replace=False)
        rows = rng.permutation(np.concatenate([replay, np.repeat(new_rows, settings.new_weight)]))
        for start in range(0, len(rows), train_settings.batch):
            batch = rows[start : start + train_settings.batch]
            o = model(
                xs[batch], model.condition(dec[batch]), model.composition(el[batch], ct[batch])
            )
            loss, _ = vae_loss(
                o,
                xs[batch],
                el[batch],
                ct[batch],
                train_settings.beta,
                train_settings.composition_weight,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    metrics["held_out_after"] = evaluate_rows(model, tensors, val_rows, train_settings)
    metrics["new_after"] = evaluate_rows(model, tensors, new_rows, train_settings)

    before, after = metrics["held_out_before"], metrics["held_out_after"]
    if after["mse"] > before["mse"] * (1 + settings.mse_tolerance):
        reason = (
            f"held-out fingerprint MSE rose {before['mse']:.4f} -> {after['mse']:.4f} "
            f"(tolerance {settings.mse_tolerance:.0%})"
        )
        return GeneratorFineTune(False, reason, len(new_rows), skipped, metrics)
    drop = before["composition_exact"] - after["composition_exact"]
    if drop > settings.composition_tolerance:
        reason = (
            f"held-out exact composition fell {before['composition_exact']:.3f} -> "
            f"{after['composition_exact']:.3f}"
        )
        return GeneratorFineTune(False, reason, len(new_rows), skipped, metrics)

    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    learnt = np.concatenate([train_rows, new_rows])
    comp = model.composition(el[learnt], ct[learnt])
    out = copy.copy(state)
    out |= {
        "model": {k: v.half() for k, v in weights.items()},
        "model_version": _version(weights),
        "decile_edges": edges,
        "latent_prior": fit_prior(model, xs[learnt], comp, dec[learnt], config.n_conditions),
        "templates": templates(model, data, learnt, xs, comp, dec),
        "n_train": int(len(learnt)),
        "fine_tuned": {
            "from": state["model_version"],
            "new_crystals": [data.ids[i] for i in new_rows],
            "scale_source": spec,
            "settings": settings.model_dump(),
            "metrics": metrics,
        },
    }
    model.eval()
    return GeneratorFineTune(True, "passed", len(new_rows), skipped, metrics, out)
