"""Tune's saved state before a resume: a damaged state file or tuner.pkl is found without running it, the runner
keeps a copy of the last good one, and the copy is put back in place of a damaged file."""
import json
import pickle

import pytest

from helpers.sweeps import wait_for
from tune_looped.state import StateKeeper, check_state, damage, restore

STATE = json.dumps({"trial_data": [], "runner_data": {"_session_str": "x"}, "stats": {}})


def state_file(folder, session="2026-01-01_00-00-00", text=STATE):
    path = folder / f"experiment_state-{session}.json"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, problem", [
    (STATE, None),
    (STATE[:40], "cut short or not JSON (40 bytes)"),
    ("", "empty (0 bytes)"),
    ("{}", "not Tune's experiment state (no trial_data and runner_data)"),
])
def test_a_state_file_that_tune_cannot_restore(tmp_path, text, problem):
    assert damage(state_file(tmp_path, text=text)) == problem


def test_a_tuner_pickle_cut_short_is_found_without_unpickling_it(tmp_path):
    data = pickle.dumps({"run_config": list(range(100))})
    (tmp_path / "tuner.pkl").write_bytes(data)
    assert damage(tmp_path / "tuner.pkl") is None
    (tmp_path / "tuner.pkl").write_bytes(data[:50])
    assert damage(tmp_path / "tuner.pkl") == "cut short (50 bytes, not a whole pickle)"


def test_the_keeper_copies_the_newest_state_that_parses(tmp_path):
    keeper = StateKeeper(tmp_path)
    first = state_file(tmp_path, "2026-01-01_00-00-00")
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({}))
    keeper.keep()
    copies = tmp_path / ".tune_looped"
    assert sorted(p.name for p in copies.iterdir()) == [first.name, "tuner.pkl"]
    # Tune rewrites it in place, and is cut short: the copy stays the last good one
    first.write_text(STATE[:30])
    keeper.keep()
    assert (copies / first.name).read_text() == STATE
    # a resume's state file, under a newer name: its copy replaces the older one
    second = state_file(tmp_path, "2026-01-02_00-00-00", STATE.replace("x", "y"))
    keeper.keep()
    assert sorted(p.name for p in copies.iterdir()) == [second.name, "tuner.pkl"]


def test_the_keeper_runs_beside_the_sweep_and_takes_a_last_look(tmp_path):
    keeper = StateKeeper(tmp_path, every=0.05).start()
    first = state_file(tmp_path)
    wait_for(lambda: (tmp_path / ".tune_looped" / first.name).exists(), timeout=5, every=0.02)
    second = state_file(tmp_path, "2026-01-02_00-00-00")
    keeper.stop()
    assert (tmp_path / ".tune_looped" / second.name).exists()


def test_a_damaged_state_is_restored_from_its_copy_or_reported(tmp_path):
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({}))
    good = state_file(tmp_path)
    StateKeeper(tmp_path).keep()
    assert check_state(tmp_path) == []
    good.write_text(STATE[:25])
    found = check_state(tmp_path)
    assert found == [(good, "cut short or not JSON (25 bytes)", tmp_path / ".tune_looped" / good.name)]
    (line,) = restore(found)
    assert line.startswith(f"{good} was cut short or not JSON (25 bytes); restored the copy of {good.name} kept at ")
    assert good.read_text() == STATE
    # without a copy, nothing can stand in for it
    (tmp_path / ".tune_looped" / good.name).unlink()
    (tmp_path / "tuner.pkl").write_bytes(b"")
    kept = tmp_path / ".tune_looped" / "tuner.pkl"
    assert check_state(tmp_path) == [(tmp_path / "tuner.pkl", "empty (0 bytes)", kept)]
    good.write_text("")
    assert check_state(tmp_path)[0] == (good, "empty (0 bytes)", None)
