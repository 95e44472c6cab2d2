"""Which dtype weights load in: ``auto`` is bfloat16 where the device computes it natively, else
float32 on CPU (float16 on older GPUs)."""

from __future__ import annotations

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 with AVX512-BF16 or AMX); elsewhere torch
    emulates it through float32."""
    cpu = torch.cpu
    return bool(
        getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    )


def default_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """The fastest safe dtype on ``device``: bfloat16 where the hardware computes it natively (CUDA
    GPUs with bf16; CPUs per :func:`cpu_has_native_bf16`), float16 on older GPUs, float32 on other
    CPUs, where emulated bfloat16 is several times slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


def as_dtype(dtype: torch.dtype | str | None, device: str | torch.device = "cpu") -> torch.dtype:
    """``dtype`` as a torch dtype; ``None`` or ``"auto"`` gives :func:`default_dtype`."""
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32"}
    name = str(dtype).removeprefix("torch.")
    name = aliases.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; choose from auto, {', '.join(DTYPES)}")
    return DTYPES[name]
