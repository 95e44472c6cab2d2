"""Compression methods: each a small frozen dataclass with its parameters and paper defaults."""

from dataclasses import fields

from draftwise.methods.adakv import AdaKV
from draftwise.methods.base import Budgeted, KVMethod, Method, OptionError, PromptMethod
from draftwise.methods.full import Full
from draftwise.methods.h2o import H2O
from draftwise.methods.head_tail import HeadTail
from draftwise.methods.keydiff import KeyDiff
from draftwise.methods.knorm import KNorm
from draftwise.methods.perplexity import Perplexity
from draftwise.methods.pyramidkv import PyramidKV
from draftwise.methods.random_drop import RandomDrop
from draftwise.methods.snapkv import SnapKV
from draftwise.methods.speckv import SpecKV
from draftwise.methods.speckvpc import SpecKVPC
from draftwise.methods.specpc import SpecPC
from draftwise.methods.streaming import StreamingLLM
from draftwise.methods.tova import TOVA

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (
        Full,
        SpecKV,
        SpecPC,
        SpecKVPC,
        SnapKV,
        PyramidKV,
        AdaKV,
        StreamingLLM,
        H2O,
        TOVA,
        KNorm,
        KeyDiff,
        Perplexity,
        RandomDrop,
        HeadTail,
    )
}

# SpecKV-PC's budget and window are its KV stage's (the serving budget: what the target holds).
_RENAMES: dict[type[Method], dict[str, str]] = {SpecKVPC: {"budget": "kv_budget", "window": "kv_window"}}


def build_method(name: str, **options: object) -> Method:
    """The method called ``name`` (a key of :data:`METHODS`) with ``options``; ``None`` keeps a default.

    The one place the CLI and the server turn a name and options into a method. For
    ``speckvpc``, ``budget`` and ``window`` are its KV stage's (``prompt_budget`` its SpecPC stage's).
    Raises :class:`~draftwise.methods.base.OptionError` naming the method or the first option it does
    not take, or (from the method itself) an option out of its range.
    """
    if name not in METHODS:
        raise OptionError("method", f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    cls = METHODS[name]
    renames = _RENAMES.get(cls, {})
    given = {renames.get(k, k): v for k, v in options.items() if v is not None}
    accepted = {f.name for f in fields(cls)}
    unknown = sorted(k for k in given if k not in accepted)
    if unknown:
        takes = ", ".join(sorted(accepted | set(renames))) or "none"
        raise OptionError(
            unknown[0], f"{name} takes no option {', '.join(map(repr, unknown))}; its options: {takes}"
        )
    try:
        return cls(**given)
    except OptionError as error:
        said = {new: old for old, new in renames.items() if old in options}.get(error.option)
        if said is None:
            raise
        raise OptionError(said, f"{said}: {error}") from None


__all__ = [
    "H2O",
    "AdaKV",
    "METHODS",
    "TOVA",
    "Budgeted",
    "Full",
    "HeadTail",
    "KNorm",
    "KVMethod",
    "KeyDiff",
    "Method",
    "Perplexity",
    "PromptMethod",
    "PyramidKV",
    "RandomDrop",
    "SnapKV",
    "SpecKV",
    "SpecKVPC",
    "SpecPC",
    "StreamingLLM",
    "build_method",
]
