import contextlib
import io
import re

import pandas as pd
import pytest
import torch
import yaml

from analysis import aggregate_seeds, evaluation, load_summary, run_all
from analysis.__main__ import main
from analysis.evaluation import aggregate_evaluation
from analysis.experiment import AnalysisWarning, read_trials
from analysis.plots import FIGURES_PER_HYPOTHESIS
from analysis.variants import of_hypothesis, variants_of
from helpers.experiments import metric_row, ray_row, write_experiment, write_trial
from helpers.markdown import table_rows
from trainers.records import SPACE_RECORD

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KINDS = ("loss", "loss_zoom", "error_vs_k", "error_vs_loop", "cost")


QUESTION = "Does the loop need its whole state?"


def analyse(root):
    """The experiment analysed with its progress bar on: returns what run_all wrote and the bar it showed."""
    write_experiment(root)
    # questions but no predictions: each section asks its hypothesis' question and gives no verdict
    record = {"name": "e", "hypotheses": [{"name": "information_flow", "description": QUESTION},
                                          {"name": "looped_n_layers"}]}
    (root / SPACE_RECORD).write_text(yaml.safe_dump(record))
    shown = io.StringIO()
    with contextlib.redirect_stderr(shown):
        written = run_all(root, n_prompts=32, max_loops=5, progress=True)
    return written, shown.getvalue()


@pytest.fixture
def analysed(finished, tmp_path):
    root = tmp_path / "experiment"
    written, _ = finished.copy(analyse, root)
    return root, written


def test_run_all_writes_everything_into_the_experiment(analysed):
    root, written = analysed
    assert {k: v for k, v in written.items() if k != "plots"} == {
        "curves": root / "curves.parquet", "summary": root / "summary.parquet",
        "evaluation": root / "evaluation.parquet", "results": root / "results.parquet", "report": root / "REPORT.md"}
    expected = {root / "plots" / f"{h}_{kind}.png" for h in ("information_flow", "looped_n_layers") for kind in KINDS}
    assert set(written["plots"]) == expected
    for path in expected:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000


def test_run_all_shows_one_step_per_checkpoint_and_figure(finished, tmp_path, capsys):
    root = tmp_path / "experiment"
    _, shown = finished.copy(analyse, root)  # the bar of the shared experiment's run_all
    n_trials = sum(t.checkpoint is not None for t in read_trials(root))
    bar = shown.split("\r")[-1]
    steps = n_trials + 2 * FIGURES_PER_HYPOTHESIS  # two hypotheses; a figure left out for no data is a step too
    assert re.match(rf"analysis: 100%.*\b{steps}/{steps}\b", bar), bar
    # not a terminal: no bar. One trial with neither a checkpoint nor eval/loss: six steps, none of them a figure
    quiet = write_trial(tmp_path / "quiet", "train_q_00000_0", hypotheses=["h"],
                        rows=[ray_row(metric_row(0, 1.0), "q", 1, done=True)]).parent
    with pytest.warns(AnalysisWarning, match="no checkpoint yet"):
        run_all(quiet, n_prompts=32, max_loops=5)
    assert "analysis:" not in capsys.readouterr().err


def test_report_tables_match_the_frames(analysed):
    root, _ = analysed
    report = (root / "REPORT.md").read_text()
    summary = pd.read_parquet(root / "summary.parquet")
    evaluation = pd.read_parquet(root / "evaluation.parquet")
    pd.testing.assert_frame_equal(summary, load_summary(root))
    # each trial's final error is its model@b error at the last position k = 6 of the evaluation
    last = evaluation[(evaluation["name"] == "model@b") & (evaluation["x"] == 6)].set_index("trial_id")["mean"]
    expected = {}
    for hypothesis in ("information_flow", "looped_n_layers"):
        own = of_hypothesis(summary, hypothesis).assign(error=lambda f: f["trial_id"].map(last))
        variants = variants_of(own, hypothesis)
        for _, row in aggregate_seeds(own, "error", by=()).iterrows():
            expected[(hypothesis, f"`{variants.label(row)}`")] = (row["mean"], row["lo"], row["hi"], row["n_seeds"])
    sections = re.split(r"^## ", report, flags=re.M)[1:]
    seen = {}
    for section in sections:
        hypothesis = section.splitlines()[0].strip()
        rows = [r for r in table_rows(section, "rank") if r[0] != "reference"]
        ranks = [r[0] for r in rows]
        learned = [r for r in rows if r[0] != "did not learn"]
        assert ranks == [str(i) for i in range(1, len(learned) + 1)] + ["did not learn"] * (len(rows) - len(learned))
        assert [float(r[3]) for r in learned] == sorted(float(r[3]) for r in learned)
        for row in rows:
            seen[(hypothesis, row[1])] = tuple(float(x) for x in row[3:6]) + (int(row[2]),)
            # untrained models sit at predict-0: did not learn means at >= 0.9 on every seed
            assert (row[0] == "did not learn") == all(float(v) >= 0.9 for v in row[7].split(", "))
        assert f"![eval/loss vs step](plots/{hypothesis}_loss.png)" in section
        assert f"![final error at the last position vs training FLOPs](plots/{hypothesis}_cost.png)" in section
        assert "**Verdict: none.**" in section  # the synthetic experiment has no space record
    assert seen.keys() == expected.keys()
    for key, numbers in seen.items():
        assert numbers == pytest.approx(expected[key], rel=1e-3)
    assert f"**Question.** {QUESTION}" in report


