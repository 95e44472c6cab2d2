"""GGUF files de-quantized once into a transformers checkpoint, with the tokenizer."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from draftwise.models.files import cache_dir


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
