"""Wall-clock time that counts GPU work: CUDA runs asynchronously, so the clock waits for it first."""

from __future__ import annotations

import platform
import time

import torch

from draftwise.models import cpu_has_native_bf16


def now() -> float:
    """``time.perf_counter()`` after every queued CUDA kernel has finished (no wait on CPU-only runs)."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def machine(device: str | torch.device = "cpu") -> str:
    """What timings were taken on, for reports: the GPU's name, or the CPU with its thread count."""
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{platform.machine()}, {torch.get_num_threads()} threads, {bf16}, torch {torch.__version__}"
