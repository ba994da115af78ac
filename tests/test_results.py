"""results.parquet, each trial's answers: every column against a computation of its own (the checkpoints run on the
evaluation's prompts by hand), the report's k = d column, and an experiment analysed before the file existed."""
import math
import re

import pandas as pd
import pytest
import torch
import yaml

from analysis import run_all
from analysis.__main__ import main
from analysis.plots import read_evaluation
from analysis.results import COMPARED, REFERENCE, RESULTS_COLUMNS, evaluated, read_results, results_frame
from helpers.experiments import N_ROWS, TRIALS, config_dict, eval_losses, write_experiment, write_finished_trial
from helpers.markdown import table_rows
from trainers.models import build_model
from trainers.layout import RESULTS_FILE
from trainers.records import SEED_KEY, SPACE_RECORD
from trainers.tasks import sample_batch

RECORD = {"name": "results", "hypotheses": [
    {"name": "information_flow", "reference": {"model.n_last_tokens": -1}, "expect": "worse"},
    {"name": "looped_n_layers", "reference": {"model.n_layer": 1}, "expect": "better"}]}
N_PROMPTS, MAX_LOOPS = 32, 5
# the helpers' trials (d = 3, 7 points, b = 3 loops) and t6, a second seed of L=2 that ASHA stopped at step 40
STOPPED = {"t6": (["looped_n_layers"], {"model.n_layer": 2}, dict(n_layer=2, seed=1))}
VARIANTS = {("t1", "information_flow"): ("n_last_tokens=all", REFERENCE),
            ("t2", "information_flow"): ("n_last_tokens=all", REFERENCE),
            ("t3", "information_flow"): ("n_last_tokens=2", COMPARED),
            ("t4", "information_flow"): ("n_last_tokens=2", COMPARED),
            ("t1", "looped_n_layers"): ("L=1", REFERENCE), ("t2", "looped_n_layers"): ("L=1", REFERENCE),
            ("t5", "looped_n_layers"): ("L=2", COMPARED), ("t6", "looped_n_layers"): ("L=2", COMPARED)}


def write_study(root):
    root = write_experiment(root)
    hypotheses, variant, overrides = STOPPED["t6"]
    write_finished_trial(root, "train_t6_00000_0", hypotheses=hypotheses, variant=variant, trial_id="t6",
                         config=config_dict(train_steps=N_ROWS * 10 - 9, **overrides), eval_losses=[1.0] * 5)
    (root / SPACE_RECORD).write_text(yaml.safe_dump(RECORD))
    return root


def analyse_study(root):
    run_all(write_study(root), n_prompts=N_PROMPTS, max_loops=MAX_LOOPS)
    return root


@pytest.fixture
def analysed(finished, tmp_path):
    return finished.copy(analyse_study, tmp_path / "analysed" / "study")


def own_errors(trial_folder) -> dict:
    """The trial's checkpoint on the evaluation's prompts (seed 0), computed here: squared error over E[y^2] = d
    (linear regression with unit weights), mean over prompts, after b loops and after MAX_LOOPS."""
    state = torch.load(trial_folder / "checkpoint_000001" / "checkpoint.pt", weights_only=False)
    config = state["config"]
    model = build_model(config["model"])
    model.load_state_dict(state["model"])
    curriculum = config["training"]["curriculum"]
    d, n_points, b = curriculum["dims"]["end"], curriculum["points"]["end"], curriculum["loops"]["end"]
    xs, ys = sample_batch("linear_regression", batch_size=N_PROMPTS, n_points=n_points,
                          n_dims=config["model"]["n_dims"], n_dims_truncated=d,
                          generator=torch.Generator().manual_seed(0), sparsity=2)
    with torch.no_grad():
        predictions = model.eval()(xs, ys, 0, MAX_LOOPS)
    after_b, after_max = (((p - ys) ** 2).mean(dim=0).numpy() / d for p in (predictions[b - 1], predictions[-1]))
    return {"error_last": after_b[-1], "error_at_d": after_b[d], "error_last_max_loops": after_max[-1], "d": d}


def test_the_file_has_one_row_per_trial_and_hypothesis_with_its_variant_role_seed_and_status(analysed):
    results = read_results(analysed)
    assert list(results.columns) == RESULTS_COLUMNS
    assert {(r.trial_id, r.hypothesis): (r.variant, r.role) for r in results.itertuples()} == VARIANTS
    assert len(results) == len(VARIANTS)
    seeds = {tid: spec[2]["seed"] for tid, spec in {**TRIALS, **STOPPED}.items()}
    assert dict(zip(results["trial_id"], results[SEED_KEY])) == seeds
    # the summary's status column, which says t6 reported done at step 40 of 91
    status = dict(zip(results["trial_id"], results["status"]))
    assert status == {**{tid: "finished" for tid in TRIALS}, "t6": "stopped early"}
    summary = pd.read_parquet(analysed / "summary.parquet").set_index("trial_id")["status"]
    assert all(summary[tid] == s for tid, s in status.items())


