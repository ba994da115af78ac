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
    lines = LiveTable(space).table(trials)
    assert lines[1] == "hypotheses: 1 information_flow, 2 looped_n_layers, 3 looped_lstm"
    assert lines[2].split() == ["trial", "status", "hyp", "n_last_tokens", "n_layer", "lstm", "seed", "step",
                                "n_loops", "n_points", "eval/loss", "eval/loss_last"]
    assert lines[3].split()[-5:] == ["20000", "30", "41", "0.01235", "1e-05"]
    assert len(lines) == 3 + len(trials) and max(map(len, lines)) <= 120
    # the hypotheses column numbers every experiment a trial belongs to, the shared configuration's three
    shown = sorted(tuple(line.split()[2:7]) for line in lines[3:])
    assert shown == sorted((exp, *values, str(seed)) for seed in (0, 1, 2) for exp, *values in [
        ("1", "20", "1", "False"), ("1,2,3", "-1", "1", "False"), ("2", "-1", "3", "False"), ("3", "-1", "1", "True")])
