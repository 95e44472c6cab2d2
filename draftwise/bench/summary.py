"""The tables of a results file: accuracy per task, accuracy retained against Full, KV kept, costs."""

from __future__ import annotations

import statistics
from collections import defaultdict

from draftwise.bench import ruler


def summarize(records: list[dict]) -> dict:
    """Accuracy per (label, task) and overall, retained vs Full, mean KV fraction and stage seconds (and
    the median total), and the machines the seconds come from."""
    by = defaultdict(list)
    for r in records:
        by[r["label"], r["task"]].append(r)
    labels = sorted({r["label"] for r in records}, key=lambda label: (label != "full", label))
    tasks = [t for t in ruler.TASKS if any(r["task"] == t for r in records)]
    accuracy = {
        label: {t: 100 * statistics.mean(x["score"] for x in by[label, t]) for t in tasks if by[label, t]}
        for label in labels
    }
    summary = {
        "labels": labels,
        "tasks": tasks,
        "accuracy": accuracy,
        "overall": {},
        "retained": {},
        "cost": {},
        # what the seconds were measured on (records before the field: None)
        "machines": sorted({r.get("machine") or "unrecorded" for r in records}),
    }
    full = accuracy.get("full", {})
    full_answers = {
        (r["task"], r["length"], r["index"]): r.get("prediction") for r in records if r["label"] == "full"
    }
    for label in labels:
        rows = [r for r in records if r["label"] == label]
        scores = accuracy[label]
        summary["overall"][label] = statistics.mean(scores.values())
        common = [t for t in scores if t in full]
        if common and statistics.mean(full[t] for t in common) > 0:
            summary["retained"][label] = statistics.mean(scores[t] for t in common) / statistics.mean(
                full[t] for t in common
            )
        keys = (
            "kv_fraction",
            "kv_bytes",
            "draft_seconds",
            "prefill_seconds",
            "decode_seconds",
            "total_seconds",
        )
        summary["cost"][label] = {key: _average([r.get(key) for r in rows]) for key in keys}
        # robust to the odd answer slowed by a shared or paused machine
        summary["cost"][label]["total_seconds_median"] = _average(
            [r.get("total_seconds") for r in rows], statistics.median
        )
        summary["cost"][label]["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rows)
        summary["cost"][label]["samples"] = len(rows)
        paired = [r for r in rows if (r["task"], r["length"], r["index"]) in full_answers]
        summary["cost"][label]["same_as_full"] = (
            sum(r.get("prediction") == full_answers[r["task"], r["length"], r["index"]] for r in paired)
            / len(paired)
            if paired
            else None
        )
    return summary


def _average(values: list, statistic=statistics.mean) -> float | None:
    """``statistic`` (the mean, or the median) of the measured values (``None`` marks a quantity a
    record did not measure)."""
    measured = [v for v in values if v is not None]
    return statistic(measured) if measured else None


def _cell(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(scale * value, spec)


def _percent(fraction: float | None, spec: str) -> str:
    return "n/a" if fraction is None else format(100 * fraction, spec) + "%"


def summary_markdown(summary: dict) -> str:
    """The summary as Markdown tables: accuracy per task, then retained accuracy (and how often the
    answer is Full's, word for word), KV kept and costs."""
    tasks, labels = summary["tasks"], summary["labels"]
    lines = ["| method | " + " | ".join(tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
    for label in labels:
        cells = [f"{summary['accuracy'][label].get(t, float('nan')):.1f}" for t in tasks]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {summary['overall'][label]:.1f} |")
    lines += [
        "",
        "| method | answers | retained vs full | answer = full's | KV kept | draft s | pre-fill s | decode s "
        "| total s | median total s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        c = summary["cost"][label]
        retained = summary["retained"].get(label)
        cells = [
            str(c["samples"]),
            _cell(retained, ".3f"),
            _percent(c.get("same_as_full"), ".0f"),
            _percent(c["kv_fraction"], ".1f"),
            *(
                _cell(c[k], ".1f")
                for k in ("draft_seconds", "prefill_seconds", "decode_seconds", "total_seconds")
            ),
            _cell(c["total_seconds_median"], ".1f"),
            _cell(c["peak_rss_mib"], ".0f"),
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    machines = summary["machines"]
    if len(machines) > 1:
        lines += [
            "",
            f"Seconds (means per answer) come from {len(machines)} machines: compare them within one.",
        ]
        lines += [f"- {machine}" for machine in machines]
    return "\n".join(lines) + "\n"
