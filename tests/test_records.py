"""The records contract (trainers/records.py): the space and trial records and their earlier spellings, the one
status rule, and the one way a variant is named."""
import json
import math

import pytest
import yaml

from trainers.records import (
    DIVERGED, ERROR, FINISHED, INCOMPLETE, SPACE_RECORD, STOPPED_EARLY, TRIAL_RECORD, RecordError, SpaceRecord,
    TrialRecord, read_space_record, read_trial_record, trial_status, variant_label, write_space_record,
    write_trial_record,
)


@pytest.mark.parametrize("last_step, train_steps, diverged, stopped, errored, status", [
    (99, 100, False, False, False, FINISHED),
    (99, 100, False, True, False, FINISHED),  # Tune marks a trial that ran to its end done, too
    (99, 100, False, False, True, FINISHED),  # failed once, then a retry ran to the end
    (40, 100, False, True, False, STOPPED_EARLY),  # a scheduler (ASHA) stopped it at a rung
    (40, 100, False, True, True, STOPPED_EARLY),  # an earlier attempt's error file stays beside it
    (40, 100, True, True, False, DIVERGED),
    (99, 100, True, False, False, DIVERGED),
    (40, 100, False, False, True, ERROR),
    (40, 100, False, False, False, INCOMPLETE),
    (None, 100, False, False, False, INCOMPLETE),  # no row yet
    (math.nan, 100, False, False, True, ERROR),
    (99, math.nan, False, False, False, INCOMPLETE),  # no config to say where the end is
])
def test_one_status_rule(last_step, train_steps, diverged, stopped, errored, status):
    rows = [] if last_step is None else [{"step": last_step, "diverged": diverged, "done": stopped}]
    assert trial_status(rows, train_steps, errored=errored) == status


@pytest.mark.parametrize("values, label", [
    ({"model.n_layer": 2, "model.use_lstm_layer": True}, "L=2 LSTM"),
    ({"model.n_layer": 2, "model.use_lstm_layer": False}, "L=2"),
    ({"model.n_last_tokens": -1}, "n_last_tokens=all"),
    ({"model.n_last_tokens": 55.0}, "n_last_tokens=55"),  # a dataframe column with gaps holds floats
    ({"training.learning_rate": 1e30}, "learning_rate=1e+30"),  # a whole float too large to be an int's spelling
    ({"model.n_last_tokens": math.nan}, "n_last_tokens=default"),
    ({"training.learning_rate": 0.001, "training.seed": 1}, "learning_rate=0.001 seed=1"),
    ({"model.family": "gpt2"}, "transformer"),
    ({}, "base"),
    ({"model.use_lstm_layer": False}, "base"),
])
def test_variant_labels(values, label):
    assert variant_label(values) == label


def test_the_records_round_trip(tmp_path):
    space = SpaceRecord(name="s", base={"model": {"n_layer": 1}},
                        hypotheses=[{"name": "h", "question": "Does it?", "reference": {"model.n_layer": 1},
                                     "expect": "better"}],
                        trials=[{"hypotheses": ["h"], "values": {"model.n_layer": 2}}])
    assert write_space_record(tmp_path, space) == tmp_path / SPACE_RECORD
    assert read_space_record(tmp_path) == space
    trial = TrialRecord(trial_id="t1", hypotheses=["h", "g"], values={"model.n_layer": 2})
    assert write_trial_record(tmp_path, trial) == tmp_path / TRIAL_RECORD
    assert read_trial_record(tmp_path) == trial
    assert json.loads((tmp_path / TRIAL_RECORD).read_text())["hypotheses"] == ["h", "g"]


def test_records_of_the_runner_before_the_rename_still_read(tmp_path):
    (tmp_path / SPACE_RECORD).write_text(yaml.safe_dump({
        "name": "s", "base": {}, "experiments": [{"name": "h", "description": "Does it?", "reference": {},
                                                  "expect": None}],
        "trials": [{"experiments": ["h"], "values": {"training.seed": 0}}]}))
    record = read_space_record(tmp_path)
    assert record.hypotheses[0].name == "h" and record.hypotheses[0].question == "Does it?"
    assert record.trials[0].hypotheses == ("h",)
    (tmp_path / TRIAL_RECORD).write_text(json.dumps({"trial_id": "t", "experiments": ["h"], "values": {}}))
    assert read_trial_record(tmp_path).hypotheses == ("h",)


@pytest.mark.parametrize("content, message", [
    (None, "no space record"),
    ("name: [unclosed\n", "unreadable"),
    ("- a list\n", "not the space record the runner writes"),
    ("name: s\nhypotheses: [{name: h, expect: lower}]\n", "not the space record the runner writes"),
])
def test_a_bad_space_record_is_one_line_naming_the_file(tmp_path, content, message):
    if content is not None:
        (tmp_path / SPACE_RECORD).write_text(content)
    with pytest.raises(RecordError) as err:
        read_space_record(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / SPACE_RECORD}: ") and message in str(err.value)
    assert "\n" not in str(err.value)
