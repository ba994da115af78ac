"""The answers in W&B: the per-trial results and roles, and the analysis run, read back from the offline run's own
files (its `.wandb` records and the tables it wrote)."""
import functools
import json
import shlex
import sys

import pandas as pd
import pytest
import wandb
import yaml

import analysis
from analysis import run_all
from analysis.__main__ import main
from analysis.answers import answers
from analysis.experiment import space_record
from analysis.frames import load_summary
from analysis.plots import read_evaluation
from analysis.results import COMPARED, REFERENCE, RESULTS_COLUMNS, read_results
from analysis.verdict import hypotheses_of
from analysis.wandb_results import (JOB_TYPE, analysis_run_id, log_results, recorded_settings, trial_summaries,
                                    verdict_summary)
from helpers import wandb_files
from helpers.experiments import config_dict, write_experiment, write_finished_trial
from trainers.layout import RESULTS_FILE
from trainers.records import SPACE_RECORD
from trainers.wandb_log import offline_runs

RECORD = {"name": "answers", "base": {"wandb": {"project": "from_base"}}, "wandb": {"entity": "lab"},
          "hypotheses": [
              {"name": "information_flow", "reference": {"model.n_last_tokens": -1}, "expect": "worse",
               "trend": {"key": "model.n_last_tokens", "error": "decreasing"}},
              {"name": "looped_n_layers", "reference": {"model.n_layer": 1}, "expect": "better"}]}
N_PROMPTS, MAX_LOOPS = 32, 5


@pytest.fixture(autouse=True)
def no_key(monkeypatch, tmp_path):
    """No key anywhere wandb looks, so `auto` means offline; wandb's cached settings and session dropped."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))
    wandb.teardown()
    yield
    wandb.teardown()


def analyse(root):
    write_experiment(root)
    (root / SPACE_RECORD).write_text(yaml.safe_dump(RECORD))
    run_all(root, n_prompts=N_PROMPTS, max_loops=MAX_LOOPS)
    return root


@pytest.fixture
def analysed(finished, tmp_path):
    return finished.copy(analyse, tmp_path / "answers")


def found_in(root):
    """The answers from the results.parquet `all` wrote."""
    return answers(load_summary(root), read_results(root), hypotheses_of(space_record(root)))


def test_trial_summaries_carry_the_errors_and_a_role_per_hypothesis(analysed):
    evaluation = read_evaluation(analysed)
    summaries = trial_summaries(read_results(analysed))
    assert set(summaries) == {"t1", "t2", "t3", "t4", "t5"}
    assert summaries["t1"]["role/information_flow"] == summaries["t1"]["role/looped_n_layers"] == REFERENCE
    # t5's own errors, read from the evaluation frame: k = d = 3 examples and the last position, 6
    own = evaluation[(evaluation["kind"] == "model") & (evaluation["axis"] == "k") & (evaluation["name"] == "model@b")
                     & (evaluation["trial_id"] == "t5")].set_index("x")["mean"]
    longest = evaluation[(evaluation["kind"] == "model") & (evaluation["axis"] == "k")
                         & (evaluation["name"] == "model@max_loops") & (evaluation["trial_id"] == "t5")]
    assert summaries["t5"] == {"error_last": pytest.approx(own[6], rel=1e-12),
                               "error_at_d": pytest.approx(own[3], rel=1e-12),
                               "error_last_max_loops": pytest.approx(longest.set_index("x")["mean"][6], rel=1e-12),
                               "role/looped_n_layers": COMPARED, "variant/looped_n_layers": "L=2"}
    assert all(isinstance(s["error_last"], float) for s in summaries.values())


def test_the_recorded_settings_are_the_sweeps(analysed):
    record = space_record(analysed)
    assert recorded_settings(record) == {"mode": "auto", "project": "from_base", "entity": "lab", "group": "answers"}
    assert recorded_settings(record, "offline")["mode"] == "offline"


def table(offline_run, key: str) -> pd.DataFrame:
    """A logged table read back from the file the run's history row points to."""
    row = next(r for r in wandb_files.history(offline_run) if f"{key}/path" in r)
    data = json.loads((offline_run / "files" / row[f"{key}/path"]).read_text())
    return pd.DataFrame(data["data"], columns=data["columns"])


