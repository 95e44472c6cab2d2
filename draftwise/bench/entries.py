"""The columns of a comparison: methods (and named combinations, ``ALIASES``) at each budget."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from draftwise.methods import (
    H2O,
    METHODS,
    TOVA,
    AdaKV,
    Method,
    PyramidKV,
    SnapKV,
    SpecKV,
    SpecPC,
    build_method,
)

# Names for combinations: the draft lookahead over another scorer, CAOTE over another scorer.
ALIASES: dict[str, tuple[type[Method], dict]] = {
    # SpecKV that drops its whole lookahead after reading it (before accept_lookahead, its only way)
    "speckv-noaccept": (SpecKV, {"accept_lookahead": False}),
    # SpecKV with its sparse pre-fill (step 5) always (plain speckv: "auto", from 8k on CPUs) or never;
    # the paper's vertical = slash = 2048, and a lighter 1024
    "speckv-dense": (SpecKV, {"sparse_prefill": False}),
    "speckv-sparse": (SpecKV, {"sparse_prefill": True}),
    "speckv-sparse1k": (SpecKV, {"sparse_prefill": True, "vertical": 1024, "slash": 1024}),
    # SpecPC whose draft reads the prompt through the same sparse pass
    "specpc-sparse1k": (SpecPC, {"sparse_prefill": True, "vertical": 1024, "slash": 1024}),
    "ada-speckv": (AdaKV, {"lookahead": None}),
    "pyramid-speckv": (PyramidKV, {"lookahead": None}),
    "snapkv-caote": (SnapKV, {"caote": True}),
    # SnapKV as kvpress 0.5.5's SnapKVPress sets it: 64 observation queries, their attention averaged
    # (over queries and grouped heads) and smoothed by a width-5 average
    "snapkv-kvpress": (SnapKV, {"window": 64, "kernel": 5, "pool": "avg", "reduce": "mean"}),
    "h2o-caote": (H2O, {"caote": True}),
    "tova-caote": (TOVA, {"caote": True}),
}


@dataclass(frozen=True)
class Entry:
    """One column of a comparison: a label such as ``speckv@256`` and its method."""

    label: str
    method: Method


def build_entries(names: Iterable[str], budgets: Iterable[int], prompt_budgets: Iterable[int]) -> list[Entry]:
    """KV methods at each of ``budgets``, prompt methods at each of ``prompt_budgets``, SpecKV-PC at
    each KV budget with the largest prompt budget, Full once."""
    budgets, prompt_budgets = list(budgets), list(prompt_budgets)
    entries: list[Entry] = []
    for name in names:
        if name in ALIASES:
            cls, options = ALIASES[name]
        elif name in METHODS:
            cls, options = METHODS[name], {}
        else:
            known = ", ".join([*METHODS, *ALIASES])
            raise ValueError(f"unknown method {name!r}; choose from {known}")
        probe = cls(**options)
        kv_stage, prompt_stage = probe.kv_stage(), probe.prompt_stage()
        if kv_stage is None and prompt_stage is None:  # Full: nothing to budget
            entries.append(Entry(name, probe))
        elif kv_stage is not None and prompt_stage is not None:  # a cascade, over the largest prompt budget
            top = max(prompt_budgets)
            entries += [
                Entry(f"{name}@{b}", build_method(cls.name, **options, budget=b, prompt_budget=top))
                for b in budgets
            ]
        else:
            sizes = budgets if kv_stage is not None else prompt_budgets
            entries += [Entry(f"{name}@{b}", replace(probe, budget=b)) for b in sizes]
    return entries
