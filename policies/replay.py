"""Replay benchmark: a simulated campaign over a labelled pool, the dataset as the oracle.

Each iteration the surrogate is retrained on what has been "measured", the policy picks a batch,
the oracle reveals the labels. To make tens of campaigns fit in minutes on two cores, crystals
are embedded once with the frozen formation-energy CGCNN backbone (Materials-Project pretrained,
never trained on the pool's labels), and per iteration only an ensemble of the two dense layers
is refit on bootstrap resamples of the measured rows (the paper's transfer-learning split).
As in the daemon, policies rank on recalibrated sigma: each iteration the ensemble's spread is
rescaled (policies.calibration) on out-of-fold errors over the measured rows, since those are
the only labels a real campaign has at that point.

Metrics per policy (mean and spread over seeds):
- discovery acceleration factor (DAF): precision of the policy's picks / base rate of the pool;
- enhancement factor (EF): discoveries / random's discoveries at the same oracle budget;
- allALM: fraction of all hits in the pool found (CAMD);
- oracle calls per discovery.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.acquisition import Objective, Policy, make_policy
from policies.calibration import SigmaCalibration, fit_sigma_calibration, widen_members
from policies.settings import apply_torch_threads
from policies.surrogate import Predictions


@dataclass
class ReplayConfig:
    policies: list[Any] = field(
        default_factory=lambda: [
            "random",
            "greedy",
            {"name": "ucb", "kappa": 1.0},
            "ei",
            "thompson",
            "max_uncertainty",
            {"name": "diverse", "inner": "ucb", "inner_params": {"kappa": 1.0}},
        ]
    )
    seeds: int = 5
    n_initial: int = 20
    batch_size: int = 20
    iterations: int = 15
    members: int = 5
    steps: int = 150
    hidden: int = 32
    property: str = "formation_energy_per_atom"
    goal: str = "minimize"
    window: tuple[float, float] | None = None
    hit_quantile: float = 0.1
    calibration_folds: int = 5  # 0: rank on the raw ensemble spread


def policy_label(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    params = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] == "diverse":
        return f"diverse({spec.get('inner', 'greedy')})"
    return spec["name"] + (
        "(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else ""
    )


class HeadEnsemble:
    """Bootstrap ensemble of two-dense-layer heads on fixed crystal embeddings, trained as one
    batched model (one optimiser step updates all members)."""

    def __init__(self, members: int = 5, hidden: int = 32, steps: int = 300, seed: int = 0):
        self.members, self.hidden, self.steps, self.seed = members, hidden, steps, seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> HeadEnsemble:
        g = torch.Generator().manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.x_mean, self.x_std = x.mean(0), x.std(0) + 1e-6
        self.y_mean, self.y_std = float(y.mean()), float(y.std()) or 1.0
        xs = torch.as_tensor((x - self.x_mean) / self.x_std, dtype=torch.float32)
        ys = torch.as_tensor((y - self.y_mean) / self.y_std, dtype=torch.float32)
        n, d = xs.shape
        boot = torch.as_tensor(rng.integers(0, n, size=(self.members, n)))
        xb, yb = xs[boot], ys[boot]  # (E, n, d), (E, n)
        e, h = self.members, self.hidden
        self.w1 = (torch.randn(e, d, h, generator=g) / np.sqrt(d)).requires_grad_()
        self.b1 = torch.zeros(e, 1, h, requires_grad=True)
        self.w2 = (torch.randn(e, h, 1, generator=g) / np.sqrt(h)).requires_grad_()
        self.b2 = torch.zeros(e, 1, 1, requires_grad=True)
        params = [self.w1, self.b1, self.w2, self.b2]
        opt = torch.optim.Adam(params, lr=2e-2, weight_decay=1e-3)
        for _ in range(self.steps):
            loss = ((self._forward(xb).squeeze(-1) - yb) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return self

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(x @ self.w1 + self.b1) @ self.w2 + self.b2

    @torch.no_grad()
    def predict_members(self, x: np.ndarray) -> np.ndarray:
        xs = torch.as_tensor((x - self.x_mean) / self.x_std, dtype=torch.float32)
        out = self._forward(xs.expand(self.members, *xs.shape)).squeeze(-1).numpy()
        return out * self.y_std + self.y_mean


SIGMA_BLIND = ("random", "greedy")  # policies whose picks do not depend on sigma


def _uses_sigma(spec: Any) -> bool:
    params = {"name": spec} if isinstance(spec, str) else dict(spec)
    if params["name"] == "diverse":
        return params.get("inner", "greedy") not in SIGMA_BLIND
    return params["name"] not in SIGMA_BLIND


def out_of_fold_calibration(
    x: np.ndarray, y: np.ndarray, config: ReplayConfig, seed: int
) -> SigmaCalibration:
    """Sigma recalibration from the measured rows alone: each fold is predicted by an
    ensemble trained on the other folds, and the scale (floor with enough rows) is fitted
    on those out-of-fold errors."""
    n = len(y)
    folds = min(config.calibration_folds, n // 2)
    if folds < 2:
        return SigmaCalibration()
    parts = np.array_split(np.random.default_rng(seed).permutation(n), folds)
    errors, sigma = np.empty(n), np.empty(n)
    for i, part in enumerate(parts):
        rest = np.concatenate([p for j, p in enumerate(parts) if j != i])
        model = HeadEnsemble(config.members, config.hidden, config.steps, seed * 7919 + i)
        members = model.fit(x[rest], y[rest]).predict_members(x[part])
        errors[part] = np.abs(members.mean(0) - y[part])
        sigma[part] = members.std(0)
    return fit_sigma_calibration(errors, sigma)


@dataclass
class Campaign:
    policy: str
    seed: int
    picked: list[int]
    hits: list[int]  # cumulative discoveries after each oracle call


def run_campaign(
    features: np.ndarray,
    y: np.ndarray,
    hits: np.ndarray,
    policy: Policy,
    config: ReplayConfig,
    seed: int,
    calibrate: bool = True,
) -> Campaign:
    """One campaign: the same random initial set for every policy at a given seed.
    `calibrate`: rank on recalibrated sigma (config.calibration_folds > 0)."""
    n = len(y)
    rng = np.random.default_rng(seed)
    measured = list(rng.choice(n, size=min(config.n_initial, n), replace=False))
    objective = Objective(property=config.property, goal=config.goal, window=config.window)
    for it in range(config.iterations):
        pool = np.setdiff1d(np.arange(n), measured)
        if len(pool) == 0:
            break
        model = HeadEnsemble(config.members, config.hidden, config.steps, seed * 1000 + it)
        members = model.fit(features[measured], y[measured]).predict_members(features[pool])
        mean, std = members.mean(0), members.std(0)
        if calibrate and config.calibration_folds:
            x_m, y_m = features[measured], y[measured]
            wide = out_of_fold_calibration(x_m, y_m, config, seed * 1000 + it).apply(std)
            members, std = widen_members(members, mean, std, wide), wide
        preds = Predictions(
            {config.property: (mean, std)},
            {config.property: members},
            features[pool],
        )
        best_measured = y[measured]
        best = float(best_measured[np.argmax(objective.utility(best_measured))])
        chosen = policy.select(None, preds, min(config.batch_size, len(pool)), best=best)
        measured.extend(int(pool[i]) for i in chosen)
    found = np.cumsum(hits[np.asarray(measured)]).astype(int).tolist()
    return Campaign(
        policy_label(getattr(policy, "_spec", policy.name)), seed, [int(i) for i in measured], found
    )


def _make(spec: Any, seed: int, config: ReplayConfig) -> Policy:
    params = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = params.pop("name")
    objective = {"property": config.property, "goal": config.goal, "window": config.window}
    if name == "diverse":
        params.setdefault("inner_params", {})
        params["inner_params"] = {**params["inner_params"], "objective": objective, "seed": seed}
    else:
        params.update(objective=objective, seed=seed)
    policy = make_policy(name, **params)
    policy._spec = spec  # type: ignore[attr-defined]
    return policy


def hit_mask(y: np.ndarray, config: ReplayConfig) -> np.ndarray:
    """Discoveries: in the window, else the best `hit_quantile` of the pool."""
    if config.goal == "window":
        low, high = config.window
        return (y >= low) & (y <= high)
    if config.goal == "minimize":
        return y <= np.quantile(y, config.hit_quantile)
    return y >= np.quantile(y, 1 - config.hit_quantile)


def run_replay(
    features: np.ndarray,
    y: np.ndarray,
    config: ReplayConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """All policies x seeds; returns curves and summary metrics (JSON-ready)."""
    config = config or ReplayConfig()
    apply_torch_threads()
    y = np.asarray(y, float)
    hits = hit_mask(y, config)
    base_rate = float(hits.mean())
    campaigns: dict[str, list[Campaign]] = {}
    for spec in config.policies:
        label = policy_label(spec)
        for seed in range(config.seeds):
            policy = _make(spec, seed, config)
            campaign = run_campaign(features, y, hits, policy, config, seed, _uses_sigma(spec))
            campaigns.setdefault(label, []).append(campaign)
            if progress:
                progress(f"{label} seed {seed}")
    budget = min(len(c.hits) for cs in campaigns.values() for c in cs)
    random_label = next((k for k in campaigns if k == "random"), None)
    summary: dict[str, Any] = {}
    for label, cs in campaigns.items():
        found = np.array([c.hits[budget - 1] for c in cs], float)
        picks = budget - config.n_initial
        initial = np.array([c.hits[config.n_initial - 1] for c in cs], float)
        precision = (found - initial) / max(picks, 1)
        daf = precision / base_rate if base_rate > 0 else np.full_like(found, np.nan)
        entry = {
            "oracle_calls": budget,
            "discoveries_mean": float(found.mean()),
            "discoveries_std": float(found.std()),
            "daf_mean": float(daf.mean()),
            "daf_std": float(daf.std()),
            "all_alm_mean": float((found / max(hits.sum(), 1)).mean()),
            "oracle_calls_per_discovery": float(budget / max(found.mean(), 1e-9)),
        }
        if random_label:
            rnd = np.array([c.hits[budget - 1] for c in campaigns[random_label]], float)
            entry["enhancement_factor_vs_random"] = float(found.mean() / max(rnd.mean(), 1e-9))
            rnd_daf = summary.get(random_label, {}).get("daf_mean")
            if rnd_daf:
                entry["daf_over_random"] = float(daf.mean() / rnd_daf)
        summary[label] = entry
    return {
        "config": asdict(config),
        "pool_size": int(len(y)),
        "n_hits": int(hits.sum()),
        "base_rate": base_rate,
        "summary": summary,
        "curves": {label: [c.hits for c in cs] for label, cs in campaigns.items()},
        "n_initial": config.n_initial,
    }


def write_plot(result: Mapping[str, Any], path: Path) -> Path:
    """Discoveries vs oracle calls, mean line and min-max band over seeds, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, curves in result["curves"].items():
        length = min(len(c) for c in curves)
        arr = np.array([c[:length] for c in curves], float)
        calls = np.arange(1, length + 1)
        ax.plot(calls, arr.mean(0), label=label)
        ax.fill_between(calls, arr.min(0), arr.max(0), alpha=0.15)
    ax.axvline(result["n_initial"], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("oracle calls (DFT calculations)")
    ax.set_ylabel("discoveries")
    ax.set_title(
        f"replay: {result['pool_size']} crystals, {result['n_hits']} hits "
        f"(base rate {result['base_rate']:.2f}), {result['config']['seeds']} seeds"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def embed_structures(structures: Sequence, batch_size: int = 1024) -> np.ndarray:
    """Pooled features of the frozen, MP-pretrained formation-energy backbone (no pool labels),
    with the pretrained model's own prediction appended as one more feature."""
    from policies.cgcnn import (
        CrystalGraphConvNet,
        initialise_from_checkpoint,
        load_pretrained,
    )
    from policies.graphs import build_graphs

    apply_torch_threads()
    model = CrystalGraphConvNet()
    initialise_from_checkpoint(model, load_pretrained("formation-energy-per-atom"))
    model.eval()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(structures), batch_size):
            g = build_graphs(structures[start : start + batch_size])
            pooled = model.pooled(*g.to_torch())
            chunks.append(torch.cat([pooled, model.head(pooled).unsqueeze(1)], 1).numpy())
    return np.concatenate(chunks).astype(np.float64)


def write_outputs(result: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "replay.json"
    json_path.write_text(json.dumps(result, indent=2))
    return json_path, write_plot(result, out_dir / "replay.png")
