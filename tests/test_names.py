"""The rule for names that become a folder inside another: an experiment's under --storage, a run's under out_dir."""
import pytest

from trainers.names import MAX_NAME_LENGTH, is_folder_name


@pytest.mark.parametrize("name", ["hypotheses-quick-20260101-000000", "LR_loop_L1_ends{30}_T{15}", "a..b", ".hidden",
                                  "x" * MAX_NAME_LENGTH, "résumé", "🙂" * 63])
def test_names_that_stay_one_folder(name):
    assert is_folder_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/abs", "a\\b", "..\\x", "a\x00b", "a\nb",
                                  "x" * (MAX_NAME_LENGTH + 1), "🙂" * 64, None, 3],
                         ids=["empty", "dot", "dotdot", "parent", "separator", "absolute", "backslash",
                              "windows-parent", "nul", "newline", "too-long", "too-many-bytes", "none", "number"])
def test_names_that_would_leave_their_folder_or_fail_on_disk(name):
    assert not is_folder_name(name)
