"""The one table renderer: its number format, aligned text, Markdown and the two cuts."""
import numpy as np
import pytest

from trainers.table import format_number, render


@pytest.mark.parametrize("value, kwargs, expected", [
    (None, {}, ""),
    (float("nan"), {}, "nan"),
    (np.float32("nan"), {}, "nan"),
    (float("inf"), {}, "inf"),
    (-float("inf"), {"whole_from": 100}, "-inf"),
    (3, {}, "3"),
    (1234567, {}, "1234567"),
    (np.int64(7), {}, "7"),
    (True, {}, "True"),
    ("x", {}, "x"),
    (0.012345678, {}, "0.01235"),
    (1e-5, {}, "1e-05"),
    (123456.7, {}, "1.235e+05"),
    (np.float32(0.5), {}, "0.5"),
    (0.12345, {"digits": 3}, "0.123"),
    (99.94, {"digits": 3, "whole_from": 100}, "99.9"),
    (1234.5, {"digits": 3, "whole_from": 100}, "1234"),
    (-250.6, {"digits": 3, "whole_from": 100}, "-251"),
])
def test_format_number(value, kwargs, expected):
    assert format_number(value, **kwargs) == expected


@pytest.mark.parametrize("header, rows, kwargs, expected", [
    (["a", "bb"], [[1, 0.5], ["long", None]], {}, ["a     bb", "1     0.5", "long"]),
    (["a", "bb"], [[1, 0.5], ["long", 2]], {"align_right": True}, ["   a   bb", "   1  0.5", "long    2"]),
    (["a", "b"], [[1, 0.12345], ["x", 1234.5]], {"markdown": True},
     ["| a | b |", "|---|---|", "| 1 | 0.1235 |", "| x | 1234 |"]),
    (["a", "b"], [], {"markdown": True}, ["| a | b |", "|---|---|"]),
    (["a", "b"], [["abcdefgh", "xyz"]], {"width": 9}, ["a", "abcdefgh"]),
    (["a", "b"], [["abcdefgh", "xyz"]], {"width": 12}, ["a         b", "abcdefgh  xy"]),
    (["name", "v"], [["abcdefgh", 1]], {"max_cell": 5}, ["name   v", "abcd~  1"]),
    (["longheader", "v"], [["abc", 1]], {"max_cell": 5}, ["longheader  v", "abc         1"]),
    (["name"], [["abcdefgh"]], {"max_cell": 5, "markdown": True}, ["| name |", "|---|", "| abcd~ |"]),
    (["x"], [[float("nan")], [None], [2.0]], {"digits": 2}, ["x", "nan", "", "2"]),
])
def test_render(header, rows, kwargs, expected):
    assert render(header, rows, **kwargs) == expected
