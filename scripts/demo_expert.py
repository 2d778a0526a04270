"""The demo's stand-in for the expert: fill in the label and action columns of a selection CSV.

    python scripts/demo_expert.py next.csv decisions.csv

Reads the rows `edge-al select --csv` wrote (sample_id, path, predicted, ...), looks each image up in
the `truth.csv` that `edge-al demo` writes beside its pool, and writes `sample_id,path,label,action,
annotator`: `accept` where the guess is right, `correct` with the true label where it is not. On your
own images a person does this step (in a spreadsheet, or on the annotation page of `edge-al serve`).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def truth_beside(path: Path, cache: dict[Path, dict[str, str]]) -> dict[str, str]:
    folder = path.parent
    if folder not in cache:
        truth = folder / "truth.csv"
        if not truth.exists():
            sys.exit(f"demo_expert: no truth.csv beside {path}: this stand-in only knows the demo pool's labels.")
        with open(truth, newline="", encoding="utf-8") as f:
            cache[folder] = {Path(r["path"]).name: r["label"] for r in csv.DictReader(f)}  # beside its images: by name
    return cache[folder]


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    cache: dict[Path, dict[str, str]] = {}
    with open(src, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(dst, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sample_id", "path", "label", "action", "annotator"])
        for r in rows:
            path = Path(r["path"])
            label = truth_beside(path, cache)[path.name]
            w.writerow([r["sample_id"], r["path"], label, "accept" if r.get("predicted") == label else "correct", "demo-expert"])
    print(f"demo_expert: {len(rows)} decisions in {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
