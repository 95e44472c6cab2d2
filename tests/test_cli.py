"""The command line, on tiny models saved to disk."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_model

from draftwise.cli import main
from draftwise.methods import SpecKV, SpecKVPC, build_method
from draftwise.methods.base import OptionError


@pytest.fixture
def model_dirs(tmp_path, tokenizer, monkeypatch):
    dirs = {}
    for name, seed, layers in (("target", 0, 3), ("draft", 1, 2)):
        tiny_model("qwen2", seed=seed, layers=layers).save_pretrained(tmp_path / name)
        dirs[name] = str(tmp_path / name)
    # AutoTokenizer would pick Qwen2's BPE class from the config; the tiny models use a word-level one.
    monkeypatch.setattr("draftwise.models.AutoTokenizer.from_pretrained", lambda *a, **k: tokenizer)
    return dirs


def test_generate_prints_answer_and_stats_as_json(model_dirs, tmp_path, capsys):
    context = tmp_path / "context.txt"
    context.write_text(" ".join(f"w{6 + i % 80}" for i in range(200)))
    code = main(
        [
            "generate",
            "--target", model_dirs["target"],
            "--draft", model_dirs["draft"],
            "--method", "speckv",
            "--budget", "48",
            "--window", "8",
            "--context-file", str(context),
            "--question", "w9 w10",
            "--max-new-tokens", "5",
            "--json",
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stats"]["kv_pairs_kept"] == 48
    assert result["stats"]["prompt_tokens"] > 200
    assert result["stats"]["new_tokens"] <= 5


def test_generate_decodes_speculatively_with_the_same_answer(model_dirs, tmp_path, capsys):
    context = tmp_path / "context.txt"
    context.write_text(" ".join(f"w{6 + i % 80}" for i in range(100)))
    argv = ["generate", "--target", model_dirs["target"], "--draft", model_dirs["draft"], "--method", "full"]
    argv += ["--context-file", str(context), "--question", "w9", "--max-new-tokens", "8", "--json"]
    assert main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*argv, "--speculative", "3", "--draft-cache-budget", "32"]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["text"] == plain["text"] and fast["stats"]["speculative_drafted"] > 0
    assert main([*argv, "--speculative-entropy", "0.5"]) == 2
    assert "need --speculative K" in capsys.readouterr().err


def test_bad_budget_is_a_clear_error(model_dirs, capsys):
    code = main(["generate", "--target", model_dirs["target"], "--budget", "-3", "--question", "w7"])
    assert code == 2
    assert "budget must be a positive integer" in capsys.readouterr().err


def test_build_method_defaults_and_overrides():
    assert build_method("speckv", budget=128) == SpecKV(budget=128)
    assert build_method("speckvpc", budget=128, prompt_budget=512) == SpecKVPC(
        kv_budget=128, prompt_budget=512
    )
    assert build_method("speckv", budget=128, sparse_prefill=True, vertical=512) == SpecKV(
        budget=128, sparse_prefill=True, vertical=512
    )
    with pytest.raises(ValueError, match="unknown method"):
        build_method("magic")
    with pytest.raises(ValueError, match="snapkv takes no option 'sparse_prefill'"):
        build_method("snapkv", sparse_prefill=True)
    with pytest.raises(OptionError, match="its options: .*kv_budget") as caught:
        build_method("speckvpc", kernel=3)
    assert caught.value.option == "kernel"
    with pytest.raises(OptionError, match="^budget: kv_budget .* at least the window") as caught:
        build_method("speckvpc", budget=8)
    assert caught.value.option == "budget", "the option as the caller named it"


def test_false_is_an_option_not_a_default():
    """Only ``None`` keeps a method's default: ``False`` turns off an option that is on by default."""
    assert build_method("specpc", weighted_query=False).weighted_query is False
    assert build_method("specpc", weighted_query=None).weighted_query is True


def test_compress_reads_stdin_and_writes_the_kept_text(model_dirs, monkeypatch, capsys):
    import io

    words = " ".join(f"w{6 + i % 80}" for i in range(300))
    monkeypatch.setattr("sys.stdin", io.StringIO(words))
    code = main(
        ["compress", "--draft", model_dirs["draft"], "--budget", "50", "--window", "8", "--question", "w9"]
    )
    assert code == 0
    captured = capsys.readouterr()
    kept = captured.out.split()
    assert len(kept) == 50 and kept[-1] == "w9"
    assert "kept 50 of 301 tokens" in captured.err
    assert all(word in words.split() + ["w9"] for word in kept)


def test_dtype_option_loads_both_models_in_that_dtype(model_dirs, monkeypatch):
    from draftwise import commands

    loaded = {}
    real_load = commands._load

    def spy(args):
        target, draft, tokenizer, draft_tokenizer = real_load(args)
        loaded.update(target=target.dtype, draft=draft.dtype)
        return target, draft, tokenizer, draft_tokenizer

    monkeypatch.setattr(commands, "_load", spy)
    argv = ["generate", "--target", model_dirs["target"], "--draft", model_dirs["draft"], "--question", "w7"]
    argv += ["--max-new-tokens", "2", "--json"]
    assert main([*argv, "--dtype", "bfloat16"]) == 0
    assert loaded == {"target": torch.bfloat16, "draft": torch.bfloat16}
    assert main([*argv, "--dtype", "float32"]) == 0
    assert loaded == {"target": torch.float32, "draft": torch.float32}


def test_auto_dtype_is_bfloat16_only_where_the_cpu_computes_it(monkeypatch):
    from draftwise.models import as_dtype, default_dtype

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert default_dtype("cpu") == torch.float32
    assert as_dtype("auto") == as_dtype(None) == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert default_dtype("cpu") == torch.bfloat16
    assert as_dtype("bf16") == as_dtype("torch.bfloat16") == torch.bfloat16
    assert as_dtype(torch.float16) == as_dtype("half") == torch.float16
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        as_dtype("int8")


def test_demo_prints_full_and_speckv_side_by_side(model_dirs, capsys):
    argv = ["demo", "--target", model_dirs["target"], "--draft", model_dirs["draft"], "--tokens", "120"]
    code = main(argv + ["--budget", "48", "--max-new-tokens", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Needle-in-a-haystack" in out
    assert "full" in out and "speckv (budget 48)" in out and "needle found" in out


def test_an_untrained_model_has_the_architecture_and_random_weights(model_dirs):
    from draftwise.models import load_model, load_untrained

    trained, _ = load_model(model_dirs["target"], dtype="float32")
    model, tokenizer = load_untrained(model_dirs["target"], dtype="bfloat16", seed=3)
    assert not model.training and model.dtype == torch.bfloat16
    assert model.config.to_dict() | {"dtype": None} == trained.config.to_dict() | {"dtype": None}
    shapes = {name: p.shape for name, p in trained.named_parameters()}
    assert {name: p.shape for name, p in model.named_parameters()} == shapes
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.get_parameter(weight).float(), trained.get_parameter(weight))
    again, _ = load_untrained(model_dirs["target"], dtype="bfloat16", seed=3)
    assert torch.equal(again.get_parameter(weight), model.get_parameter(weight))
