"""Figures from results files: accuracy vs budget per method, per-task bars, and (when the records span
several context lengths) accuracy retained vs Full against context length."""

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


def retained_by_length(records: list[dict]) -> dict[str, dict[int, float]]:
    """Per method label (those answered at every length, Full's excepted), per context length: its mean
    score over Full's, on the samples (task, index) that every such label and Full answered at every
    length (:func:`common_samples`), so each point compares like with like."""
    lengths = sorted({r["length"] for r in records})
    labels, samples = common_samples(records)
    scores: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        if r["label"] in labels and (r["task"], r["index"]) in samples:
            scores[r["length"], r["label"]].append(r["score"])
    out: dict[str, dict[int, float]] = {}
    for label in sorted(labels - {"full"}):
        out[label] = {}
        for n in lengths:
            full = statistics.mean(scores[n, "full"])
            out[label][n] = statistics.mean(scores[n, label]) / full if full else float("nan")
    return out


def common_samples(records: list[dict]) -> tuple[set[str], set[tuple]]:
    """The labels answered at every length (Full's among them), and the samples (task, index) every one
    of them answered at every length."""
    lengths = sorted({r["length"] for r in records})
    labels_at = [{r["label"] for r in records if r["length"] == n} for n in lengths]
    labels = set.intersection(*labels_at) if labels_at else set()
    if "full" not in labels:
        raise ValueError("Full's answers are needed at every length to say what is retained")
    answered: dict[tuple, set] = defaultdict(set)  # (task, index) -> {(length, label)}
    for r in records:
        if r["label"] in labels:
            answered[r["task"], r["index"]].add((r["length"], r["label"]))
    everywhere = {(n, label) for n in lengths for label in labels}
    samples = {key for key, seen in answered.items() if seen >= everywhere}
    if not samples:
        raise ValueError("no sample was answered by every method at every length")
    return labels, samples


def _save_line_plot(plt, fig, ax, path: Path) -> Path:
    """A line plot finished as every one here is (grid, legend beside it), written to ``path``."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_retained_vs_length(plt, records: list[dict], out_dir: Path) -> Path:
    curves = retained_by_length(records)
    samples = len(common_samples(records)[1])
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=150)
    colors = _colors(plt, len(curves))
    for i, (label, points) in enumerate(curves.items()):
        lengths = sorted(points)
        ax.plot(
            lengths,
            [points[n] for n in lengths],
            color=colors[i],
            marker=MARKERS[i % len(MARKERS)],
            linestyle="-" if label.startswith("spec") else "--",
            label=label,
        )
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="full")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({n for points in curves.values() for n in points}))
    ax.get_xaxis().set_major_formatter(plt.FuncFormatter(lambda n, _: f"{n / 1024:g}k"))
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"RULER accuracy retained vs Full\n({samples} samples per length)")
    return _save_line_plot(plt, fig, ax, out_dir / "retained_vs_length.png")


def plot_results(results: str | Path | list[str | Path], out_dir: str | Path) -> list[Path]:
    """Write ``accuracy_vs_budget.png`` and ``accuracy_per_task.png`` into ``out_dir``, and, when the
    records (of one file or several) span more than one context length, ``retained_vs_length.png``;
    return their paths.

    Only the tasks every method answered are plotted, so averages compare like with like.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = [results] if isinstance(results, (str, Path)) else list(results)
    records = [r for path in files for r in read_records(path)]
    if not records:
        raise ValueError(f"no records in {', '.join(map(str, files))}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    extra = []
    if len({r["length"] for r in records}) > 1:
        extra.append(_plot_retained_vs_length(plt, records, Path(out_dir)))
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
    first = _save_line_plot(plt, fig, ax, out_dir / "accuracy_vs_budget.png")

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
    return [first, second, *extra]
