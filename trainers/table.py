"""The one table renderer: aligned text for a terminal or Markdown for a file, with one number format.

Our own module rather than tabulate or rich: neither is installed, and the project's tables need only
alignment, a width cap, a cell cut and Markdown, with exact control over the strings that tests pin.
"""
from __future__ import annotations

import math
import numbers


def format_number(value, digits: int = 4, *, whole_from: float | None = None) -> str:
    """`value` as a table shows it: floats (NumPy's too) to `digits` significant digits, or as whole numbers
    from a magnitude of `whole_from` on (no exponent); None as blank; ints, bools and strings as `str`."""
    if value is None:
        return ""
    if isinstance(value, numbers.Integral) or not isinstance(value, numbers.Real):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "nan"
    if whole_from is not None and abs(value) >= whole_from:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def render(header: list[str], rows: list[list], *, markdown: bool = False, width: int | None = None,
           max_cell: int | None = None, align_right: bool = False, digits: int = 4,
           whole_from: float | None = None) -> list[str]:
    """The table's lines; each cell of `rows` through `format_number(digits, whole_from)`.

    Body cells longer than `max_cell` end in `~` (the header stays whole: it names the column). Text columns
    are two spaces apart and each line is cut to `width`; Markdown lines are never cut, as that would break
    the table.
    """
    cells = [[format_number(v, digits, whole_from=whole_from) for v in row] for row in rows]
    if max_cell is not None:
        cells = [[c if len(c) <= max_cell else c[:max_cell - 1] + "~" for c in row] for row in cells]
    if markdown:
        rule = "|" + "|".join("---" for _ in header) + "|"
        return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(row) + " |" for row in cells)]
    lines = [header, *cells]
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    pad = str.rjust if align_right else str.ljust
    return ["  ".join(pad(c, w) for c, w in zip(row, widths))[:width].rstrip() for row in lines]