def test_the_analysis_run_holds_the_answers_offline(analysed):
    offline = log_results(analysed)
    assert offline == offline_runs(analysed, analysis_run_id("answers"))[0]
    assert wandb_files.run_settings(offline) == {"id": "answers-analysis", "project": "from_base", "entity": "lab",
                                                "job_type": JOB_TYPE, "group": "answers", "name": "answers analysis"}
    found = found_in(analysed)
    summary = wandb_files.summary(offline)
    assert {k: summary[k] for k in verdict_summary(found)} == pytest.approx(verdict_summary(found))
    assert summary["verdict/looped_n_layers"] in ("supported", "contradicted", "inconclusive", "underpowered")
    assert "trend/information_flow" in summary
    # the trials table is results.parquet, written again by the analysis run from the same trials and evaluation
    trials, expected = table(offline, "trials"), read_results(analysed)
    assert list(trials.columns) == RESULTS_COLUMNS
    for column in RESULTS_COLUMNS:
        if pd.api.types.is_float_dtype(expected[column]):
            assert trials[column].to_numpy(dtype=float) == pytest.approx(expected[column].to_numpy(), rel=1e-12)
        else:
            assert trials[column].tolist() == expected[column].tolist(), column
    assert set(trials["role"]) == {REFERENCE, COMPARED} and trials["error_at_d"].notna().all()
    for answer in found.items:
        ranking = table(offline, f"{answer.hypothesis}/ranking")
        assert ranking["variant"].tolist() == answer.ranking["variant"].tolist()
        assert ranking["mean"].to_numpy() == pytest.approx(answer.ranking["mean"].to_numpy(), rel=1e-12)
        comparisons = table(offline, f"{answer.hypothesis}/comparisons")
        assert comparisons["variant"].tolist() == [c.variant for c in answer.verdict.comparisons]
        assert table(offline, f"{answer.hypothesis}/cost")["training_flops"].tolist() == \
            answer.ranking["training_flops"].tolist()
    plots = sorted(p.stem for p in (analysed / "plots").glob("*.png"))
    images = sorted(k[len("plots/"):-len("/_type")] for k, v in summary.items()
                    if k.startswith("plots/") and k.endswith("/_type") and v == "image-file")
    assert images == plots and len(plots) >= 8
    report = [a for a in wandb_files.artifacts(offline) if a["type"] == "report"]
    assert report == [{"name": "answers-analysis-report", "type": "report",
                       "paths": sorted(["REPORT.md", *(f"plots/{p}.png" for p in plots)])}]


def test_an_experiment_analysed_before_results_existed_gets_them(analysed):
    before = read_results(analysed)
    (analysed / RESULTS_FILE).unlink()
    log_results(analysed, {"mode": "offline"})
    pd.testing.assert_frame_equal(read_results(analysed), before)


def test_a_second_analysis_replaces_the_offline_run(analysed, capsys):
    log_results(analysed)
    assert main(["wandb", str(analysed), "--mode", "offline"]) == 0
    runs = offline_runs(analysed, analysis_run_id("answers"))
    assert len(runs) == 1 and capsys.readouterr().out.strip() == str(runs[0])
    assert len([row for row in wandb_files.history(runs[0]) if "trials/path" in row]) == 1


