import pandas as pd
import pytest
import torch

from analysis import AnalysisWarning, evaluate_experiment
from analysis.baselines import SKLEARN
from analysis.evaluation import CURVE_COLUMNS, EVALUATION_FILE, PromptSetting, aggregate_evaluation, evaluation_of
from helpers.experiments import (TRIALS, checkpoint_state, config_dict, metric_row, ray_row,
                                         write_experiment, write_trial)
from trainers.models import build_model
from trainers.records import Evaluation, SpaceRecord, write_space_record
from trainers.tasks import sample_batch

N_PROMPTS, MAX_LOOPS = 64, 6


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = write_experiment(tmp_path_factory.mktemp("experiment"))
    return root, evaluate_experiment(root, n_prompts=N_PROMPTS, max_loops=MAX_LOOPS, seed=3)


def curve(frame, trial_id, name, axis):
    rows = frame[(frame["trial_id"] == trial_id) & (frame["name"] == name) & (frame["axis"] == axis)]
    return rows.sort_values("x").set_index("x")


def test_every_looped_trial_has_its_curves(evaluated):
    root, frame = evaluated
    pd.testing.assert_frame_equal(pd.read_parquet(root / EVALUATION_FILE), frame)
    assert set(frame["trial_id"]) == set(TRIALS)
    names = set(zip(frame["kind"], frame["name"], frame["axis"]))
    assert names == {("model", "model@b", "k"), ("model", "model@max_loops", "k"), ("model", "model", "loop"),
                     ("baseline", "least_squares", "k"), ("baseline", "averaging", "k"), ("baseline", "3nn", "k")}
    assert curve(frame, "t1", "model@b", "k").index.tolist() == list(range(7))  # k = 0 .. n_points - 1
    assert curve(frame, "t1", "model", "loop").index.tolist() == list(range(1, MAX_LOOPS + 1))
    assert ((frame["lo"] <= frame["mean"] + 1e-12) & (frame["mean"] <= frame["hi"] + 1e-12)).all()
    assert {"model.n_last_tokens", "model.n_layer", "training.seed", "hypotheses"} <= set(frame.columns)
    assert (frame["train_loops"] == 3).all() and (frame["max_loops"] == MAX_LOOPS).all()
    # the prompt setting every row was scored on: config_dict's n_dims_truncated=3 and n_points=7
    assert (frame["task_name"] == "linear_regression").all() and (frame["n_dims_truncated"] == 3).all()
    assert (frame["n_points"] == 7).all() and (frame["n_prompts"] == N_PROMPTS).all()


def test_model_error_matches_a_direct_computation(evaluated):
    root, frame = evaluated
    config = config_dict(n_layer=2, seed=0, train_steps=91)
    xs, ys = PromptSetting.final(config).sample(N_PROMPTS, seed=3)
    model = build_model(config["model"])
    model.load_state_dict(torch.load(next(root.glob("train_t5_*/checkpoint_*/checkpoint.pt")),
                                     weights_only=True)["model"])
    with torch.no_grad():
        preds = model.eval()(xs, ys, 0, 3)
    expected = ((preds[-1] - ys) ** 2).mean(dim=0) / 3  # normaliser: n_dims_truncated
    assert curve(frame, "t5", "model@b", "k")["mean"].tolist() == pytest.approx(expected.tolist(), rel=1e-4)
    # the loop axis at the last position agrees with the k axis after b and after max_loops iterations
    loop = curve(frame, "t5", "model", "loop")["mean"]
    assert loop[3] == pytest.approx(curve(frame, "t5", "model@b", "k")["mean"][6], rel=1e-6)
    assert loop[MAX_LOOPS] == pytest.approx(curve(frame, "t5", "model@max_loops", "k")["mean"][6], rel=1e-6)


def test_baselines_share_the_prompts_and_least_squares_solves_them(evaluated):
    _, frame = evaluated
    first = curve(frame, "t1", "least_squares", "k")
    pd.testing.assert_series_equal(first["mean"], curve(frame, "t5", "least_squares", "k")["mean"])
    assert first["mean"][0] == pytest.approx(curve(frame, "t1", "averaging", "k")["mean"][0])  # both predict 0
    assert first["mean"].loc[3:].max() < 1e-8  # k >= n_dims_truncated = 3


def test_seeds_average_and_a_lone_seed_keeps_its_band(evaluated):
    _, frame = evaluated
    mean = aggregate_evaluation(frame)
    models = mean[(mean["kind"] == "model") & (mean["name"] == "model@b") & (mean["x"] == 6)]
    pair = models[(models["model.n_last_tokens"] == 2)].iloc[0]
    t3, t4 = (curve(frame, t, "model@b", "k")["mean"][6] for t in ("t3", "t4"))
    assert pair["n_seeds"] == 2 and pair["mean"] == pytest.approx((t3 + t4) / 2)
    lone = models[models["model.n_layer"] == 2].iloc[0]
    own = curve(frame, "t5", "model@b", "k").loc[6]
    assert lone["n_seeds"] == 1 and (lone["lo"], lone["hi"]) == pytest.approx((own["lo"], own["hi"]))
    assert len(mean[(mean["kind"] == "baseline") & (mean["name"] == "3nn")]) == 7
    assert (mean.loc[mean["kind"] == "baseline", "n_seeds"] == 1).all()


