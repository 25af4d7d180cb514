"""Acquisition policies: which candidates get the few DFT slots.

One interface: `score(candidates, predictions, best=None) -> scores` (higher = more wanted) and
`select(candidates, predictions, batch_size, best=None) -> indices`. Predictions are the
surrogate's `{property: (mean, std)}` (a `Predictions` adds ensemble members for Thompson
sampling and embeddings for diversity). The objective turns properties into one utility,
higher is better, so every policy works for minimising formation energy, maximising something,
or hitting a window such as band gap 1.0-2.0 eV. `make_policy(name, **params)` builds any of them
from a config file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.stats import norm

PredictionMap = Mapping[str, tuple[np.ndarray, np.ndarray]]


@dataclass
class Objective:
    """What "better" means. `constraints` maps property -> (low, high); None = unbounded."""

    property: str = "formation_energy_per_atom"
    goal: Literal["minimize", "maximize", "window"] = "minimize"
    window: tuple[float, float] | None = None
    constraints: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.goal not in {"minimize", "maximize", "window"}:
            raise ValueError(f"goal must be minimize, maximize or window, not {self.goal!r}")
        if self.goal == "window":
            if self.window is None or len(self.window) != 2 or self.window[0] > self.window[1]:
                raise ValueError("goal 'window' needs window=(low, high) with low <= high")
            self.window = (float(self.window[0]), float(self.window[1]))

    def utility(self, values: np.ndarray) -> np.ndarray:
        """Higher is better; for a window, minus the distance to it (0 inside)."""
        values = np.asarray(values, dtype=float)
        if self.goal == "minimize":
            return -values
        if self.goal == "maximize":
            return values
        low, high = self.window
        return -np.maximum(np.maximum(low - values, values - high), 0.0)

    def moments(self, predictions: PredictionMap) -> tuple[np.ndarray, np.ndarray]:
        mean, std = predictions[self.property]
        return np.asarray(mean, float), np.nan_to_num(np.asarray(std, float))

    def optimistic(self, predictions: PredictionMap, kappa: float) -> np.ndarray:
        """Best utility within mean +- kappa*std (UCB; LCB on a minimised property)."""
        mean, std = self.moments(predictions)
        if self.goal == "window":
            low, high = self.window
            lo, hi = mean - kappa * std, mean + kappa * std
            return -np.maximum(np.maximum(low - hi, lo - high), 0.0)
        return self.utility(mean) + kappa * std

    def feasible(self, predictions: PredictionMap) -> np.ndarray:
        n = len(self.moments(predictions)[0])
        ok = np.ones(n, dtype=bool)
        for prop, (low, high) in self.constraints.items():
            mean = np.asarray(predictions[prop][0], float)
            ok &= np.isfinite(mean)
            if low is not None:
                ok &= mean >= low
            if high is not None:
                ok &= mean <= high
        return ok


def _as_objective(objective: Objective | Mapping[str, Any] | None) -> Objective:
    if objective is None:
        return Objective()
    if isinstance(objective, Objective):
        return objective
    data = dict(objective)
    if "constraints" in data:
        data["constraints"] = {k: tuple(v) for k, v in data["constraints"].items()}
    if data.get("window") is not None:
        data["window"] = tuple(data["window"])
    return Objective(**data)


class Policy:
    """Base: top-k of `score` among feasible candidates (constraints on predicted means)."""

    name = "policy"

    def __init__(self, objective: Objective | Mapping[str, Any] | None = None, seed: int = 0):
        self.objective = _as_objective(objective)
        self.rng = np.random.default_rng(seed)

    def raw_score(self, predictions: PredictionMap, best: float | None) -> np.ndarray:
        raise NotImplementedError

    def score(
        self,
        candidates: Sequence[Any] | None,
        predictions: PredictionMap,
        best: float | None = None,
    ) -> np.ndarray:
        """Scores (higher = pick first); infeasible or unpredictable candidates get -inf.
        `best` is the best *measured* objective value so far, in property units."""
        scores = np.asarray(self.raw_score(predictions, best), dtype=float).copy()
        scores[~self.objective.feasible(predictions)] = -np.inf
        scores[~np.isfinite(scores)] = -np.inf
        if candidates is not None and len(candidates) != len(scores):
            raise ValueError(f"{len(candidates)} candidates but {len(scores)} predictions")
        return scores

    def select(
        self,
        candidates: Sequence[Any] | None,
        predictions: PredictionMap,
        batch_size: int,
        best: float | None = None,
    ) -> list[int]:
        scores = self.score(candidates, predictions, best)
        order = np.argsort(-scores, kind="stable")
        return [int(i) for i in order[:batch_size] if np.isfinite(scores[i])]


class RandomPolicy(Policy):
    """Uniform random picks among feasible candidates: the baseline every policy must beat."""

    name = "random"

    def raw_score(self, predictions, best):
        return self.rng.random(len(self.objective.moments(predictions)[0]))


class GreedyPolicy(Policy):
    """Best predicted objective (pure exploitation)."""

    name = "greedy"

    def raw_score(self, predictions, best):
        return self.objective.utility(self.objective.moments(predictions)[0])


class UCBPolicy(Policy):
    """Upper confidence bound of the utility: mean + kappa * std (LCB on a minimised property)."""

    name = "ucb"

    def __init__(self, kappa: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kappa = float(kappa)

    def raw_score(self, predictions, best):
        return self.objective.optimistic(predictions, self.kappa)


class ExpectedImprovementPolicy(Policy):
    """Expected improvement over the best DFT value so far (Gaussian predictive).

    For a window goal it is the probability of landing in the window: there is no "better
    than best" once inside. Without `best`, the best predicted mean stands in.
    """

    name = "ei"

    def __init__(self, xi: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.xi = float(xi)

    def raw_score(self, predictions, best):
        mean, std = self.objective.moments(predictions)
        std = np.maximum(std, 1e-9)
        if self.objective.goal == "window":
            low, high = self.objective.window
            return norm.cdf((high - mean) / std) - norm.cdf((low - mean) / std)
        mu = self.objective.utility(mean)
        incumbent = (
            float(self.objective.utility(np.array([best]))[0])
            if best is not None
            else float(np.nanmax(mu))
        )
        improvement = mu - incumbent - self.xi
        z = improvement / std
        return improvement * norm.cdf(z) + std * norm.pdf(z)


class ThompsonPolicy(Policy):
    """Thompson sampling: each batch slot draws one ensemble member (or a Gaussian sample when
    members are unavailable) and takes that draw's best unpicked candidate."""

    name = "thompson"

    def _draw(self, predictions) -> np.ndarray:
        members = getattr(predictions, "members", {}).get(self.objective.property)
        if members is not None and len(members) > 1:
            return np.asarray(members[self.rng.integers(len(members))], float)
        mean, std = self.objective.moments(predictions)
        return mean + std * self.rng.standard_normal(len(mean))

    def raw_score(self, predictions, best):
        return self.objective.utility(self._draw(predictions))

    def select(self, candidates, predictions, batch_size, best=None):
        feasible = self.objective.feasible(predictions)
        picked: list[int] = []
        taken = ~feasible
        for _ in range(batch_size):
            scores = self.objective.utility(self._draw(predictions))
            scores = np.where(taken | ~np.isfinite(scores), -np.inf, scores)
            i = int(np.argmax(scores))
            if not np.isfinite(scores[i]):
                break
            picked.append(i)
            taken[i] = True
        return picked


