"""Each policy's selection on hand-made predictions."""

from __future__ import annotations

import numpy as np
import pytest

from policies.acquisition import (
    DiversePolicy,
    GreedyPolicy,
    Objective,
    make_policy,
)
from policies.surrogate import Predictions

P = "formation_energy_per_atom"


def preds(mean, std, **extra) -> Predictions:
    return Predictions({P: (np.asarray(mean, float), np.asarray(std, float))}, **extra)


MEAN = [0.0, -1.0, -0.5, 0.5]
STD = [0.1, 0.1, 1.0, 0.1]


def test_greedy_minimises_predicted_mean() -> None:
    assert make_policy("greedy").select(None, preds(MEAN, STD), 2) == [1, 2]


def test_ucb_prefers_uncertain_when_kappa_large() -> None:
    assert make_policy("ucb", kappa=2.0).select(None, preds(MEAN, STD), 2) == [2, 1]
    assert make_policy("lcb", kappa=0.0).select(None, preds(MEAN, STD), 2) == [1, 2]


def test_expected_improvement_over_best_measured() -> None:
    ei = make_policy("ei")
    scores = ei.score(None, preds(MEAN, STD), best=-1.2)
    assert int(np.argmax(scores)) == 2  # only the wide prediction can beat -1.2 by much
    assert ei.select(None, preds(MEAN, STD), 1, best=0.5) == [1]  # easy target: exploit


def test_max_uncertainty_and_random() -> None:
    assert make_policy("max_uncertainty").select(None, preds(MEAN, STD), 1) == [2]
    a = make_policy("random", seed=3).select(None, preds(MEAN, STD), 3)
    b = make_policy("random", seed=3).select(None, preds(MEAN, STD), 3)
    assert a == b and len(set(a)) == 3


def test_thompson_uses_ensemble_members() -> None:
    members = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])  # candidate 0 always best
    p = preds(members.mean(0), members.std(0), members={P: members})
    picks = make_policy("thompson", seed=1).select(None, p, 3)
    assert picks == [0, 1, 2]  # each slot takes the best unpicked of its draw


def test_window_objective_and_constraints() -> None:
    gap = {"band_gap": (np.array([0.5, 1.5, 3.0, 1.2]), np.array([0.1, 0.1, 0.1, 0.1]))}
    gap[P] = (np.array([-1.0, -1.0, -1.0, 0.4]), np.zeros(4))
    objective = {"property": "band_gap", "goal": "window", "window": [1.0, 2.0]}
    assert make_policy("greedy", objective=objective).select(None, gap, 2)[0] in (1, 3)
    constrained = {**objective, "constraints": {P: [None, 0.0]}}  # stable only
    assert make_policy("greedy", objective=constrained).select(None, gap, 4) == [1, 0, 2]
    prob = make_policy("ei", objective=objective).score(None, gap)
    assert prob[1] > 0.99 and prob[0] < 0.01  # probability of landing in the window


def test_diverse_batch_spans_clusters() -> None:
    mean = [-1.0, -0.99, -0.98, -0.5]
    emb = np.array([[0.0, 0.0], [0.01, 0.0], [0.0, 0.01], [5.0, 5.0]])
    p = preds(mean, [0.1] * 4, embeddings=emb)
    assert GreedyPolicy().select(None, p, 2) == [0, 1]
    diverse = make_policy("diverse", inner="greedy", pool_factor=2)
    assert isinstance(diverse, DiversePolicy)
    assert diverse.select(None, p, 2) == [0, 3]
    with pytest.raises(ValueError, match="embeddings"):
        diverse.select(None, preds(mean, [0.1] * 4), 2)


def test_registry_errors() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("bogus")
    with pytest.raises(ValueError, match="window"):
        Objective(goal="window")
