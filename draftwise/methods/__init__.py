"""Compression methods: each a small frozen dataclass with its parameters and paper defaults."""

from draftwise.methods.base import Budgeted, KVMethod, Method
from draftwise.methods.full import Full
from draftwise.methods.keydiff import KeyDiff
from draftwise.methods.knorm import KNorm
from draftwise.methods.snapkv import SnapKV
from draftwise.methods.speckv import SpecKV
from draftwise.methods.speckvpc import SpecKVPC
from draftwise.methods.specpc import SpecPC
from draftwise.methods.streaming import StreamingLLM

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (Full, SpecKV, SpecPC, SpecKVPC, SnapKV, StreamingLLM, KNorm, KeyDiff)
}

__all__ = [
    "METHODS",
    "Budgeted",
    "Full",
    "KNorm",
    "KVMethod",
    "KeyDiff",
    "Method",
    "SnapKV",
    "SpecKV",
    "SpecKVPC",
    "SpecPC",
    "StreamingLLM",
]
