"""Write the README's results table from the JSON that benchmarks/compare_models.py wrote (never typed by hand).

    python benchmarks/readme_results.py [--json benchmarks/results/compare_cave.json] [--readme README.md] [--check]

The table sits between `<!-- results-table ... -->` and `<!-- /results-table -->`; `--check` exits 1 when the
README's table is not what the JSON gives (the test suite runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- results-table[^\n]*-->\n)(.*?)(<!-- /results-table -->)", re.S)
NAMES = {"baseline-rootpoly-nikon5100.npz": "root-polynomial regression (degree 2), the baseline",
         "uldm-cave": "ULDM `checkpoints/uldm-cave`", "r2hdiff-cave (free)": "R2H-Diff `checkpoints/r2hdiff-cave`",
         "r2hdiff-cave (+RGB proj.)": "R2H-Diff + projection onto Φŝ = c"}


def cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    return "-" if value is None else fmt.format(value)


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| model | PSNR (dB) | SAM (°) | MRAE | RMSE | max RGB error | parameters | GFLOP / image | s / image |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, row in rows.items():
        steps = f", {row['steps']} step{'s' if row['steps'] > 1 else ''}" if row.get("steps") else ""
        lines.append(" | ".join([
            f"| {NAMES.get(label, label)}{steps}", cell(row, "psnr", "{:.2f}"), cell(row, "sam", "{:.2f}"),
            cell(row, "mrae", "{:.4f}"), cell(row, "rmse", "{:.4f}"), cell(row, "max_rgb_error", "{:.1e}"),
            cell(row, "parameters", "{:,}"), cell(row, "gflops_per_image", "{:.2f}"),
            cell(row, "seconds_per_image", "{:.2f}")]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "compare_cave.json")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the README differs")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    match = BLOCK.search(text)
    if match is None:
        parser.error(f"{args.readme}: no <!-- results-table --> ... <!-- /results-table --> block")
    expected = table(json.loads(args.json.read_text())["rows"])
    if args.check:
        if match[2] != expected:
            print(f"{args.readme}: the results table differs from {args.json}; run benchmarks/readme_results.py",
                  file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(text[:match.start(2)] + expected + text[match.end(2):])
    print(f"wrote the results table of {args.readme} from {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
