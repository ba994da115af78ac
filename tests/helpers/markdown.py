"""Reading the markdown that the analysis writes (REPORT.md's tables)."""


def table_rows(report: str, header_start: str) -> list[list[str]]:
    """The body rows of every markdown table whose header starts with `header_start`."""
    rows, inside = [], False
    for line in report.splitlines():
        if line.startswith(f"| {header_start}"):
            inside = True
        elif inside and line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif not line.startswith("|"):
            inside = False
    return rows
