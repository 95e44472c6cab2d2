"""The RULER harness: entries, resumable JSONL records, summary tables and plots."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_config, tiny_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from draftwise.bench.entries import build_entries
from draftwise.bench.harness import run_ruler
from draftwise.bench.plot import plot_results, retained_by_length
from draftwise.bench.records import read_records
from draftwise.bench.summary import summarize, summary_markdown
from draftwise.cli import main
from draftwise.methods import AdaKV, Full, SnapKV, SpecKVPC, SpecPC
from draftwise.models import resolve
from draftwise.timing import machine


@pytest.fixture(scope="module")
def qwen_tokenizer():
    return AutoTokenizer.from_pretrained(resolve("qwen2.5-coder-0.5b-instruct"))


def tiny_qwen(tokenizer, seed: int, layers: int):
    torch.manual_seed(seed)
    config = tiny_config("qwen2", layers=layers, vocab=len(tokenizer))
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def test_build_entries():
    entries = build_entries(["full", "snapkv", "specpc", "speckvpc", "ada-speckv"], [64, 128], [256, 512])
    labels = [e.label for e in entries]
    assert labels == [
        "full",
        "snapkv@64",
        "snapkv@128",
        "specpc@256",
        "specpc@512",
        "speckvpc@64",
        "speckvpc@128",
        "ada-speckv@64",
        "ada-speckv@128",
    ]
    methods = {e.label: e.method for e in entries}
    assert methods["full"] == Full() and methods["snapkv@128"] == SnapKV(budget=128)
    assert methods["specpc@512"] == SpecPC(budget=512)
    assert methods["speckvpc@64"] == SpecKVPC(kv_budget=64, prompt_budget=512)
    assert methods["ada-speckv@64"] == AdaKV(budget=64, lookahead=None)
    (like_kvpress,) = build_entries(["snapkv-kvpress"], [256], [])
    assert like_kvpress.method == SnapKV(budget=256, window=64, kernel=5, pool="avg", reduce="mean")
    with pytest.raises(ValueError, match="unknown method"):
        build_entries(["magic"], [64], [256])


def test_run_resumes_where_it_stopped_and_summarizes(qwen_tokenizer, tmp_path):
    target, draft = tiny_qwen(qwen_tokenizer, 0, 2), tiny_qwen(qwen_tokenizer, 1, 1)
    entries = build_entries(["full", "snapkv", "speckv", "specpc"], [64], [256])
    out = tmp_path / "results.jsonl"
    kwargs = dict(
        tasks=["niah_single_1"], lengths=[1024], samples=2, out=out, max_new_tokens=4, progress=False
    )

    run = run_ruler(target, draft, qwen_tokenizer, entries, **kwargs)
    first = [next(run) for _ in range(3)]
    run.close()  # killed after three answers
    with out.open("a") as handle:
        handle.write('{"task": "niah_single_1", "len')  # and a torn line
    assert len(read_records(out)) == 3

    rest = list(run_ruler(target, draft, qwen_tokenizer, entries, **kwargs))
    assert len(rest) == 2 * len(entries) - 3
    records = read_records(out)
    keys = [(r["index"], r["label"]) for r in records]
    assert len(keys) == len(set(keys)) == 2 * len(entries)
    assert {(r["index"], r["label"]) for r in first}.isdisjoint((r["index"], r["label"]) for r in rest)
    for r in records:
        assert 0 <= r["score"] <= 1 and r["new_tokens"] <= 4
        assert (r["dtype"], r["device"]) == (str(target.dtype).removeprefix("torch."), "cpu")
        assert r["machine"] == machine("cpu")
        if r["label"] == "snapkv@64":
            assert r["kv_pairs_kept"] == 64

    summary = summarize(records)
    assert summary["labels"][0] == "full" and set(summary["labels"]) == {e.label for e in entries}
    assert summary["cost"]["full"]["same_as_full"] == 1.0
    full = {r["index"]: r["prediction"] for r in records if r["label"] == "full"}
    snap = [r["prediction"] == full[r["index"]] for r in records if r["label"] == "snapkv@64"]
    assert summary["cost"]["snapkv@64"]["same_as_full"] == sum(snap) / len(snap)
    assert summary["cost"]["specpc@256"]["samples"] == 2
    table = summary_markdown(summary)
    assert "| full |" in table and "retained vs full" in table
    assert "machines" not in table  # one machine: nothing to warn of

    paths = plot_results(out, tmp_path / "plots")
    assert [p.name for p in paths] == ["accuracy_vs_budget.png", "accuracy_per_task.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_the_summary_gives_the_median_time_and_warns_of_mixed_machines():
    """One slow answer (a paused run) moves the mean, not the median; seconds from two machines are
    flagged, naming both."""

    def record(index, seconds, machine):
        return {
            "task": "niah_single_1", "length": 1024, "index": index, "label": "full", "score": 1.0,
            "prediction": "x", "kv_fraction": 1.0, "kv_bytes": 10, "draft_seconds": 0.0,
            "prefill_seconds": seconds, "decode_seconds": 0.0, "total_seconds": seconds,
            "peak_rss_mib": 1.0, "machine": machine,
        }  # fmt: skip

    records = [record(0, 10.0, "cpu A"), record(1, 12.0, "cpu A"), record(2, 500.0, "cpu B")]
    summary = summarize(records)
    assert summary["cost"]["full"]["total_seconds_median"] == 12.0
    assert summary["cost"]["full"]["total_seconds"] == 174.0
    table = summary_markdown(summary)
    assert "| 174.0 | 12.0 |" in table
    assert "come from 2 machines" in table and "- cpu A" in table and "- cpu B" in table
    assert "machines" not in summary_markdown(summarize(records[:2]))


def test_summary_and_plot_commands(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    base = {"task": "vt", "length": 4096, "index": 0, "prediction": "", "answers": ["X"], "peak_rss_mib": 1.0}
    cost = {"kv_fraction": 1.0, "kv_bytes": 8, "draft_seconds": 0.0, "prefill_seconds": 1.0}
    cost |= {"decode_seconds": 1.0, "total_seconds": 2.0}
    rows = [
        {**base, **cost, "label": "full", "method": "full", "budget": None, "score": 1.0},
        {**base, **cost, "label": "speckv@256", "method": "speckv", "budget": 256, "score": 0.5},
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["bench", "summary", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| speckv@256 | 50.0 | 50.0 |" in printed and "0.500" in printed
    assert main(["plot", str(out), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "accuracy_vs_budget.png").is_file()


def test_plots_compare_only_the_tasks_every_method_answered(tmp_path):
    base = {
        "length": 4096,
        "index": 0,
        "prediction": "",
        "answers": ["X"],
        "peak_rss_mib": 1.0,
        "kv_fraction": 1.0,
    }
    rows = [
        {**base, "task": "vt", "label": "full", "method": "full", "budget": None, "score": 1.0},
        {**base, "task": "qa_1", "label": "full", "method": "full", "budget": None, "score": 0.0},
        {**base, "task": "vt", "label": "snapkv@256", "method": "snapkv", "budget": 256, "score": 1.0},
    ]
    out = tmp_path / "r.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(plot_results(out, tmp_path / "figs")) == 2
    rows.append({**base, "task": "cwe", "label": "knorm@256", "method": "knorm", "budget": 256, "score": 0.0})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="share no task"):
        plot_results(out, tmp_path / "figs")


def test_retained_vs_length_compares_the_same_samples_at_every_length(tmp_path):
    """Per method and length: its mean score over Full's, on the samples every method answered at
    every length (a sample answered at one length only, or by one method only, is left out)."""
    base = {"prediction": "", "answers": ["X"], "peak_rss_mib": 1.0, "kv_fraction": 1.0, "budget": 256}
    rows = []
    for length, full, snap in ((4096, [1.0, 1.0], [1.0, 0.5]), (8192, [1.0, 0.5], [0.5, 0.0])):
        for index in (0, 1):
            rows.append({**base, "task": "vt", "length": length, "index": index, "label": "full",
                         "method": "full", "score": full[index]})  # fmt: skip
            rows.append({**base, "task": "vt", "length": length, "index": index, "label": "snapkv@256",
                         "method": "snapkv", "score": snap[index]})  # fmt: skip
    rows.append(
        {**base, "task": "vt", "length": 4096, "index": 2, "label": "full", "method": "full", "score": 0.0}
    )  # fmt: skip  (no 8k answer for index 2: left out)
    rows.append(
        {
            **base,
            "task": "vt",
            "length": 4096,
            "index": 0,
            "label": "knorm@256",
            "method": "knorm",
            "score": 0.0,
        }
    )  # fmt: skip  (not at 8k: no curve)
    assert retained_by_length(rows) == {"snapkv@256": {4096: 0.75, 8192: 0.5 / 1.5}}
    short, long = tmp_path / "4k.jsonl", tmp_path / "8k.jsonl"
    short.write_text("".join(json.dumps(r) + "\n" for r in rows if r["length"] == 4096))
    long.write_text("".join(json.dumps(r) + "\n" for r in rows if r["length"] == 8192))
    assert main(["plot", str(short), str(long), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "retained_vs_length.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="Full"):
        retained_by_length([r for r in rows if r["label"] != "full"])


def test_samples_command_caches_what_the_harness_reads(qwen_tokenizer, tmp_path, monkeypatch, capsys):
    from draftwise.bench import ruler

    target = resolve("qwen2.5-coder-0.5b-instruct")  # before the cache moves
    monkeypatch.setenv("DRAFTWISE_CACHE", str(tmp_path))
    argv = ["bench", "samples", "--target", target, "--tasks", "niah_single_1,vt", "--lengths", "1024"]
    assert main([*argv, "--samples", "2"]) == 0
    printed = capsys.readouterr().out
    assert "niah_single_1 at 1024: 2 samples" in printed and "vt at 1024: 2 samples" in printed
    cached = sorted(p.name for p in (tmp_path / "ruler").glob("*.jsonl"))
    assert len(cached) == 2 and all("_L1024_n2_s0_" in name for name in cached)
    monkeypatch.setattr(ruler, "generate_task", lambda *a, **k: pytest.fail("regenerated a cached task"))
    assert len(ruler.load_or_generate("vt", qwen_tokenizer, 1024, 2)) == 2  # the harness's own call
    assert main(["bench", "samples", "--target", target, "--tasks", "nope"]) == 2
    assert "unknown RULER task(s) nope" in capsys.readouterr().err


def test_timed_needle_prompts_fit_chat_and_base_models():
    """The benchmarks' prompt: through the chat template where the tokenizer has one, else the text."""
    from draftwise.bench.needle import haystack, needle_case, needle_ids

    tokenizer = tiny_tokenizer()  # its own: the test takes its chat template away
    try:
        haystack()
    except FileNotFoundError:
        pytest.skip("the haystack text is not installed (draftwise setup)")
    case = needle_case(tokenizer, context_tokens=50)
    chat = needle_ids(tokenizer, 50)
    assert chat.shape[0] == 1 and chat[0, 0] == tokenizer.convert_tokens_to_ids("w3")
    tokenizer.chat_template = None
    text = case.messages[0]["content"]
    assert needle_ids(tokenizer, 50).tolist() == tokenizer(text, return_tensors="pt").input_ids.tolist()
