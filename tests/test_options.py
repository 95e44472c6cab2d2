"""draftwise.options: one declaration of each shared option, read the same way by every front end."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from draftwise.cli import parser as cli_parser
from draftwise.methods import SpecKV, SpecKVPC, SpecPC, build_method
from draftwise.methods.base import OptionError
from draftwise.models import DEFAULT_DRAFT, DEFAULT_TARGET
from draftwise.options import MethodOptions, ModelOptions, add_arguments, from_args
from draftwise.serve import add_serve_arguments


def _parse(cls, argv, **kwargs):
    return from_args(cls, add_arguments(argparse.ArgumentParser(), cls, **kwargs).parse_args(argv))


def test_every_field_becomes_a_dashed_option_with_its_default():
    assert _parse(ModelOptions, []) == ModelOptions(DEFAULT_TARGET, DEFAULT_DRAFT, "cpu", "auto")
    parsed = _parse(MethodOptions, ["--method", "speckvpc", "--prompt-budget", "512", "--sparse-prefill"])
    assert parsed == MethodOptions(method="speckvpc", prompt_budget=512, sparse_prefill=True)
    assert parsed.options() == {"prompt_budget": 512, "sparse_prefill": True}


def test_the_sparse_prefill_can_be_turned_off_or_left_to_the_method():
    """SpecKV's default is "auto": ``--no-sparse-prefill`` makes it dense, no flag keeps the default."""
    assert _parse(MethodOptions, ["--no-sparse-prefill"]).build().sparse_prefill is False
    assert _parse(MethodOptions, []).build().sparse_prefill == "auto"
    assert _parse(MethodOptions, ["--method", "specpc", "--sparse-prefill"]).build().sparse_prefill is True


def test_choices_are_checked_by_the_parser():
    with pytest.raises(SystemExit):
        _parse(ModelOptions, ["--dtype", "int3"])
    with pytest.raises(SystemExit):
        _parse(MethodOptions, ["--method", "nope"])


def test_build_is_build_method_with_the_options_set():
    built = MethodOptions(method="speckvpc", budget=128, window=16).build()
    assert built == build_method("speckvpc", budget=128, window=16)
    assert built == SpecKVPC(kv_budget=128, kv_window=16)
    assert MethodOptions(method="specpc").build() == SpecPC()
    with pytest.raises(OptionError, match="window"):
        MethodOptions(method="snapkv", budget=8, window=16).build()


def test_help_quotes_the_methods_own_defaults():
    text = add_arguments(argparse.ArgumentParser(), MethodOptions).format_help()
    assert f"default {SpecKV.vertical}" in text and f"default {SpecKV.slash}" in text
    assert f"{SpecPC.window} (" in text and f"{SpecKV.window} (" in text  # window defaults by method


def test_only_defaults_and_help_change_one_parser():
    parser = add_arguments(
        argparse.ArgumentParser(),
        MethodOptions,
        only=("budget",),
        defaults={"budget": 7},
        help={"budget": "seven"},
    )
    assert parser.parse_args([]).budget == 7 and "seven" in parser.format_help()
    assert not hasattr(parser.parse_args([]), "window")
    with pytest.raises(ValueError, match="no option colour"):
        add_arguments(argparse.ArgumentParser(), MethodOptions, only=("colour",))


def test_draft_none_means_no_draft():
    assert ModelOptions(draft="none").draft_name is None
    assert ModelOptions(draft="None").draft_name is None
    assert ModelOptions(draft="").draft_name is None
    assert ModelOptions(draft="x.gguf").draft_name == "x.gguf"


def _options_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings}


def _subparser(name: str) -> argparse.ArgumentParser:
    root = cli_parser()
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_the_cli_and_the_server_declare_the_same_model_and_method_options():
    generate = _options_of(_subparser("generate"))
    serve = _options_of(add_serve_arguments(argparse.ArgumentParser()))
    for cls in (ModelOptions, MethodOptions):
        for field in fields(cls):
            name = field.name
            assert name in generate and name in serve, name
            assert generate[name].type == serve[name].type
            assert generate[name].choices == serve[name].choices
    assert serve["method"].default is None  # the server's default depends on --upstream
    assert generate["method"].default == "speckv"


def test_compress_builds_specpc_with_its_own_defaults():
    args = cli_parser().parse_args(["compress", "--window", "8"])
    assert from_args(MethodOptions, args).build() == SpecPC(window=8)
    assert "--draft" in _subparser("compress").format_help()
    assert "--target" not in _subparser("compress").format_help()
