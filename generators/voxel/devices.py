"""Where torch computes: the device and the CPU thread count.

Training, evaluation and benchmarks choose these the same way ("auto" means CUDA when torch
sees it; threads default to every core), and a requested device that is not there is refused
up front instead of failing inside the first forward pass.
"""

from __future__ import annotations

import os

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def setup_threads(threads: int | None) -> int:
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n
