"""The runner's summary against the space record: a trial the space did not ask for (or one run twice) is told
as such, and so is an asked-for trial without a result."""
from trainers.records import PlannedTrial, SpaceRecord
from tune_looped.tables import against_space, print_summary


def row(trial_id, hypotheses, status="finished", **values):
    return {"trial_id": trial_id, "hypotheses": tuple(hypotheses), **values, "step": 29, "eval/loss": 0.5,
            "status": status}


RECORD = SpaceRecord(trials=[PlannedTrial(hypotheses=("i",), values={"training.seed": s}) for s in (0, 1, 2)])


def test_the_trials_asked_for_match():
    rows = [row(f"t{s}", ["i"], **{"training.seed": s}) for s in (2, 0, 1)]
    assert against_space(rows, RECORD) == ([], [])


def test_a_bare_trial_a_repeat_and_a_missing_one():
    """Tune restarting a damaged experiment runs the bare base config: no hypotheses, no values; a second runner
    repeats a trial."""
    bare, repeat = row("bare", []), row("t0b", ["i"], **{"training.seed": 0})
    rows = [row("t0", ["i"], **{"training.seed": 0}), bare, repeat, row("t2", ["i"], **{"training.seed": 2})]
    unasked, missing = against_space(rows, RECORD)
    assert unasked == [bare, repeat]
    assert missing == [RECORD.trials[1]]


def test_numbers_compare_by_value_and_sampled_keys_are_not_the_trial():
    record = SpaceRecord(trials=[PlannedTrial(hypotheses=("b", "a"), values={"model.n_last_tokens": 55})],
                         sample={"training.learning_rate": "loguniform(0.0001, 0.01)"}, num_samples=2)
    rows = [row(f"t{n}", ["a", "b"], **{"model.n_last_tokens": 55.0, "training.learning_rate": lr})
            for n, lr in enumerate((3e-4, 2e-3))]
    assert against_space(rows, record) == ([], [])
    assert against_space(rows[:1], record) == ([], record.trials)


def test_the_summary_tells_both(tmp_path, capsys):
    rows = [row("t0", ["i"], **{"training.seed": 0}), row("bare", []), row("t2", ["i"], **{"training.seed": 2})]
    unasked, missing = print_summary(rows, tmp_path, RECORD)
    out = capsys.readouterr().out.splitlines()
    assert "not asked for: trial bare (base, hypotheses none) is not one of the trials space.yaml asks for, or " \
           "repeats one" in out
    assert "missing: seed=1 (i), asked for by space.yaml, has no result" in out
    assert [r["trial_id"] for r in unasked] == ["bare"] and missing == [RECORD.trials[1]]
