import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from analysis import AnalysisError, AnalysisWarning, aggregate_seeds, load_curves, load_summary
from helpers.experiments import (N_ROWS, TRIALS, checkpoint_state, config_dict, eval_losses, metric_row,
                                         ray_row, write_experiment, write_trial)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return write_experiment(tmp_path_factory.mktemp("experiment"), with_model=False)


def test_curves_have_one_row_per_trial_and_step(experiment):
    curves = load_curves(experiment)
    assert len(curves) == len(TRIALS) * N_ROWS
    assert not curves.duplicated(["trial_id", "step"]).any()
    assert {"trial_id", "hypotheses", "model.n_last_tokens", "model.n_layer", "training.seed", "step",
            "eval/loss", "overall_loss", "time_total_s", "node_id"} <= set(curves.columns)
    assert not {"training_iteration", "hostname", "config", "done", "timestamp"} & set(curves.columns)
    t1 = curves[curves["trial_id"] == "t1"].sort_values("step")
    assert t1["hypotheses"].iloc[0] == "information_flow;looped_n_layers"
    np.testing.assert_allclose(t1["eval/loss"], eval_losses("t1"))


def test_keys_a_trial_leaves_out_come_from_its_checkpoint_config(tmp_path):
    root = write_experiment(tmp_path)
    summary = load_summary(root).set_index("trial_id")
    assert summary.loc["t3", "model.n_layer"] == 1 and summary.loc["t3", "model.n_last_tokens"] == 2
    assert summary.loc["t5", "model.n_last_tokens"] == -1 and summary.loc["t5", "model.n_layer"] == 2


def test_aggregate_over_seeds(experiment):
    mean = aggregate_seeds(load_curves(experiment))
    assert "training.seed" not in mean.columns
    row = mean[(mean["model.n_last_tokens"] == 2) & (mean["step"] == 30)].iloc[0]
    t3, t4 = eval_losses("t3")[3], eval_losses("t4")[3]
    assert row["n_seeds"] == 2
    assert row["mean"] == pytest.approx((t3 + t4) / 2)
    # resampling two values gives t3 or t4 a quarter of the time each: beyond the 5% and 95% quantiles
    assert row["lo"] == pytest.approx(t3) and row["hi"] == pytest.approx(t4)
    single = mean[(mean["model.n_layer"] == 2) & (mean["step"] == 30)].iloc[0]
    assert single["n_seeds"] == 1 and single["lo"] == single["mean"] == single["hi"]
    assert single["mean"] == pytest.approx(eval_losses("t5")[3])
    assert len(mean) == 3 * N_ROWS


def test_seed_band_narrows_around_the_mean_with_many_seeds():
    values = np.random.default_rng(0).normal(1.0, 0.1, size=50)
    frame = pd.DataFrame({"hypotheses": "h", "model.n_layer": 1, "training.seed": range(50), "step": 0,
                          "eval/loss": values})
    row = aggregate_seeds(frame).iloc[0]
    assert row["lo"] < row["mean"] < row["hi"]
    # the band of a mean of 50 draws is about 2 x 1.645 x 0.1 / sqrt(50) wide
    assert row["hi"] - row["lo"] == pytest.approx(2 * 1.645 * 0.1 / math.sqrt(50), rel=0.3)


def _trial(n_last_tokens=-1):
    """write_trial's hypotheses and values of a trial of one hypothesis."""
    return {"hypotheses": ["information_flow"], "values": {"model.n_last_tokens": n_last_tokens, "training.seed": 0}}


