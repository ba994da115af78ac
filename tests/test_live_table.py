"""The live table's column names; the table itself is checked on a real sweep in test_runner.py."""
from tune_looped.live import short_names


def test_short_names_are_the_last_part_unless_two_share_it():
    assert short_names(["model.n_last_tokens", "model.n_layer", "model.use_lstm_layer", "training.seed"]) == {
        "model.n_last_tokens": "n_last_tokens", "model.n_layer": "n_layer", "model.use_lstm_layer": "lstm",
        "training.seed": "seed"}
    assert short_names(["training.curriculum.loops.end", "training.curriculum.points.end"]) == {
        "training.curriculum.loops.end": "loops.end", "training.curriculum.points.end": "points.end"}
