"""RULER's scoring: the clean-up of a prediction and the per-sample metric."""

from __future__ import annotations

import re

from draftwise.bench.ruler.tasks import TASKS


def postprocess(prediction: str | None) -> str:
    """RULER's prediction clean-up: strip, control characters to newlines, strip."""
    if prediction is None:
        return ""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def score(task: str, prediction: str | None, answers: list[str]) -> float:
    """RULER's per-sample score in [0, 1]: ``string_match_all`` is the fraction of ``answers`` found in the
    prediction, ``string_match_part`` 1 when any is (case-insensitive substring matches)."""
    if not answers:
        raise ValueError("no reference answers")
    pred = postprocess(prediction).lower()
    hits = [1.0 if a.lower() in pred else 0.0 for a in answers]
    metric = TASKS[task].metric
    if metric == "string_match_all":
        return sum(hits) / len(hits)
    if metric == "string_match_part":
        return max(hits)
    raise ValueError(f"unknown metric {metric!r}")