def test_retried_trial_history_is_rebuilt_from_checkpoint_and_result_rows(tmp_path):
    """First attempt logs 0..50 and checkpoints at 40; after the restore result.json has lost 10..30 and
    holds 40 and 50 twice (ray-project/ray#41668); the second attempt runs to 90."""
    first = [metric_row(s, 1.0, eval_loss=1.0 - s / 100) for s in range(0, 60, 10)]
    second = [metric_row(s, 0.5, eval_loss=0.5 - s / 1000) for s in range(40, 100, 10)]
    result = [ray_row(r, "tr", i) for i, r in enumerate([first[0], first[4], first[5], *second])]
    checkpoint = checkpoint_state(config_dict(train_steps=91), step=41, metrics=first[:5])
    write_trial(tmp_path, "trial_tr", **_trial(), rows=result, checkpoint=checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AnalysisWarning)
        curves = load_curves(tmp_path)
    assert curves["step"].tolist() == list(range(0, 100, 10))
    by_step = curves.set_index("step")
    assert by_step.loc[20, "eval/loss"] == pytest.approx(0.8)  # only the checkpoint kept it
    assert math.isnan(by_step.loc[20, "time_total_s"])  # Ray's column: nobody has it for a lost row
    assert by_step.loc[50, "eval/loss"] == pytest.approx(0.45)  # the retry's row wins over the first's
    assert load_summary(tmp_path)["status"].iloc[0] == "finished"


def test_a_trial_restarted_from_step_0_has_one_history(tmp_path):
    """No checkpoint of the first attempt loaded, so the retry started again from step 0: result.json holds the
    first attempt's 0..40, then the retry's 0..90; the curves hold each step once, the retry's."""
    first = [metric_row(s, 1.0, eval_loss=2.0) for s in range(0, 50, 10)]
    retry = [metric_row(s, 0.5, eval_loss=1.0 - s / 100) for s in range(0, 100, 10)]
    result = [ray_row(r, "tr", i) for i, r in enumerate([*first, *retry])]
    checkpoint = checkpoint_state(config_dict(train_steps=91), step=91, metrics=retry)
    write_trial(tmp_path, "trial_tr", **_trial(), rows=result, checkpoint=checkpoint)
    curves = load_curves(tmp_path)
    assert curves["step"].tolist() == list(range(0, 100, 10))
    assert curves["eval/loss"].tolist() == pytest.approx([1.0 - s / 100 for s in range(0, 100, 10)])
    assert load_summary(tmp_path)["status"].iloc[0] == "finished"


def test_steps_no_source_has_are_reported(tmp_path):
    rows = [ray_row(metric_row(s, 1.0), "gappy", i) for i, s in enumerate(range(0, 100, 10)) if s not in (60, 70)]
    write_trial(tmp_path, "trial_gappy", **_trial(), rows=rows)
    with pytest.warns(AnalysisWarning, match=r"trial gappy: 2 logged step\(s\) missing .*60, 70"):
        curves = load_curves(tmp_path)
    assert len(curves) == 8


def test_a_half_written_last_line_is_skipped_quietly(tmp_path):
    rows = [ray_row(metric_row(s, 1.0, eval_loss=1.0), "run", i) for i, s in enumerate(range(0, 50, 10))]
    write_trial(tmp_path, "trial_run", **_trial(), rows=rows, truncated_tail='{"step": 50, "overall_lo')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curves = load_curves(tmp_path)
    assert curves["step"].tolist() == [0, 10, 20, 30, 40]
    assert load_summary(tmp_path)["status"].iloc[0] == "incomplete"


def test_a_broken_line_inside_the_file_is_reported(tmp_path):
    folder = write_trial(tmp_path, "trial_x", **_trial(), rows=[ray_row(metric_row(0, 1.0), "x", 0)])
    lines = (folder / "result.json").read_text()
    (folder / "result.json").write_text("{broken\n" + lines)
    with pytest.warns(AnalysisWarning, match="line 1 is not JSON"):
        assert len(load_curves(tmp_path)) == 1


