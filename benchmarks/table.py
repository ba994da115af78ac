"""The benchmarks' tables: aligned text for a terminal, or Markdown to paste into RESULTS.md."""
from __future__ import annotations


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def print_table(header: list[str], rows: list[list], markdown: bool = False) -> None:
    cells = [[cell(v) for v in row] for row in rows]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in cells:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    for row in [header, *cells]:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
