"""RULER's synthetic tasks (draftwise.bench.ruler): budgets, answers, determinism, scoring, cache."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from helpers import real_models_enabled

from draftwise.bench import ruler
from draftwise.bench.ruler import data as ruler_data
from draftwise.bench.ruler import generators as ruler_generators

LENGTH = 2048  # qa_2 needs its 10 HotpotQA documents: about 1.3k tokens
SAMPLES = 2
TASK_NAMES = (
    "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2",
    "niah_multikey_3", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "qa_1", "qa_2",
)  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    if not real_models_enabled():
        pytest.skip("DRAFTWISE_SKIP_REAL_MODELS=1")
    from transformers import AutoTokenizer

    from draftwise.models import resolve

    try:
        path = resolve("qwen2.5-coder-0.5b-instruct")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def generated(tokenizer):
    """task -> its samples at LENGTH, seed 0 (generated once for the module)."""
    return {task: ruler.generate_task(task, tokenizer, LENGTH, SAMPLES, seed=0) for task in ruler.TASKS}


def test_task_table_is_rulers():
    assert tuple(ruler.TASKS) == TASK_NAMES
    new = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}
    for name, cfg in ruler.TASKS.items():
        assert cfg.max_new_tokens == new[cfg.family], name
        assert cfg.metric == ("string_match_part" if cfg.family == "qa" else "string_match_all"), name
    assert ruler.TASKS["niah_single_1"].args["type_haystack"] == "repeat"
    assert ruler.TASKS["niah_multikey_3"].args["type_needle_k"] == "uuids"
    assert ruler.TASKS["niah_multiquery"].args["num_needle_q"] == 4
    assert ruler.TASKS["qa_2"].args["dataset"] == "hotpotqa"


@pytest.mark.parametrize("task", TASK_NAMES)
def test_samples_fill_the_budget(task, tokenizer, generated):
    samples = generated[task]
    budget = LENGTH - ruler.TASKS[task].max_new_tokens
    assert [s.index for s in samples] == list(range(SAMPLES))
    for s in samples:
        assert (s.task, s.length) == (task, LENGTH)
        assert s.prompt_tokens == len(ruler.prompt_ids(tokenizer, s.prompt, s.answer_prefix))
        assert 0.7 * budget < s.prompt_tokens <= budget, (s.prompt_tokens, budget)
        assert s.answers and all(isinstance(a, str) and a for a in s.answers)
        assert s.answer_prefix.startswith(" ")


@pytest.mark.parametrize("task", [t for t in TASK_NAMES if t.startswith("niah")])
def test_niah_needles_and_queries_are_in_the_prompt(task, generated):
    args = ruler.TASKS[task].args
    for s in generated[task]:
        assert len(s.answers) == args["num_needle_v"] * args["num_needle_q"]
        question = s.prompt.rsplit("\n", 1)[1]
        for value in s.answers:
            needle = re.search(
                rf"One of the special magic {args['type_needle_v']} for (\S+) is: {value}\.", s.prompt
            )
            assert needle, value
            assert needle.group(1) in question and needle.group(1) in s.answer_prefix
        single = args["num_needle_v"] * args["num_needle_q"] == 1
        opening = "A special magic {} is hidden" if single else "Some special magic {}s are hidden"
        assert s.prompt.startswith(opening.format(args["type_needle_v"][:-1]))
        assert s.answer_prefix.endswith(" is" if single else " are")


def test_vt_chain_is_in_the_prompt(generated):
    for s in generated["vt"]:
        assert len(s.answers) == 5 and all(re.fullmatch("[A-Z]{5}", v) for v in s.answers)
        value = re.search(r"assigned the value (\d+) in the text above\.$", s.prompt).group(1)
        assert f"VAR {s.answers[0]} = {value}" in s.prompt
        for a, b in zip(s.answers, s.answers[1:], strict=False):
            assert f"VAR {b} = VAR {a} " in s.prompt
        assert s.answer_prefix.endswith(f"5 variables are assgined the value {value}, they are: ")
        # One worked example with three-letter names comes first.
        assert s.prompt.count("Memorize and track the chain(s)") == 2


def test_cwe_answers_are_the_most_common_words(generated):
    for s in generated["cwe"]:
        listed = s.prompt.rsplit("\n", 2)[1]  # the task's list (the worked example comes first)
        counts = Counter(re.findall(r"\d+\. (\S+)", listed))
        assert {w for w, _ in counts.most_common(10)} == set(s.answers)
        assert min(counts[w] for w in s.answers) == 6  # below 4k tokens: 6 and 1 repeats


def test_fwe_answers_are_the_most_frequent_coded_words(generated):
    for s in generated["fwe"]:
        context = s.prompt.split("coded words. ", 1)[1].split("\nQuestion:", 1)[0]
        counts = Counter(context.split())
        assert counts.most_common(1)[0][0] == "..."
        assert [w for w, _ in counts.most_common(4)[1:]] == s.answers


def test_qa_gold_documents_are_in_the_prompt(generated):
    for s in generated["qa_1"]:
        assert any(a in s.prompt for a in s.answers)
    qas, docs = ruler_data.qa_data("hotpotqa")
    for s in generated["qa_2"]:
        qa = qas[s.index]
        assert s.prompt.endswith(f"Question: {qa['query']}") and s.answers == qa["outputs"]
        assert all(docs[i] in s.prompt for i in qa["context"])


@pytest.mark.parametrize("task", TASK_NAMES)
def test_generation_is_deterministic(task, tokenizer, generated):
    assert ruler.generate_task(task, tokenizer, LENGTH, SAMPLES, seed=0) == generated[task]
    other = ruler.generate_task(task, tokenizer, LENGTH, SAMPLES, seed=1)
    assert [s.prompt for s in other] != [s.prompt for s in generated[task]]
    assert generated[task][0].prompt != generated[task][1].prompt


def test_budget_follows_max_new_tokens_and_refuses_too_short(tokenizer):
    (s,) = ruler.generate_task("niah_single_1", tokenizer, 1024, 1, max_new_tokens=300)
    assert 600 < s.prompt_tokens <= 1024 - 300
    with pytest.raises(ValueError, match="qa_2 at length 1024"):
        ruler.generate_task("qa_2", tokenizer, 1024, 1)
    with pytest.raises(KeyError):
        ruler.generate_task("niah", tokenizer, 1024, 1)


def test_fit_finds_the_largest_fitting_size():
    calls = []

    def measure(n):
        calls.append(n)
        return 100 + 3 * n + n % 2, None

    n, tokens, _ = ruler_generators._fit(measure, 10_000, 0, 10**6)
    assert len(calls) <= 12, calls  # extrapolate, then interpolate: no long bisection
    assert (n, tokens) == (3300, 10_000) and measure(3301)[0] > 10_000
    assert ruler_generators._fit(measure, 10**9, 0, 50)[0] == 50
    with pytest.raises(ValueError):
        ruler_generators._fit(measure, 50, 0, 10)


def test_split_sentences():
    text = 'It rained. "Really?" she asked! Yes (it did.) Fine.'
    assert ruler.split_sentences(text) == ["It rained.", '"Really?"', "she asked!", "Yes (it did.)", "Fine."]


def test_score_string_match_all_and_part():
    answers = ["1234567", "7654321"]
    assert ruler.score("niah_multivalue", "The numbers are 1234567 and 7654321.", answers) == 1.0
    assert ruler.score("niah_multivalue", "The number is 1234567.", answers) == 0.5
    assert ruler.score("niah_multivalue", "No idea.", answers) == 0.0
    assert ruler.score("vt", "they are: ABCDE fghij", ["abcde", "FGHIJ", "KLMNO"]) == pytest.approx(2 / 3)
    assert ruler.score("qa_1", "It is in FRANCE.", ["France", "Paris"]) == 1.0
    assert ruler.score("qa_2", "It is in Spain.", ["France", "Paris"]) == 0.0
    assert ruler.score("qa_1", "paris", ["France", "Paris"]) == 1.0
    assert ruler.score("cwe", None, ["word"]) == 0.0
    # RULER's post-processing turns control characters into newlines before matching.
    assert ruler.postprocess("  a\tb\x00c \n") == "a\nb\nc"
    assert ruler.score("cwe", "new\tyork", ["new\nyork"]) == 1.0
    with pytest.raises(ValueError):
        ruler.score("cwe", "x", [])


def test_cache_round_trip(tokenizer, tmp_path, monkeypatch):
    first = ruler.load_or_generate("niah_single_1", tokenizer, 1024, 2, seed=3, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.jsonl")
    assert path.name.startswith("niah_single_1_L1024_n2_s3_")
    assert len(path.read_text().splitlines()) == 2

    def refuse(*args, **kwargs):
        raise AssertionError("regenerated a cached task")

    with monkeypatch.context() as m:
        m.setattr(ruler, "generate_task", refuse)
        assert (
            ruler.load_or_generate("niah_single_1", tokenizer, 1024, 2, seed=3, cache_dir=tmp_path) == first
        )
    assert first == ruler.generate_task("niah_single_1", tokenizer, 1024, 2, seed=3)

    other = ruler.load_or_generate("niah_single_1", tokenizer, 1024, 2, seed=4, cache_dir=tmp_path)
    assert other != first and len(list(tmp_path.glob("*.jsonl"))) == 2

    path.write_text("not json\n")  # unreadable: generated again
    assert ruler.load_or_generate("niah_single_1", tokenizer, 1024, 2, seed=3, cache_dir=tmp_path) == first
