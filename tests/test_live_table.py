"""The live table's column names; the table itself is checked on a real sweep in test_runner.py."""
from ray.tune.search.variant_generator import generate_variants

from helpers.sweeps import write_space
from tune_looped.live import LiveTable, short_names
from tune_looped.space import load_space
from tune_looped.tune_space import param_space


def test_short_names_are_the_last_part_unless_two_share_it():
    assert short_names(["model.n_last_tokens", "model.n_layer", "model.use_lstm_layer", "training.seed"]) == {
        "model.n_last_tokens": "n_last_tokens", "model.n_layer": "n_layer", "model.use_lstm_layer": "lstm",
        "training.seed": "seed"}
    assert short_names(["training.curriculum.loops.end", "training.curriculum.points.end"]) == {
        "training.curriculum.loops.end": "loops.end", "training.curriculum.points.end": "points.end"}


class Shown:
    """What the table reads of a Tune trial."""

    def __init__(self, trial_id, status, config, last_result):
        self.trial_id, self.status, self.config, self.last_result = trial_id, status, config, last_result


def test_the_four_swept_keys_and_every_metric_fit_in_120_columns(tmp_path):
    hypotheses = [{"name": "information_flow", "grid": {"model.n_last_tokens": [20, -1]}},
                   {"name": "looped_n_layers", "grid": {"model.n_layer": [1, 3]}},
                   {"name": "looped_lstm", "grid": {"model.use_lstm_layer": [True, False], "model.n_layer": [1]}}]
    space = load_space(write_space(tmp_path / "space.yaml", hypotheses, seeds=[0, 1, 2]))
    result = {"step": 20000, "n_loops": 30, "n_points": 41, "eval/loss": 0.012345678, "eval/loss_last": 1e-5}
    # each trial's config as Tune resolves the runner's param_space
    trials = [Shown(f"ab12c_{i:05d}", "TERMINATED" if i % 2 else "RUNNING", config, result)
              for i, (_, config) in enumerate(generate_variants(param_space(space)))]
    lines = LiveTable(space).table(trials)[1:]  # the progress line: test_progress.py
    assert lines[1] == "hypotheses: 1 information_flow, 2 looped_n_layers, 3 looped_lstm"
    assert lines[2].split() == ["trial", "status", "hyp", "n_last_tokens", "n_layer", "lstm", "seed", "step",
                                "n_loops", "n_points", "eval/loss", "eval/loss_last"]
    assert lines[3].split()[-5:] == ["20000", "30", "41", "0.01235", "1e-05"]
    assert len(lines) == 3 + len(trials) and max(map(len, lines)) <= 120
    # the hypotheses column numbers every experiment a trial belongs to, the shared configuration's three
    shown = sorted(tuple(line.split()[2:7]) for line in lines[3:])
    assert shown == sorted((exp, *values, str(seed)) for seed in (0, 1, 2) for exp, *values in [
        ("1", "20", "1", "False"), ("1,2,3", "-1", "1", "False"), ("2", "-1", "3", "False"), ("3", "-1", "1", "True")])


def test_forty_trials_fit_in_twenty_rows_with_failures_always_shown(tmp_path):
    space = load_space(write_space(tmp_path / "space.yaml", [{"name": "s", "grid": {"training.seed": list(range(40))}}]))
    configs = [config for _, config in generate_variants(param_space(space))]

    def result(i, **extra):
        return {"step": 29, "timestamp": 1_000 + i, **extra}

    trials = [Shown(f"t{i:02d}", "TERMINATED", configs[i], result(i)) for i in range(35)]
    trials += [Shown(f"r{i}", "RUNNING", configs[35 + i], {"step": 5}) for i in range(3)]
    trials += [Shown("err", "ERROR", configs[38], result(0)), Shown("div", "TERMINATED", configs[39],
                                                                   result(1, diverged=True))]
    lines = LiveTable(space).table(trials)[1:]
    rows = [line.split() for line in lines[3:-1]]
    assert len(rows) == 20 and lines[-1] == "... and 20 more: 20 done"
    assert [row[0] for row in rows[:5]] == ["r0", "r1", "r2", "err", "div"]
    assert [row[1] for row in rows[:5]] == ["running"] * 3 + ["error", "diverged"]
    # then the 15 that ended last, newest first
    assert [row[0] for row in rows[5:]] == [f"t{i:02d}" for i in range(34, 19, -1)]
    assert lines[0] == "== 40 trials: 36 done, 3 running, 1 error"


def test_the_table_is_printed_every_10_s_while_something_changes_and_once_a_minute(tmp_path, monkeypatch):
    space = load_space(write_space(tmp_path / "space.yaml", [{"name": "s", "grid": {"training.seed": [0]}}]))
    config = next(generate_variants(param_space(space)))[1]
    clock = [1000.0]
    monkeypatch.setattr("tune_looped.live.time.monotonic", lambda: clock[0])
    live = LiveTable(space)
    trial = Shown("t0", "RUNNING", config, {"step": 5})

    def after(seconds, step=None):
        clock[0] += seconds
        if step is not None:
            trial.last_result = {"step": step}
        return live.should_report([trial])

    assert after(0)
    assert not after(10), "nothing changed: no table"
    assert not after(20) and not after(29.9)
    assert after(0.1), "a minute without a change: the table anyway"
    assert not after(5, step=6), "changed, but 10 s have not passed"
    assert after(5)
    assert not after(30) and not after(29.9)
    assert after(0.1), "a minute without a change: the table anyway"
    assert live.should_report([trial], done=True)
