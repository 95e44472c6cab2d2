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
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        bf16 += " (AMX)"  # matrix tiles: CPUs with and without them time bf16 work very differently
    threads = torch.get_num_threads()
    return f"{_cpu_name()}, {platform.machine()}, {threads} threads, {bf16}, torch {torch.__version__}"


def _cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