class MaxUncertaintyPolicy(Policy):
    """Largest ensemble spread of the objective property (pure exploration)."""

    name = "max_uncertainty"

    def raw_score(self, predictions, best):
        return self.objective.moments(predictions)[1]


class DiversePolicy(Policy):
    """Diversity-aware batch around any policy: take the inner policy's top
    `pool_factor * batch_size`, then greedy k-centre in an embedding (default: the CGCNN pooled
    features carried by `Predictions.embeddings`), starting from the inner policy's best."""

    name = "diverse"

    def __init__(self, inner: Policy, pool_factor: float = 5.0, **kwargs: Any) -> None:
        super().__init__(objective=inner.objective)
        self.inner, self.pool_factor = inner, float(pool_factor)

    def score(self, candidates, predictions, best=None):
        return self.inner.score(candidates, predictions, best)

    def select(self, candidates, predictions, batch_size, best=None, embeddings=None):
        scores = self.score(candidates, predictions, best)
        embeddings = (
            embeddings if embeddings is not None else getattr(predictions, "embeddings", None)
        )
        if embeddings is None:
            raise ValueError(
                "diverse selection needs embeddings: predict with embeddings=True or pass them"
            )
        x = np.asarray(embeddings, float)
        x = (x - x.mean(0)) / (x.std(0) + 1e-9)
        order = [i for i in np.argsort(-scores, kind="stable") if np.isfinite(scores[i])]
        pool = np.asarray(order[: max(batch_size, int(np.ceil(self.pool_factor * batch_size)))])
        if len(pool) == 0:
            return []
        picked = [int(pool[0])]
        dist = np.linalg.norm(x[pool] - x[pool[0]], axis=1)
        while len(picked) < min(batch_size, len(pool)):
            j = int(np.argmax(dist))
            picked.append(int(pool[j]))
            dist = np.minimum(dist, np.linalg.norm(x[pool] - x[pool[j]], axis=1))
        return picked


REGISTRY: dict[str, type[Policy]] = {
    "random": RandomPolicy,
    "greedy": GreedyPolicy,
    "ucb": UCBPolicy,
    "lcb": UCBPolicy,
    "ei": ExpectedImprovementPolicy,
    "expected_improvement": ExpectedImprovementPolicy,
    "thompson": ThompsonPolicy,
    "max_uncertainty": MaxUncertaintyPolicy,
}


def make_policy(name: str, **params: Any) -> Policy:
    """Build a policy by name, e.g. make_policy('ucb', kappa=2, objective={'goal': 'minimize'})
    or make_policy('diverse', inner='ucb', inner_params={'kappa': 1}, pool_factor=5)."""
    key = name.lower().replace("-", "_")
    if key == "diverse":
        inner = params.pop("inner", "greedy")
        inner_params = dict(params.pop("inner_params", {}))
        for shared in ("objective", "seed"):
            if shared in params:
                inner_params.setdefault(shared, params.pop(shared))
        inner_policy = inner if isinstance(inner, Policy) else make_policy(inner, **inner_params)
        return DiversePolicy(inner_policy, **params)
    if key not in REGISTRY:
        raise ValueError(f"unknown policy {name!r}; known: {sorted([*REGISTRY, 'diverse'])}")
    return REGISTRY[key](**params)
