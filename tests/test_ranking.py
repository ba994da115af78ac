"""The ranking frame: each trial's final error, one row per variant, and the rank of the variants that learned."""
import math

import pandas as pd
import pytest

from analysis.ranking import final_errors, least_squares_last, ranked, status_line, variant_frame
from analysis.variants import variants_of
from helpers.frames import errors_frame

COSTS = dict(wall_time_s=10.0, parameters=1000, step_flops=1e9, training_flops=1e12)


def test_ranking_leaves_out_what_did_not_learn():
    frame = errors_frame("model.n_layer", {1: [0.30, 0.34], 2: [0.92, 0.97], 3: [0.10, 0.12]})
    frame = frame.assign(status="finished", last_step=99, wall_time_s=10.0, parameters=1000, step_flops=1e9,
                         training_flops=1e12)
    table = ranked(variant_frame(frame, variants_of(frame, "h")))
    assert list(table["variant"]) == ["L=3", "L=1", "L=2"]
    assert table["rank"].tolist()[:2] == [1, 2] and pd.isna(table["rank"].iloc[2])
    assert table["learned"].tolist() == [True, True, False]
    assert table["mean"].tolist() == pytest.approx([0.11, 0.32, 0.945])
    assert table["seed_values"].iloc[1] == (0.30, 0.34) and table["n_seeds"].tolist() == [2, 2, 2]
    # on a task whose predict-0 error is 4, 0.95 is far from the plateau
    relu = ranked(variant_frame(frame.assign(predict_zero=4.0), variants_of(frame, "h")))
    assert relu["learned"].all()


def test_the_seeds_values_are_in_seed_order_whatever_the_rows_order():
    """An extension's trials come before the first run's in the frames (their folders sort first)."""
    frame = errors_frame("model.n_layer", {1: [0.30, 0.34, 0.20, 0.50], 2: [0.10, 0.12, 0.11, 0.13]})
    frame = frame.assign(status="finished", last_step=99, **COSTS)
    in_order = ranked(variant_frame(frame, variants_of(frame, "h")))
    shuffled = ranked(variant_frame(frame.iloc[[6, 2, 7, 3, 0, 4, 1, 5]], variants_of(frame, "h")))
    assert shuffled["seed_values"].tolist() == [(0.10, 0.12, 0.11, 0.13), (0.30, 0.34, 0.20, 0.50)]
    pd.testing.assert_frame_equal(shuffled, in_order)  # the seed band too


def test_a_variant_without_errors_is_unranked_and_after_those_that_did_not_learn():
    frame = errors_frame("model.n_layer", {1: [0.93, 0.95], 2: [0.20, 0.25], 3: [math.nan]})
    frame = frame.assign(status=["finished"] * 4 + ["diverged"], last_step=[99] * 4 + [7], **COSTS)
    table = ranked(variant_frame(frame, variants_of(frame, "h")))
    assert list(table["variant"]) == ["L=2", "L=1", "L=3"]
    assert table["rank"].tolist()[0] == 1 and table["rank"].iloc[1:].isna().all()
    assert table["learned"].tolist() == [True, False, False] and table["n_seeds"].tolist() == [2, 2, 0]
    assert table["status"].tolist() == ["2 finished", "2 finished", "1 diverged at step 7"]


def test_equal_errors_keep_the_display_order():
    frame = errors_frame("model.n_layer", {2: [0.2], 1: [0.2], 3: [0.1]}).assign(status="finished", last_step=9,
                                                                                **COSTS)
    table = ranked(variant_frame(frame, variants_of(frame, "h")))
    assert list(table["variant"]) == ["L=3", "L=1", "L=2"] and table["rank"].tolist() == [1, 2, 3]


def test_status_line_says_where_unfinished_trials_stopped():
    trials = pd.DataFrame({"status": ["finished", "diverged", "finished", "incomplete", "incomplete"],
                           "last_step": [99, 21, 99, 60, 40]})
    assert status_line(trials) == "2 finished, 1 diverged at step 21, 2 incomplete at steps 40, 60"


def test_without_an_evaluation_only_finished_trials_get_the_training_error():
    summary = pd.DataFrame({"trial_id": ["a", "b"], "status": ["finished", "diverged"],
                            "final_eval_loss_last": [0.25, 0.5]})
    errors, source = final_errors(summary, None)
    assert errors["error"].tolist()[0] == 0.25 and pd.isna(errors["error"].iloc[1])
    assert "eval/loss_last" in source
    assert math.isnan(least_squares_last(None))


def test_with_an_evaluation_the_error_is_the_model_at_the_last_position():
    summary = pd.DataFrame({"trial_id": ["a", "b"], "status": ["finished", "finished"],
                            "final_eval_loss_last": [0.9, 0.9]})
    evaluation = pd.DataFrame([
        {"trial_id": t, "kind": "model", "name": name, "axis": "k", "x": x, "mean": mean, "n_prompts": 64}
        for t, name, x, mean in [("a", "model@b", 4, 0.8), ("a", "model@b", 5, 0.3), ("a", "model@max_loops", 5, 0.1),
                                 ("b", "model", 5, 0.4)]
    ] + [{"trial_id": "a", "kind": "baseline", "name": "least_squares", "axis": "k", "x": x, "mean": mean,
          "n_prompts": 64} for x, mean in [(4, 0.5), (5, 0.01)]])
    errors, source = final_errors(summary, evaluation)
    assert errors["error"].tolist() == [0.3, 0.4]
    assert source == "the evaluation's 64 fresh prompts at k = 5, after the training loop count b"
    assert least_squares_last(evaluation) == 0.01