def test_the_cli_refuses_a_folder_without_trials(tmp_path, capsys):
    assert main(["wandb", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "nothing") in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nothing").exists()


def test_a_w_and_b_failure_after_the_report_is_one_warning(analysed, capsys, monkeypatch):
    """Online without a key, wandb refuses to start the run: the sweep's report stays, and one line says how to log
    the answers later."""
    from tune_looped.sweep import _analyse

    # the sweep's analysis at the shared experiment's size: the default 1280 prompts cost 10 s and change no line
    # read here
    monkeypatch.setattr(analysis, "run_all", functools.partial(run_all, n_prompts=N_PROMPTS, max_loops=MAX_LOOPS))
    _analyse(analysed, {"mode": "online", "project": "p"})
    out, err = capsys.readouterr()
    assert f"report: {analysed / 'REPORT.md'}" in out
    warning = [line for line in err.splitlines() if line.startswith("warning: W&B")]
    later = shlex.join([sys.executable, "-m", "analysis", "wandb", str(analysed)])
    assert len(warning) == 1 and warning[0].endswith(f"log it later with: {later}")


# a sequential study: the 2-token mask far worse on every seed, decided at look 2 (5 seeds), the 4-token mask
# within noise of the reference and still open at look 3 (8 seeds); final errors per seed
STUDY = {"looks": [3, 5, 8, 12], "alpha": 0.05, "spending": "obrien-fleming", "smallest_effect": 0.1, "paths": 20000,
         "seeds": list(range(12)), "budget_tflop": 40.0}
SEQUENTIAL = {-1: [0.10 + 0.01 * s for s in range(8)],
              2: [0.70, 0.74, 0.73, 0.75, 0.74],
              4: [0.15, 0.03, 0.24, 0.15, 0.24, 0.10, 0.25, 0.18]}
OPEN_4 = "information_flow: n_last_tokens=4"
LOOKS = [{"look": 1, "seeds": 3, "taken": "2026-12-01T14:03:10", "round_s": 600.0, "round_tflop": 1.5,
          "open": ["information_flow: n_last_tokens=2", OPEN_4]},
         {"look": 2, "seeds": 5, "taken": "2026-12-01T14:07:12", "round_s": 240.0, "round_tflop": 1.0,
          "open": [OPEN_4]},
         {"look": 3, "seeds": 8, "taken": "2026-12-01T14:12:40", "round_s": 300.0, "round_tflop": 0.9,
          "open": [OPEN_4]}]


@pytest.fixture
def sequential(tmp_path):
    root = tmp_path / "masks"
    for n, errors in SEQUENTIAL.items():
        for seed, error in enumerate(errors):
            trial_id = f"n{n + 1}s{seed}"
            write_finished_trial(root, f"train_{trial_id}_00000_0", hypotheses=["information_flow"],
                                 variant={"model.n_last_tokens": n}, trial_id=trial_id,
                                 config=config_dict(n_last_tokens=n, seed=seed, train_steps=91),
                                 eval_losses=[1.0] * 9 + [2 * error])
    record = {"name": "masks", "hypotheses": [RECORD["hypotheses"][0]], "decide": STUDY, "looks": LOOKS}
    (root / SPACE_RECORD).write_text(yaml.safe_dump(record))
    return root


def test_a_sequential_studys_analysis_run_holds_its_design_looks_and_states(sequential):
    offline = log_results(sequential, {"mode": "offline"})
    # wandb's service may still be writing the offline file when the run's finish returns; stopping it flushes
    wandb.teardown()
    summary = wandb_files.summary(offline)
    assert summary["verdict/information_flow"] == "undecided so far"
    assert {k: summary[k] for k in ("study/looks", "study/spending", "study/alpha", "study/max_seeds",
                                    "study/budget_tflop", "study/looks_taken", "study/seeds_at_last_look",
                                    "study/open", "study/ended")} == {
        "study/looks": [3, 5, 8, 12], "study/spending": "obrien-fleming", "study/alpha": 0.05,
        "study/max_seeds": 12, "study/budget_tflop": 40.0, "study/looks_taken": 3, "study/seeds_at_last_look": 8,
        "study/open": 1, "study/ended": ""}
    assert "study/budget_hours" not in summary
    looks = table(offline, "looks")
    assert looks["look"].tolist() == [1, 2, 3] and looks["seeds"].tolist() == [3, 5, 8]
    assert looks["round_s"].tolist() == pytest.approx([600, 240, 300]) and looks["open"].tolist()[-1] == OPEN_4
    comparisons = table(offline, "information_flow/comparisons").set_index("variant")
    worse, still = comparisons.loc["n_last_tokens=2"], comparisons.loc["n_last_tokens=4"]
    assert (worse["state"], worse["look"], worse["seeds"], worse["outcome"]) == ("decided worse", 2, 5, "worse")
    assert worse["difference"] == pytest.approx(0.612, abs=1e-9) and worse["lo"] > 0 and worse["p"] < 0.025
    assert pd.isna(worse["largest_effect"])
    assert (still["state"], still["look"], still["seeds"]) == ("open", 3, 8)
    assert still["lo"] < 0 < still["hi"] and still["p"] > 0.025
    assert still["largest_effect"] == pytest.approx(max(-still["lo"], still["hi"]), rel=1e-12)


def test_a_fixed_studys_comparisons_have_no_state_columns(analysed):
    offline = log_results(analysed)
    wandb.teardown()
    assert "state" not in table(offline, "information_flow/comparisons")
    assert not [key for key in wandb_files.summary(offline) if key.startswith("study/")]
