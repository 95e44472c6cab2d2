"""The options the command line, the server and the benchmarks share: which models, where, which method.

Each option is declared once, as a field of :class:`ModelOptions` or :class:`MethodOptions` with its
default and help; :func:`add_arguments` makes the ``argparse`` options from the fields and
:func:`from_args` reads them back, so no front end restates a flag, a default or a help string. Help
that quotes a method's default reads it from the method's dataclass.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, TypeVar

from draftwise.methods import METHODS, Method, SpecKV, build_method
from draftwise.models import DEFAULT_DRAFT, DEFAULT_TARGET, DTYPES
from draftwise.speculative import SpeculativeConfig

T = TypeVar("T")


def option(default: Any, help: str, **argparse_options: Any) -> Any:
    """A dataclass field that is also a command-line option ``--name-with-dashes``."""
    return field(default=default, metadata={"help": help, "argparse": argparse_options})


def _method_defaults(name: str) -> str:
    """``"speckv 32, specpc 64, ..."``: the default of option ``name`` in each method that has it."""
    found = {}
    for method in METHODS.values():
        for f in fields(method):
            if f.name == name and f.default is not MISSING:
                found.setdefault(f.default, []).append(method.name)
    return "; ".join(f"{value} ({', '.join(names)})" for value, names in found.items())


@dataclass(frozen=True)
class ModelOptions:
    """Which models to load, on which device, in which dtype."""

    target: str = option(DEFAULT_TARGET, "embedded name, .gguf file, directory or hub id")
    draft: str = option(
        DEFAULT_DRAFT, "as --target; 'self' for the target's first half (early exit); 'none' for no draft"
    )
    device: str = option("cpu", "cpu, cuda, cuda:1, ...")
    dtype: str = option(
        "auto",
        "weights' dtype; auto: bfloat16 where the device computes it natively, else float32 on CPU",
        choices=["auto", *DTYPES],
    )

    @property
    def draft_name(self) -> str | None:
        """``--draft``, or ``None`` for ``none`` (or empty)."""
        return None if not self.draft or self.draft.lower() == "none" else self.draft


@dataclass(frozen=True)
class MethodOptions:
    """A method and the options a user most often sets; ``None`` keeps the method's default."""

    method: str = option("speckv", "compression method", choices=list(METHODS))
    budget: int | None = option(
        None,
        "KV pairs (KV methods; speckvpc: its KV stage) or prompt tokens (prompt methods) to keep; "
        f"default: {_method_defaults('budget')}",
        type=int,
    )
    window: int | None = option(
        None, f"last tokens always kept; default: {_method_defaults('window')}", type=int
    )
    lookahead: int | None = option(
        None, f"tokens the draft writes ahead; default: {_method_defaults('lookahead')}", type=int
    )
    accept_lookahead: bool | None = option(
        None,
        "methods with a lookahead: the lookahead tokens the target verifies start the answer "
        "(default: on; --no-accept-lookahead drops them all)",
        action=argparse.BooleanOptionalAction,
    )
    prompt_budget: int | None = option(
        None,
        f"speckvpc: prompt tokens kept by its SpecPC stage (default {_method_defaults('prompt_budget')})",
        type=int,
    )
    sparse_prefill: bool | None = option(
        None,
        "speckv: the target's pre-fill, specpc: the draft's, sparse (vertical-slash; approximate); "
        "default: speckv where measured faster (CPUs from 8,192 tokens), specpc never",
        action=argparse.BooleanOptionalAction,
    )
    sparse_kernel: str | None = option(
        None,
        "sparse pre-fill: 'flex' (one fused FlexAttention kernel, compiled), 'reference' "
        f"(plain PyTorch), or 'auto' (flex where it compiles); default {SpecKV.sparse_kernel}",
        choices=["auto", "flex", "reference"],
    )
    vertical: int | None = option(
        None,
        f"sparse pre-fill: keys every query sees (default {SpecKV.vertical})",
        type=int,
    )
    slash: int | None = option(
        None,
        f"sparse pre-fill: local band of recent keys (default {SpecKV.slash})",
        type=int,
    )

    def options(self) -> dict[str, Any]:
        """The options set (not ``None``), without the method's name."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "method"}
        return {name: value for name, value in values.items() if value is not None}

    def build(self) -> Method:
        """The method with these options (:func:`draftwise.methods.build_method`)."""
        return build_method(self.method, **self.options())


@dataclass(frozen=True)
class SpeculativeOptions:
    """Speculative decoding with the draft (:class:`~draftwise.speculative.SpeculativeConfig`)."""

    speculative: int = option(
        0,
        "speculative decoding: the draft proposes up to K tokens, the target verifies them in one "
        "forward (same answer; 0: off)",
        type=int,
        metavar="K",
    )
    speculative_entropy: float | None = option(
        None,
        "speculative decoding: stop drafting early when the draft's entropy bounds acceptance below "
        "this (AdaEDL; e.g. 0.4)",
        type=float,
    )
    speculative_proposer: str = option(
        "draft",
        "speculative decoding: who proposes: the draft model, or a lookup of the answer's last tokens in "
        "the prompt (no model runs)",
        choices=["draft", "lookup"],
    )
    draft_cache_budget: int | None = option(
        None,
        "speculative decoding: the draft keeps this many KV pairs of the prompt (StreamingLLM); default: all",
        type=int,
    )

    def build(self) -> SpeculativeConfig | None:
        """The config, or ``None`` when speculative decoding is off."""
        if not self.speculative:
            if self.speculative_entropy is not None or self.draft_cache_budget is not None:
                raise ValueError("--speculative-entropy and --draft-cache-budget need --speculative K")
            if self.speculative_proposer != "draft":
                raise ValueError("--speculative-proposer needs --speculative K")
            return None
        draft_method = None
        if self.draft_cache_budget is not None:
            draft_method = build_method("streamingllm", budget=self.draft_cache_budget)
        return SpeculativeConfig(
            self.speculative,
            self.speculative_entropy,
            draft_method=draft_method,
            proposer=self.speculative_proposer,
        )


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    only: tuple[str, ...] | None = None,
    defaults: dict[str, Any] | None = None,
    help: dict[str, str] | None = None,
) -> argparse.ArgumentParser:
    """Add the fields of ``cls`` (or ``only`` these) to ``parser`` as ``--options``; ``defaults`` and
    ``help`` replace a field's for this parser (e.g. a command whose draft cannot be ``self``)."""
    for f in _fields(cls, only):
        kwargs = dict(f.metadata["argparse"])
        kwargs["default"] = (defaults or {}).get(f.name, f.default)
        kwargs["help"] = (help or {}).get(f.name, f.metadata["help"])
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    return parser


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """An instance of ``cls`` from the parsed ``args`` (fields a parser did not add keep defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def _fields(cls: type, only: tuple[str, ...] | None) -> list[Field]:
    chosen = list(fields(cls))
    if only is None:
        return chosen
    unknown = set(only) - {f.name for f in chosen}
    if unknown:
        raise ValueError(f"{cls.__name__} has no option {', '.join(sorted(unknown))}")
    return [f for f in chosen if f.name in only]