def test_summary_status_and_losses(tmp_path):
    config = config_dict(train_steps=91)
    finished = [metric_row(s, 1.0, eval_loss=v) for s, v in zip(range(0, 100, 10), [3, 1, 2, 0.5, 4, 1, 1, 1, 1, .9])]
    diverged = [metric_row(0, 1.0, eval_loss=2.0), {**metric_row(10, math.inf), "diverged": True}]
    partial = [metric_row(s, 1.0, eval_loss=1.0) for s in (0, 10)]
    write_trial(tmp_path, "a", **_trial(-1), rows=[ray_row(r, "fin", i) for i, r in enumerate(finished)],
                checkpoint=checkpoint_state(config, step=91, metrics=finished))
    write_trial(tmp_path, "b", **_trial(2), rows=[ray_row(r, "div", i) for i, r in enumerate(diverged)])
    write_trial(tmp_path, "c", **_trial(3), rows=[ray_row(r, "err", i) for i, r in enumerate(partial)],
                error=True)
    write_trial(tmp_path, "d", **_trial(4), rows=[ray_row(r, "inc", i) for i, r in enumerate(partial)])
    write_trial(tmp_path, "e", **_trial(5),
                rows=[ray_row(r, "done", i, done=r["step"] == 10) for i, r in enumerate(partial)])
    summary = load_summary(tmp_path).set_index("trial_id")
    assert summary["status"].to_dict() == {"fin": "finished", "div": "diverged", "err": "error",
                                           "inc": "incomplete", "done": "stopped early"}
    assert summary.loc["fin", "final_eval_loss"] == pytest.approx(0.9)
    assert summary.loc["fin", "best_eval_loss"] == pytest.approx(0.5)
    assert summary.loc["fin", "last_step"] == 90 and summary.loc["fin", "train_steps"] == 91
    assert summary.loc["fin", "wall_time_s"] == pytest.approx(90 / 5)
    assert summary.loc["fin", "node_id"] == "node-a"
    assert math.isnan(summary.loc["inc", "train_steps"])


def test_the_records_values_and_lists_become_columns(tmp_path):
    """The record's dotted values (grid and sampled keys alike) are columns, a list as JSON text; the trial id
    and the hypotheses, sorted, come from the record too."""
    values = {"model.n_layer": 3, "training.learning_rate": 3e-4, "training.tags": [1, 2]}
    write_trial(tmp_path, "folder_name", hypotheses=["looped", "baseline"], values=values, trial_id="abc_00001",
                rows=[metric_row(0, 1.0)])
    row = load_curves(tmp_path).iloc[0]
    assert row["trial_id"] == "abc_00001" and row["hypotheses"] == "baseline;looped" and row["model.n_layer"] == 3
    assert row["training.learning_rate"] == pytest.approx(3e-4) and json.loads(row["training.tags"]) == [1, 2]


def test_an_experiment_of_the_previous_runner_is_one_clear_error(tmp_path):
    """Trial folders with Ray's params.json and no trial.json: the record the analysis reads is missing."""
    folder = tmp_path / "train_t_00000"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({"variant": {"hypotheses": ["e"], "training.seed": 0}}))
    (folder / "result.json").write_text(json.dumps(ray_row(metric_row(0, 1.0), "t", 0)) + "\n")
    expected = f"^{tmp_path}: no trial folder holds trial.json, only Ray's params.json: [^\n]*`python -m tune_looped.upgrade {tmp_path}` writes them$"
    with pytest.raises(AnalysisError, match=expected):
        load_curves(tmp_path)


def test_a_folder_without_its_record_beside_recorded_ones_is_skipped_with_a_warning(tmp_path):
    write_trial(tmp_path, "a", **_trial(), rows=[ray_row(metric_row(0, 1.0), "kept", 0)])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "params.json").write_text("{}")
    with pytest.warns(AnalysisWarning, match=f"^{tmp_path / 'b'}: params.json but no trial.json; trial skipped$"):
        curves = load_curves(tmp_path)
    assert set(curves["trial_id"]) == {"kept"}


@pytest.mark.parametrize("content, message", [
    (b'{"trial_id": "x", "experi', r"trial.json unreadable \(.*\); trial skipped"),
    (b"\xff\xfe{}", r"trial.json unreadable \(.*\); trial skipped"),
    (b'{"variant": {"hypotheses": ["e"]}}', r"trial.json is not the runner's record"),
    (b'{"trial_id": "x", "hypotheses": "e", "values": {}}', r"trial.json is not the runner's record"),
    (b'{"trial_id": "x", "hypotheses": [["e"]], "values": {}}', r"trial.json is not the runner's record"),
], ids=["truncated", "not-utf8", "params-shape", "hypotheses-a-string", "hypotheses-not-names"])
def test_an_unreadable_record_skips_its_trial_with_a_warning(tmp_path, content, message):
    write_trial(tmp_path, "a", **_trial(), rows=[ray_row(metric_row(0, 1.0), "kept", 0)])
    folder = write_trial(tmp_path, "b", **_trial(), rows=[ray_row(metric_row(0, 1.0), "bad", 0)])
    (folder / "trial.json").write_bytes(content)
    with pytest.warns(AnalysisWarning, match=f"^{folder}: {message}"):
        curves = load_curves(tmp_path)
    assert set(curves["trial_id"]) == {"kept"}


