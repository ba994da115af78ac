"""Benchmarks that print figures (`python -m benchmarks.step`, `python -m benchmarks.sweep`); nothing here is
meant to be imported by users."""

from trainers.cli import OneLineArgumentParser
from trainers.table import render

__all__: list[str] = []

# the benchmarks' tables (`trainers.table.render`): numbers right-aligned, to 3 digits, whole from 100 on
TABLE_STYLE = {"align_right": True, "digits": 3, "whole_from": 100}


def print_table(header: list[str], rows: list[list], markdown: bool) -> None:
    print("\n".join(render(header, rows, markdown=markdown, **TABLE_STYLE)))


def simulation_parser(prog: str, doc: str, hypotheses: int) -> OneLineArgumentParser:
    """The command line of a simulation of the verdict's rules (benchmarks.calibration, benchmarks.sequential)."""
    parser = OneLineArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--hypotheses", type=int, default=hypotheses, help="synthetic hypotheses per cell")
    parser.add_argument("--markdown", action="store_true", help="Markdown tables, to paste into docs/ANALYSIS.md")
    return parser
