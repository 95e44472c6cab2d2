"""Compression methods: each a small frozen dataclass with its parameters and paper defaults."""

from draftwise.methods.base import Budgeted, Method
from draftwise.methods.full import Full
from draftwise.methods.snapkv import SnapKV
from draftwise.methods.speckv import SpecKV
from draftwise.methods.speckvpc import SpecKVPC
from draftwise.methods.specpc import SpecPC

METHODS: dict[str, type[Method]] = {m.name: m for m in (Full, SnapKV, SpecKV, SpecPC, SpecKVPC)}

__all__ = ["METHODS", "Budgeted", "Full", "Method", "SnapKV", "SpecKV", "SpecKVPC", "SpecPC"]
