"""Hypotheses and their variants: which trials belong to which question, and how a variant is named and coloured."""
import pandas as pd

from analysis.variants import PALETTE, UNTAGGED, hypotheses, of_hypothesis, variants_of
from trainers.records import format_setting


def test_variant_labels_are_readable():
    assert format_setting("model.n_last_tokens", 55) == "n_last_tokens=55"
    assert format_setting("model.n_last_tokens", -1.0) == "n_last_tokens=all"
    frame = pd.DataFrame({"hypotheses": "looped_lstm", "model.n_layer": [2, 1, 2, 1],
                          "model.use_lstm_layer": [True, True, False, False], "training.seed": [0, 1, 2, 3],
                          "model.n_embd": 256})
    variants = variants_of(frame, "looped_lstm")
    assert variants.keys == ("model.n_layer", "model.use_lstm_layer")
    assert variants.labels == ("L=1", "L=1 LSTM", "L=2", "L=2 LSTM")
    assert len({variants.colour(label) for label in variants.labels}) == 4
    assert variants_of(frame.iloc[:1], "looped_lstm").labels == ("looped_lstm",)


def test_labels_follow_numeric_order_and_gaps_come_last():
    # as text, 10 would sort before 2; a trial that left the key to the base config has a gap
    frame = pd.DataFrame({"model.n_last_tokens": [10, 2, None, 2, -1], "training.seed": [0, 0, 0, 1, 0]})
    assert variants_of(frame, "h").labels == ("n_last_tokens=all", "n_last_tokens=2", "n_last_tokens=10",
                                              "n_last_tokens=default")


def test_colours_follow_the_display_order_whatever_the_row_order():
    frame = pd.DataFrame({"model.n_layer": [3, 1, 2, 1], "training.seed": [0, 0, 0, 1]})
    shuffled = frame.iloc[::-1].reset_index(drop=True)
    variants, again = variants_of(frame, "h"), variants_of(shuffled, "h")
    assert variants == again
    assert [variants.colour(label) for label in variants.labels] == list(PALETTE[:3])
    assert variants.label(frame.iloc[1]) == "L=1" and variants.colour("L=1") == PALETTE[0]


def test_colours_cycle_past_the_palette():
    frame = pd.DataFrame({"model.n_layer": range(1, len(PALETTE) + 2)})
    variants = variants_of(frame, "h")
    assert variants.colour(variants.labels[len(PALETTE)]) == variants.colour(variants.labels[0])


def test_the_seed_alone_makes_no_variant():
    frame = pd.DataFrame({"model.n_layer": [2, 2], "training.seed": [0, 1], "error": [0.1, 0.2]})
    variants = variants_of(frame, "looped_n_layers")
    assert variants.keys == () and variants.labels == ("looped_n_layers",)
    assert variants.label(frame.iloc[0]) == "looped_n_layers"


def test_trials_of_several_hypotheses_and_untagged_trials():
    frame = pd.DataFrame({"trial_id": ["a", "b", "c"], "hypotheses": ["h1;h2", "h2", None]})
    assert hypotheses(frame) == [UNTAGGED, "h1", "h2"]
    assert of_hypothesis(frame, "h2")["trial_id"].tolist() == ["a", "b"]
    assert of_hypothesis(frame, "h1")["trial_id"].tolist() == ["a"]
    assert of_hypothesis(frame, UNTAGGED)["trial_id"].tolist() == ["c"]
    # an empty frame (no trial evaluated) keeps its columns, which the figures read
    assert of_hypothesis(frame.iloc[:0], "h1").columns.tolist() == ["trial_id", "hypotheses"]