def test_missing_or_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(AnalysisError, match=f"^{tmp_path / 'nope'}: no such experiment directory$"):
        load_curves(tmp_path / "nope")
    with pytest.raises(AnalysisError, match=f"^{tmp_path}: no trials there"):
        load_summary(tmp_path)


# a text file makes torch's weights-only unpickler raise IndexError, not one of its usual errors
@pytest.mark.parametrize("content", [b"not a zip file", b"\x80\x02garbage", b"plain text\n"])
def test_an_unloadable_checkpoint_gives_way_to_the_rows(tmp_path, content):
    folder = write_trial(tmp_path, "t", **_trial(), rows=[ray_row(metric_row(0, 1.0), "t", 0)])
    (folder / "checkpoint_000002").mkdir()
    (folder / "checkpoint_000002" / "checkpoint.pt").write_bytes(content)
    with pytest.warns(AnalysisWarning, match="checkpoint not loadable"):
        assert len(load_curves(tmp_path)) == 1


def test_a_trial_one_step_short_of_its_end_is_incomplete(tmp_path):
    rows = [metric_row(s, 1.0, eval_loss=1.0) for s in [*range(0, 90, 10), 89]]
    write_trial(tmp_path, "t", **_trial(), rows=[ray_row(r, "short", i) for i, r in enumerate(rows)],
                checkpoint=checkpoint_state(config_dict(train_steps=91), step=90, metrics=rows))
    summary = load_summary(tmp_path).iloc[0]
    assert summary["status"] == "incomplete" and summary["last_step"] == 89 and summary["train_steps"] == 91


def test_wall_time_falls_back_to_the_trainer_clock_without_ray_rows(tmp_path):
    """Rows only a checkpoint kept have no Ray `time_total_s`; the trainer's `elapsed_s` stands in."""
    rows = [metric_row(s, 1.0, eval_loss=0.5) for s in (0, 10, 20)]
    write_trial(tmp_path, "t", **_trial(), checkpoint=checkpoint_state(config_dict(train_steps=21), step=21,
                                                                             metrics=rows))
    summary = load_summary(tmp_path).iloc[0]
    assert summary["wall_time_s"] == pytest.approx(2.0) and summary["final_eval_loss"] == pytest.approx(0.5)


def test_seed_mean_carries_the_union_of_the_hypotheses():
    frame = pd.DataFrame({"hypotheses": ["a;b", "b;c"], "model.n_layer": 1, "training.seed": [0, 1], "step": 0,
                          "eval/loss": [1.0, 3.0]})
    row = aggregate_seeds(frame).iloc[0]
    assert row["hypotheses"] == "a;b;c" and row["mean"] == pytest.approx(2.0) and row["n_seeds"] == 2


def test_a_trial_that_has_not_reported_yet_is_summarised_as_incomplete(tmp_path):
    """A running sweep: one trial has rows, another has only its folder so far."""
    write_trial(tmp_path, "a", **_trial(-1), rows=[ray_row(metric_row(0, 1.0, eval_loss=0.7), "ran", 0)])
    write_trial(tmp_path, "b", **_trial(2))
    summary = load_summary(tmp_path).set_index("trial_id")
    assert summary.loc["ran", "final_eval_loss"] == pytest.approx(0.7)
    pending = summary.loc[summary.index != "ran"].iloc[0]
    assert pending["status"] == "incomplete" and math.isnan(pending["last_step"])
    assert math.isnan(pending["final_eval_loss"]) and math.isnan(pending["best_eval_loss"])
