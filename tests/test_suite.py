"""The suite's own order: the files that hold slow tests go first (tests/conftest.py), so that neither worker is
left with one at the end while the other idles."""
import re
from pathlib import Path

from conftest import LONGEST_FIRST

TESTS = Path(__file__).parent


def test_every_file_with_slow_tests_is_in_the_order_and_every_name_there_is_a_file():
    marked = re.compile(r"^\s*@pytest\.mark\.slow|^pytestmark = .*pytest\.mark\.slow", re.M)
    slow = {path.name for path in TESTS.glob("test_*.py") if marked.search(path.read_text())}
    assert slow - set(LONGEST_FIRST) == set(), "add them to LONGEST_FIRST by their time"
    assert [name for name in LONGEST_FIRST if not (TESTS / name).is_file()] == []