def test_plain_transformer_and_sparse_task(tmp_path):
    config = config_dict(family="gpt2", n_layer=1, task_name="sparse_linear_regression", train_steps=1)
    write_trial(tmp_path, "plain", hypotheses=["baseline"],
                rows=[ray_row(metric_row(0, 1.0), "plain", 0)], checkpoint=checkpoint_state(config, step=1))
    frame = evaluate_experiment(tmp_path, n_prompts=32, out=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / EVALUATION_FILE).exists() and not (tmp_path / EVALUATION_FILE).exists()
    models = frame[frame["kind"] == "model"]
    assert set(zip(models["name"], models["axis"])) == {("model", "k")}
    assert ("lasso" in set(frame["name"])) == SKLEARN
    xs, ys = PromptSetting.final(config).sample(32, seed=0)
    # with no examples every baseline predicts 0: the error is E[y^2] / sparsity (2 of 3 coordinates)
    k0 = frame[(frame["name"] == "least_squares") & (frame["x"] == 0)]["mean"].iloc[0]
    assert k0 == pytest.approx((ys[:, 0] ** 2).mean().item() / 2, rel=1e-5)


def test_trials_without_a_checkpoint_are_skipped_with_a_warning(tmp_path):
    write_trial(tmp_path, "young", hypotheses=["x"], rows=[ray_row(metric_row(0, 1.0), "young", 0)])
    with pytest.warns(AnalysisWarning, match="trial young: no checkpoint yet"):
        frame = evaluate_experiment(tmp_path, n_prompts=8)
    assert frame.empty and (tmp_path / EVALUATION_FILE).exists()
    assert list(frame.columns) == ["trial_id", "hypotheses", *CURVE_COLUMNS]


def test_a_trial_without_a_checkpoint_does_not_stop_the_others(tmp_path):
    write_trial(tmp_path, "a_young", hypotheses=["x"], rows=[ray_row(metric_row(0, 1.0), "young", 0)])
    write_trial(tmp_path, "b_done", hypotheses=["x"],
                rows=[ray_row(metric_row(0, 1.0), "done", 0)], checkpoint=checkpoint_state(config_dict(), step=1))
    with pytest.warns(AnalysisWarning, match="trial young"):
        frame = evaluate_experiment(tmp_path, n_prompts=8, max_loops=4)
    assert set(frame["trial_id"]) == {"done"}


def test_looped_models_run_to_ten_times_their_training_loops_by_default(tmp_path):
    write_trial(tmp_path, "t", hypotheses=["x"], rows=[ray_row(metric_row(0, 1.0), "t", 0)],
                checkpoint=checkpoint_state(config_dict(n_loops=2), step=1))
    frame = evaluate_experiment(tmp_path, n_prompts=8)
    assert curve(frame, "t", "model", "loop").index.tolist() == list(range(1, 21))
    assert (frame["train_loops"] == 2).all() and (frame["max_loops"] == 20).all()


def test_the_space_record_sets_the_evaluation_and_what_is_given_goes_over_it(tmp_path):
    """The record's `evaluation:` where the call gives nothing; each setting given replaces the record's alone."""
    write_trial(tmp_path, "t", hypotheses=["x"], rows=[ray_row(metric_row(0, 1.0), "t", 0)],
                checkpoint=checkpoint_state(config_dict(n_loops=2), step=1))
    write_space_record(tmp_path, SpaceRecord(evaluation=Evaluation(n_prompts=12, seed=5, max_loops=4)))
    recorded = evaluate_experiment(tmp_path)
    assert (recorded["n_prompts"] == 12).all() and (recorded["max_loops"] == 4).all()
    xs, ys = PromptSetting.final(config_dict(n_loops=2)).sample(12, seed=5)
    least_squares = curve(recorded, "t", "least_squares", "k")["mean"]
    assert least_squares[0] == pytest.approx(float((ys[:, 0] ** 2).mean()) / 3, rel=1e-5)  # predicts 0 at k = 0
    given = evaluate_experiment(tmp_path, n_prompts=8)
    assert (given["n_prompts"] == 8).all() and (given["max_loops"] == 4).all()
    assert evaluation_of(None) == Evaluation() == Evaluation(n_prompts=1280, seed=0, max_loops=None)
    assert evaluation_of(None, n_prompts=None, seed=7) == Evaluation(seed=7)


@pytest.mark.parametrize("task_name, sparsity", [("sparse_linear_regression", 2), ("linear_regression", 3)])
def test_prompts_are_the_task_sampler_at_the_final_curriculum(task_name, sparsity):
    config = config_dict(task_name=task_name, n_dims=5, n_dims_truncated=4, n_points=6)
    config["training"]["sparsity"] = sparsity
    xs, ys = PromptSetting.final(config).sample(16, seed=9)
    want_xs, want_ys = sample_batch(task_name, batch_size=16, n_points=6, n_dims=5, n_dims_truncated=4,
                                    generator=torch.Generator().manual_seed(9), sparsity=sparsity)
    torch.testing.assert_close((xs, ys), (want_xs, want_ys), atol=0, rtol=0)
    assert PromptSetting.final(config).normaliser == (2.0 if task_name.startswith("sparse") else 4.0)


def test_a_checkpoint_that_builds_no_model_is_skipped_with_a_warning(tmp_path):
    state = checkpoint_state(config_dict(), step=1)
    state["config"]["model"]["n_layer"] = 2  # the weights are those of one layer
    write_trial(tmp_path, "odd", hypotheses=["x"],
                rows=[ray_row(metric_row(0, 1.0), "odd", 0)], checkpoint=state)
    with pytest.warns(AnalysisWarning, match=r"trial odd: checkpoint does not build a model \(RuntimeError"):
        assert evaluate_experiment(tmp_path, n_prompts=8).empty
