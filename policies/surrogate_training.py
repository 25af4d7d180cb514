"""The training loops of the CGCNN ensemble and the metrics its gate compares.

Kept apart from `policies.surrogate` (which owns the ensemble's layout, scalers, calibration
and I/O) so that fitting, fine-tuning and the replay benchmark share one loop per kind of
model: a whole CGCNN (`train_full`) or a transfer head on frozen features (`train_head`).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from policies.cgcnn import CrystalGraphConvNet, Head
from policies.graphs import GraphBatch, subset


def train_full(
    model: CrystalGraphConvNet,
    graphs: GraphBatch,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
    validation: tuple[GraphBatch, np.ndarray] | None = None,
    keep_start: bool = False,
    sgd: bool = False,
) -> list[float]:
    """Fine-tune a whole CGCNN (Huber loss on scaled targets, AdamW, cosine decay).

    With `validation` (the member's held-out rows) the best epoch is kept; `keep_start` also
    lets the starting weights win (never worse than before, but then members can stay
    identical and the ensemble spread collapses to zero).
    """
    n = graphs.n_crystals
    if n < 2:
        return []

    def val_mae() -> float:
        model.eval()
        with torch.inference_mode():
            out = model(*validation[0].to_torch()).numpy()
        model.train()
        return float(np.abs(out - validation[1]).mean())

    use_val = validation is not None and validation[0].n_crystals >= 2
    best = None
    if use_val:
        best = (val_mae() if keep_start else np.inf, copy.deepcopy(model.state_dict()))
    optimiser = (
        torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        if sgd
        else torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    )
    steps_per_epoch = max(1, int(np.ceil(n / batch_size)))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs * steps_per_epoch)
    target = torch.as_tensor(y, dtype=torch.float32)
    losses = []
    model.train()
    for _ in range(epochs):
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:  # BatchNorm needs two crystals
                continue
            out = model(*subset(graphs, idx).to_torch())
            loss = nn.functional.smooth_l1_loss(out, target[idx], beta=1.0)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
        if best is not None:
            score = val_mae()
            if score < best[0]:
                best = (score, copy.deepcopy(model.state_dict()))
    if best is not None:
        model.load_state_dict(best[1])
    model.eval()
    return losses


def train_head(
    head: Head, features: torch.Tensor, y: np.ndarray, *, steps: int, lr: float, seed: int
) -> list[float]:
    """Transfer learning: the two dense layers on frozen pooled features, full batch."""
    torch.manual_seed(seed)
    target = torch.as_tensor(y, dtype=torch.float32)
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    losses = []
    head.train()
    for _ in range(steps):
        loss = nn.functional.smooth_l1_loss(head(features), target, beta=1.0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
    head.eval()
    return losses[:: max(1, steps // 50)]


def regression_metrics(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """Error and calibration of one property's predictions (rows without a value dropped):
    what the fine-tune gate compares between versions and the surrogate benchmark reports."""
    ok = np.isfinite(y) & np.isfinite(mean)
    y, mean, std = y[ok], mean[ok], std[ok]
    if len(y) == 0:
        return {"n": 0}
    err = np.abs(mean - y)
    denom = np.abs(y) + np.abs(mean)
    smape = np.where(denom > 0, 2 * err / np.where(denom > 0, denom, 1), 0.0)
    return {
        "n": int(len(y)),
        "mae": float(err.mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "smape_percent": float(100 * smape.mean()),
        "within_1_sigma": float((err <= std).mean()),
        "within_2_sigma": float((err <= 2 * std).mean()),
        "mean_sigma": float(std.mean()),
    }
