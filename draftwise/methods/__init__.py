"""Compression methods: each a small frozen dataclass with its parameters and paper defaults."""

from draftwise.methods.adakv import AdaKV
from draftwise.methods.base import Budgeted, KVMethod, Method, PromptMethod
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
]
