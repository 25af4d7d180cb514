"""Fine-tuning the surrogate so that it cannot get worse: replay, cross-validation, an anchor.

A campaign brings a few dozen DFT results at most. Fine-tuning on them alone forgets the
thousands of crystals the model learnt (catastrophic forgetting), and a hold-out of a fifth of
them - four crystals - decides nothing. So a fine-tune here

- **replays** a sample of the model's own training data (`replay`) beside the new results, with
  the labels on the same scale (the Materials Project formation energies of matminer's
  flla_2015 for the shipped model);
- is judged on the campaign's results by **k-fold cross-validation**: each fold is predicted
  by a model fine-tuned on the other folds (+ replay), against the deployed model's predictions
  of the same crystals;
- and on a fixed **anchor** slice of data that neither model trained on (rows the shipped
  model's own split held out), so that a fine-tune which fits the campaign by breaking the
  model elsewhere is caught.

Each head that was fine-tuned gets its own verdict; the new model is deployable only when every
head passes both tests. Nothing here touches a store: `agent.retrain` brings the data and
records the verdicts.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

import numpy as np
from pymatgen.core import Structure

from policies.graphs import subset
from policies.settings import GateSettings
from policies.surrogate import Surrogate
from policies.surrogate_training import regression_metrics

# The split the shipped surrogate was trained with (policies.splits.train_holdout, MODEL_CARD)
SHIPPED_HOLDOUT, SHIPPED_SPLIT_SEED = 0.2, 0


@dataclass
class Labelled:
    """Structures with per-head targets (NaN = no label), and where each came from."""

    structures: list[Structure]
    targets: dict[str, np.ndarray]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.structures)

    def plus(self, other: Labelled | None) -> Labelled:
        if other is None or not len(other):
            return self
        heads = list(self.targets)
        return Labelled(
            self.structures + other.structures,
            {
                h: np.concatenate(
                    [self.targets[h], other.targets.get(h, np.full(len(other), np.nan))]
                )
                for h in heads
            },
            self.ids + other.ids,
        )


@dataclass
class HeadVerdict:
    head: str
    campaign_old: dict[str, float]
    campaign_new: dict[str, float]
    anchor_old: dict[str, float] = field(default_factory=dict)
    anchor_new: dict[str, float] = field(default_factory=dict)
    passed: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_of(key: str) -> int:
    return zlib.crc32(key.encode())


@cache
def _records(source: str) -> list:
    """A data source read once per process (flla_2015: ~15 s of parsing)."""
    from generators.data import load_source

    return load_source(source)[0]


def original_slices(
    source: str, heads: Sequence[str], replay_size: int, anchor_size: int, key: str
) -> tuple[Labelled, Labelled]:
    """(replay, anchor) from a data source the surrogate learnt, split as the shipped model
    was: replay rows come from its training part (a fresh draw per `key`), the anchor is the
    first `anchor_size` rows of its hold-out part, the same slice for every fine-tune so
    that successive versions are compared on one yardstick. Rows without a label for any of
    `heads` are left out."""
    from policies.splits import train_holdout

    records = _records(source)
    labelled = [
        i
        for i, r in enumerate(records)
        if all(np.isfinite(r.properties.get(h, np.nan)) for h in heads)
    ]
    if not labelled:
        raise ValueError(f"{source} has no rows labelled with {list(heads)}")
    train, hold = train_holdout(len(records), SHIPPED_HOLDOUT, SHIPPED_SPLIT_SEED)
    ok = set(labelled)
    train = [int(i) for i in train if int(i) in ok]
    hold = [int(i) for i in hold if int(i) in ok]
    rng = np.random.default_rng(seed_of(key))
    replay_rows = rng.choice(train, size=min(replay_size, len(train)), replace=False)
    anchor_rows = hold[:anchor_size]

    def pack(rows: Sequence[int]) -> Labelled:
        return Labelled(
            [records[i].structure for i in rows],
            {h: np.array([records[i].properties[h] for i in rows], float) for h in heads},
            [records[i].source_id for i in rows],
        )

    return pack(replay_rows), pack(anchor_rows)


def kfold(n: int, k: int, key: str) -> list[np.ndarray]:
    """k (or n, when fewer) folds of a seeded permutation of range(n)."""
    order = np.random.default_rng(seed_of(key)).permutation(n)
    return [f for f in np.array_split(order, min(k, n)) if len(f)]


def _fine_tuned(model: Surrogate, data: Labelled, graphs: Any, rows: np.ndarray, epochs: int):
    new = model.copy()
    new.fine_tune(
        [data.structures[i] for i in rows],
        {h: v[rows] for h, v in data.targets.items()},
        epochs=epochs,
        graphs=subset(graphs, rows),
    )
    return new


def gated_fine_tune(
    model: Surrogate,
    campaign: Labelled,
    settings: GateSettings,
    replay: Labelled | None = None,
    anchor: Labelled | None = None,
    key: str = "",
    progress: Any = None,
) -> tuple[Surrogate, dict[str, HeadVerdict]]:
    """The model fine-tuned on all of `campaign` (+ `replay`), and a verdict per head.

    A head passes when its cross-validated campaign MAE is not worse than the deployed
    model's on the same crystals (by `min_improvement`), and its anchor MAE has not risen by
    more than `anchor_tolerance`. The deployed model may have been fine-tuned on some of these
    crystals already, which flatters it: the test errs on the side of keeping it."""
    heads = list(campaign.targets)
    n = len(campaign)
    if n < 2:
        raise ValueError(f"cross-validation needs at least 2 campaign results, got {n}")
    data = campaign.plus(replay)
    say = progress or (lambda _msg: None)
    say(f"graphs of {len(data)} crystals ({n} campaign, {len(data) - n} replay)")
    graphs = model.graphs(data.structures)
    replay_rows = np.arange(n, len(data))

    folds = kfold(n, settings.folds, key)
    oof = {h: np.full(n, np.nan) for h in heads}
    oof_sigma = {h: np.full(n, np.nan) for h in heads}
    for f, test in enumerate(folds):
        say(f"fold {f + 1}/{len(folds)}: fine-tune on {n - len(test)} + replay")
        train = np.concatenate([np.setdiff1d(np.arange(n), test), replay_rows])
        fold_model = _fine_tuned(model, data, graphs, train, settings.epochs)
        preds = fold_model.predict_graphs(subset(graphs, test), heads)
        for h in heads:
            oof[h][test], oof_sigma[h][test] = preds[h]
    say("final fine-tune on every campaign result + replay")
    new = _fine_tuned(model, data, graphs, np.arange(len(data)), settings.epochs)

    old_preds = model.predict_graphs(subset(graphs, np.arange(n)), heads)
    anchor_old = anchor_new = {}
    if anchor is not None and len(anchor):
        say(f"anchor: {len(anchor)} crystals neither model trained on")
        anchor_graphs = model.graphs(anchor.structures)
        anchor_old = model.evaluate(anchor.structures, anchor.targets, graphs=anchor_graphs)
        anchor_new = new.evaluate(anchor.structures, anchor.targets, graphs=anchor_graphs)
    verdicts = {}
    for h in heads:
        y = campaign.targets[h]
        v = HeadVerdict(
            head=h,
            campaign_old=regression_metrics(y, *old_preds[h]),
            campaign_new=regression_metrics(y, oof[h], oof_sigma[h]),
            anchor_old=dict(anchor_old.get(h, {})),
            anchor_new=dict(anchor_new.get(h, {})),
        )
        v.passed, v.reason = _judge(v, settings)
        verdicts[h] = v
    return new, verdicts


def _judge(v: HeadVerdict, s: GateSettings) -> tuple[bool, str]:
    old, new = v.campaign_old.get("mae", np.nan), v.campaign_new.get("mae", np.nan)
    if not np.isfinite(new):
        return False, "no finite cross-validated prediction"
    if np.isfinite(old) and new > old - s.min_improvement:
        return False, "campaign CV " + (
            f"not better by {s.min_improvement:g}" if s.min_improvement else "worse"
        )
    if v.anchor_old:
        a_old, a_new = v.anchor_old["mae"], v.anchor_new.get("mae", np.nan)
        if not np.isfinite(a_new) or a_new > a_old + s.anchor_tolerance:
            return False, f"anchor MAE rose by more than {s.anchor_tolerance:g}"
    return True, "passed" + ("" if v.anchor_old else " (CV only, no anchor)")
