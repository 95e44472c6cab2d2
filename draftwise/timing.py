"""Wall-clock time that counts GPU work: CUDA runs asynchronously, so the clock waits for it first."""

from __future__ import annotations

import time

import torch


def now() -> float:
    """``time.perf_counter()`` after every queued CUDA kernel has finished (no wait on CPU-only runs)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()
