"""Select and tag RULER records, to put runs with different drafts (or machines) in one table.

    python benchmarks/relabel.py IN.jsonl --labels speckv@256,specpc@2048 --tag smollm2 >> OUT.jsonl

Keeps the records whose label is listed (all if ``--labels`` is omitted), and with ``--tasks`` or
``--indices`` only those tasks or sample indices; with ``--tag``, renames ``name@budget`` to
``name[tag]@budget`` (Full stays ``full`` unless ``--tag-full``).
"""

from __future__ import annotations

import argparse
import json
import sys


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results")
    parser.add_argument("--labels", help="comma-separated labels to keep")
    parser.add_argument("--tasks", help="comma-separated tasks to keep")
    parser.add_argument("--indices", help="comma-separated sample indices to keep")
    parser.add_argument("--tag", help="tag inserted before the budget")
    parser.add_argument("--tag-full", action="store_true", help="tag Full's records too")
    args = parser.parse_args()
    keep = set(args.labels.split(",")) if args.labels else None
    tasks = set(args.tasks.split(",")) if args.tasks else None
    indices = {int(i) for i in args.indices.split(",")} if args.indices else None
    with open(args.results) as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            label = record["label"]
            if keep is not None and label not in keep:
                continue
            if (tasks is not None and record["task"] not in tasks) or (
                indices is not None and record["index"] not in indices
            ):
                continue
            if args.tag and (label != "full" or args.tag_full):
                name, _, budget = label.partition("@")
                record["label"] = f"{name}[{args.tag}]" + (f"@{budget}" if budget else "")
            sys.stdout.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
