"""Benchmarks that print figures (`python -m benchmarks.step`, `python -m benchmarks.sweep`); nothing here is
meant to be imported by users."""

__all__: list[str] = []

# the benchmarks' tables (`trainers.table.render`): numbers right-aligned, to 3 digits, whole from 100 on
TABLE_STYLE = {"align_right": True, "digits": 3, "whole_from": 100}