def test_each_error_is_the_checkpoint_run_again_by_hand(analysed):
    results = read_results(analysed)
    finished = results[results["status"] == "finished"]
    assert len(finished) == 7
    for row in finished.itertuples():
        own = own_errors(analysed / f"train_{row.trial_id}_00000_0")
        assert row.error_last == pytest.approx(own["error_last"], rel=1e-5)
        assert row.error_at_d == pytest.approx(own["error_at_d"], rel=1e-5)
        assert row.error_last_max_loops == pytest.approx(own["error_last_max_loops"], rel=1e-5)
        assert row.d == own["d"] == 3
    # the same trial answers two hypotheses with the same numbers
    t1 = results[results["trial_id"] == "t1"]
    assert t1["error_at_d"].nunique() == 1 and len(t1) == 2
    # t6 was evaluated (its checkpoint has a model) but its last checkpoint is not a finished model
    t6 = results[results["trial_id"] == "t6"].iloc[0]
    assert all(math.isnan(t6[c]) for c in ("error_last", "error_at_d", "error_last_max_loops"))
    assert t6["d"] == 3


def test_the_evaluations_settings_and_the_source_of_the_last_error(analysed):
    results = read_results(analysed)
    settings = results[["task_name", "d", "n_points", "train_loops", "max_loops", "n_prompts"]]
    assert settings.drop_duplicates().values.tolist() == [["linear_regression", 3, 7, 3, MAX_LOOPS, N_PROMPTS]]
    assert set(results["error_last_source"]) == {
        f"the evaluation's {N_PROMPTS} fresh prompts at k = 6, after the training loop count b"}


def test_the_report_shows_the_error_at_d_beside_the_error_at_the_last_position(analysed):
    results = read_results(analysed)
    report = (analysed / "REPORT.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| rank"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[3:7] == ["error at the last position", "5%", "95%", "error at k = d"]
    evaluation = read_evaluation(analysed)
    least_squares = evaluation[(evaluation["name"] == "least_squares") & (evaluation["x"] == 3)]["mean"].mean()
    for section in re.split(r"^## ", report, flags=re.M)[1:]:
        hypothesis = section.splitlines()[0].strip()
        rows = {r[1]: r for r in table_rows(section, "rank")}
        own = results[(results["hypothesis"] == hypothesis) & (results["status"] == "finished")]
        for variant, trials in own.groupby("variant"):
            errors = [own_errors(analysed / f"train_{tid}_00000_0")["error_at_d"] for tid in trials["trial_id"]]
            assert float(rows[f"`{variant}`"][6]) == pytest.approx(sum(errors) / len(errors), rel=1e-3)
        assert float(rows["least squares"][6]) == pytest.approx(least_squares, rel=1e-3, abs=1e-9)
        assert rows["predict 0"][6] == rows["predict 0"][3] == "1"


@pytest.mark.parametrize("command", ["report", "plot"])
def test_an_experiment_analysed_before_the_file_existed_gets_it(tmp_path, analysed, command):
    """What an analysis of before left (the frames, the evaluation, REPORT.md) and no results.parquet: the command
    writes it, with the numbers `all` writes today."""
    root = write_study(tmp_path / "study")
    for earlier in (["export", str(root)],
                    ["evaluate", str(root), "--n-prompts", str(N_PROMPTS), "--max-loops", str(MAX_LOOPS)]):
        assert main(earlier) == 0
    (root / "REPORT.md").write_text("# an old report without the k = d column\n")
    assert not (root / RESULTS_FILE).exists()
    assert main([command, str(root)]) == 0
    pd.testing.assert_frame_equal(read_results(root), read_results(analysed))
    if command == "report":
        assert "| error at k = d |" in (root / "REPORT.md").read_text()


def test_without_an_evaluation_the_last_error_is_the_trainings_and_there_is_none_at_d(tmp_path):
    root = write_study(tmp_path / "study")
    (root / SPACE_RECORD).unlink()
    assert main(["report", str(root)]) == 0  # no evaluation.parquet: the training's own numbers
    results = read_results(root)
    finished = results[results["status"] == "finished"]
    assert len(finished) == 7 and results.loc[results["trial_id"] == "t6", "error_last"].isna().all()
    for row in finished.itertuples():
        # the helpers' trials log eval/loss_last = eval/loss / 2
        assert row.error_last == pytest.approx(eval_losses(row.trial_id)[-1] / 2, rel=1e-12)
    assert results[["error_at_d", "error_last_max_loops", "d", "n_prompts"]].isna().all().all()
    assert set(results["error_last_source"]) == {
        "the training's held-out prompts at the final curriculum size (`eval/loss_last`)"}
    assert set(results["role"]) == {COMPARED}  # no space record: no reference


def test_a_plain_transformer_has_its_error_at_d_and_none_after_more_loops():
    """A hand-made evaluation of one plain model (curve `model`) with d = 2 and 5 points."""
    rows = [{"trial_id": "p", "kind": "model", "name": "model", "axis": "k", "x": x, "mean": 0.1 * (5 - x),
             "task_name": "linear_regression", "n_dims_truncated": 2, "n_points": 5, "train_loops": 1,
             "max_loops": 1, "n_prompts": 64} for x in range(5)]
    rows += [{**rows[0], "kind": "baseline", "name": "least_squares", "x": x, "mean": 9.0} for x in range(5)]
    found = evaluated(pd.DataFrame(rows)).set_index("trial_id").loc["p"]
    assert found["error_at_d"] == pytest.approx(0.3) and math.isnan(found["error_last_max_loops"])
    assert (found["d"], found["n_points"], found["n_prompts"]) == (2, 5, 64)


def test_an_empty_evaluation_gives_settings_that_are_missing_not_a_failure(analysed):
    summary = pd.read_parquet(analysed / "summary.parquet")
    empty = read_evaluation(analysed).iloc[:0]
    results = results_frame(summary, empty)
    assert list(results.columns) == RESULTS_COLUMNS and results["d"].isna().all()
    assert results["error_last"].notna().sum() == 7  # the training's eval/loss_last of the finished trials