def test_report_baseline_numbers_come_from_the_evaluation(analysed):
    root, _ = analysed
    report = (root / "REPORT.md").read_text()
    evaluation = pd.read_parquet(root / "evaluation.parquet")
    mean = aggregate_evaluation(evaluation)
    at_last = mean[(mean["axis"] == "k") & (mean["x"] == 6) & (mean["kind"] == "baseline")].set_index("name")
    rows = {r[0]: r for r in table_rows(report, "curve")}
    assert "### Evaluation at k = 6 in-context examples (32 fresh prompts" in report
    for name in ("least_squares", "averaging", "3nn"):
        assert float(rows[name][2]) == pytest.approx(at_last.loc[name, "mean"], rel=1e-3, abs=1e-12)
    t5 = evaluation[(evaluation["trial_id"] == "t5") & (evaluation["name"] == "model@max_loops")
                    & (evaluation["x"] == 6)].iloc[0]
    assert float(rows["L=2, 5 loops"][2]) == pytest.approx(t5["mean"], rel=1e-3)


def test_cli_export_csv_to_another_directory(analysed, tmp_path, capsys):
    root, _ = analysed
    assert main(["export", str(root), "--format", "csv", "--out", str(tmp_path / "frames")]) == 0
    curves = pd.read_csv(tmp_path / "frames" / "curves.csv")
    assert len(curves) == 50 and not curves.duplicated(["trial_id", "step"]).any()
    assert str(tmp_path / "frames" / "summary.csv") in capsys.readouterr().out


@pytest.mark.parametrize("command", ["export", "evaluate", "plot", "report", "all"])
def test_cli_bad_directory_exits_2_and_writes_nothing(tmp_path, capsys, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    for directory in (tmp_path / "missing", empty):
        assert main([command, str(directory)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {directory}: ")
    assert [p.name for p in tmp_path.rglob("*")] == ["empty"]


def test_cli_all_on_an_experiment_without_checkpoints_warns_and_reports(tmp_path, capsys):
    experiment = write_experiment(tmp_path / "exp", with_model=False)
    assert main(["all", str(experiment)]) == 0
    err = capsys.readouterr().err
    assert err.count("no checkpoint yet; not evaluated") == 5 and "Traceback" not in err
    assert (experiment / "REPORT.md").exists() and (experiment / "evaluation.parquet").exists()


@pytest.mark.slow
def test_cli_runs_as_a_module(tmp_path, commands):
    done = commands.run(["-m", "analysis", "report", str(tmp_path / "missing")], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {tmp_path / 'missing'}: no such experiment directory"


def test_evaluation_in_threads_matches_one_model_at_a_time(analysed, monkeypatch):
    root, _ = analysed
    trials = read_trials(root)
    threads = torch.get_num_threads()
    together = evaluation.evaluate_trials(trials, n_prompts=32, max_loops=5)
    assert torch.get_num_threads() == threads  # the one-thread setting is the evaluation's alone
    monkeypatch.setattr(evaluation, "evaluation_threads", lambda device: 1)
    alone = evaluation.evaluate_trials(trials, n_prompts=32, max_loops=5)
    # more trials than the queue holds (2 per thread), in the trials' order, with the same numbers
    assert len(trials) > 2 * 2 and list(together["trial_id"].unique()) == [t.trial_id for t in trials]
    pd.testing.assert_frame_equal(together, alone)


@pytest.mark.parametrize("entry", ["run_all", "report"])
def test_the_space_record_brings_the_verdicts(tmp_path, entry):
    root = write_experiment(tmp_path / "experiment")
    record = {"hypotheses": [{"name": "looped_n_layers", "description": "", "reference": {"model.n_layer": 1},
                               "expect": "better"}]}
    (root / SPACE_RECORD).write_text(yaml.safe_dump(record))
    if entry == "run_all":
        run_all(root, n_prompts=32, max_loops=5)
    else:
        assert main(["report", str(root)]) == 0
    sections = dict(re.findall(r"^## (\w+)\n\n[^\n]*\n\n(\*\*Verdict: \w+\.\*\*)", (root / "REPORT.md").read_text(),
                               flags=re.M))
    # on the evaluation's prompts the untrained models sit at predict-0: the reference did not learn. Without
    # one, the training's own losses have the reference learning, and L=2's single seed cannot be tested
    word = {"run_all": "inconclusive", "report": "underpowered"}[entry]
    assert sections == {"information_flow": "**Verdict: none.**", "looped_n_layers": f"**Verdict: {word}.**"}
