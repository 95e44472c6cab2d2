"""Figures from a results file: accuracy vs budget per method, and per-task bars."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from draftwise.bench.records import read_records
from draftwise.bench.summary import summarize

MARKERS = "osD^vP*Xh<>p"


def _colors(plt, count: int) -> list:
    """``count`` distinguishable colours: matplotlib's 10 defaults, or tab20's 20 beyond that."""
    return [plt.get_cmap("tab10" if count <= 10 else "tab20")(i % 20) for i in range(count)]


def plot_results(results: str | Path, out_dir: str | Path) -> list[Path]:
    """Write ``accuracy_vs_budget.png`` and ``accuracy_per_task.png`` into ``out_dir``; return their paths.

    Only the tasks every method in the file answered are plotted, so averages compare like with like.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_records(results)
    if not records:
        raise ValueError(f"no records in {results}")
    # Compare like with like: only the tasks every method answered.
    tasks_of: dict[str, set[str]] = defaultdict(set)
    for r in records:
        tasks_of[r["label"]].add(r["task"])
    common = set.intersection(*tasks_of.values())
    if not common:
        raise ValueError("the methods in this file share no task; plot them from separate files")
    records = [r for r in records if r["task"] in common]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)

    curves: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["label"] != "full":
            curves[r["method"] if "@" not in r["label"] else r["label"].split("@")[0]][r["budget"]].append(
                r["score"]
            )
    fig, ax = plt.subplots(figsize=(7.6, 4.2), dpi=150)
    colors = _colors(plt, len(curves))
    for i, (name, points) in enumerate(sorted(curves.items())):
        budgets = sorted(points)
        ax.plot(
            budgets,
            [100 * statistics.mean(points[b]) for b in budgets],
            color=colors[i],
            marker=MARKERS[i % len(MARKERS)],
            linestyle="-" if name.startswith("spec") or "speckv" in name else "--",
            label=name,
        )
    if "full" in summary["overall"]:
        ax.axhline(summary["overall"]["full"], color="black", linestyle=":", linewidth=1, label="full")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("budget (KV pairs per head, or prompt tokens)")
    ax.set_ylabel(f"RULER accuracy (%), {len(common)} tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    first = out_dir / "accuracy_vs_budget.png"
    fig.savefig(first)
    plt.close(fig)

    tasks, labels = summary["tasks"], summary["labels"]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(tasks) + 2), 5.0), dpi=150)
    width = 0.8 / len(labels)
    colors = _colors(plt, len(labels))
    for i, label in enumerate(labels):
        xs = [t + (i - (len(labels) - 1) / 2) * width for t in range(len(tasks))]
        ax.bar(xs, [summary["accuracy"][label].get(t, 0) for t in tasks], width, color=colors[i], label=label)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=6, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.32), frameon=False)
    fig.tight_layout()
    second = out_dir / "accuracy_per_task.png"
    fig.savefig(second)
    plt.close(fig)
    return [first, second]
