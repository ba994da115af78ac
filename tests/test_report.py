"""REPORT.md from synthetic frames: verdicts with their rule, intervals and power, the trend line, the ranking
with its reference rows, the cost table and the forest plot."""
import math

import pandas as pd
import pytest

from analysis.plots import plot_path, write_plots
from analysis.report import render_report
from analysis.significance import t_quantile
from analysis.verdict import RULE, TREND_RULE, Hypothesis, Trend
from helpers.markdown import table_rows

MASKS = Hypothesis("information_flow", {"model.n_last_tokens": -1}, "worse")
ORDERED = Hypothesis("information_flow", {"model.n_last_tokens": -1}, "worse",
                     Trend("model.n_last_tokens", "decreasing"))
# n_last_tokens -> per-seed final error at the last position: all tokens learns, 8 is worse, 23 never learns
ERRORS = {-1: [0.10, 0.12, 0.11], 8: [0.70, 0.75, 0.72], 23: [0.95, 0.98, 0.96]}
COST = {-1: (1000, 2e9, 3e12), 8: (1000, 2e9, 3e12), 23: (1000, 2e9, 3e12)}


def summary_frame(errors=ERRORS, hypotheses="information_flow", predict_zero=1.0) -> pd.DataFrame:
    rows = []
    for n, values in errors.items():
        for seed, error in enumerate(values):
            parameters, step_flops, training_flops = COST[n]
            rows.append({"trial_id": f"n{n}s{seed}", "hypotheses": hypotheses, "model.n_last_tokens": n,
                         "training.seed": seed, "status": "finished", "last_step": 99, "train_steps": 100,
                         "final_eval_loss": 2 * error, "final_eval_loss_last": error, "best_eval_loss": 2 * error,
                         "wall_time_s": 10.0 + seed, "node_id": "a", "parameters": parameters,
                         "step_flops": step_flops, "training_flops": training_flops, "predict_zero": predict_zero})
    return pd.DataFrame(rows)


def evaluation_frame(summary: pd.DataFrame, shift: float) -> pd.DataFrame:
    """model@b at the last position k = 16 = the summary's error + shift, and at k = d = 8 twice the summary's
    error; least squares at 0.001 at k = 16 and 0.25 at k = 8."""
    meta = {"task_name": "linear_regression", "n_dims_truncated": 8, "n_points": 17, "n_prompts": 1280}
    at_x = {8: lambda error: 2 * error, 15: lambda error: 5.0, 16: lambda error: error + shift}
    rows = [{"trial_id": r["trial_id"], "hypotheses": r["hypotheses"], "model.n_last_tokens": r["model.n_last_tokens"],
             "training.seed": r["training.seed"], "kind": "model", "name": "model@b", "axis": "k", "x": x,
             "mean": error(r["final_eval_loss_last"]), "lo": 0.0, "hi": 9.0, "train_loops": 6, "max_loops": 60,
             **meta} for _, r in summary.iterrows() for x, error in at_x.items()]
    rows += [{"trial_id": r["trial_id"], "hypotheses": r["hypotheses"], "kind": "baseline", "name": "least_squares",
              "axis": "k", "x": x, "mean": {8: 0.25, 15: 0.5, 16: 0.001}[x], "lo": 0.0, "hi": 1.0, **meta}
             for _, r in summary.iterrows() for x in at_x]
    return pd.DataFrame(rows)


def render(summary, evaluation=None, declared=None, tmp_path=None):
    return render_report("study", summary, evaluation, tmp_path / "plots", tmp_path, declared or {})


def test_report_gives_the_verdict_the_ranking_and_the_reference_rows(tmp_path):
    report = render(summary_frame(), declared={"information_flow": MASKS}, tmp_path=tmp_path)
    assert "9 trials: 9 finished; 3 seeds per configuration." in report
    assert f"**The verdict's rule.** {RULE}" in report and "paired t-test" in RULE and "Holm" in RULE
    assert TREND_RULE not in report
    assert ("**Verdict: supported.** 2 of 2 variants worse than their reference, as predicted. Reference: "
            "`n_last_tokens=all`; prediction: every other variant is worse; smallest difference of interest: "
            "0.1.") in report
    rows = table_rows(report, "rank")
    assert [r[:3] for r in rows] == [["1", "`n_last_tokens=all`", "3"], ["2", "`n_last_tokens=8`", "3"],
                                     ["did not learn", "`n_last_tokens=23`", "3"],
                                     ["reference", "least squares", "–"], ["reference", "predict 0", "–"]]
    assert [float(r[3]) for r in rows[:3]] == pytest.approx([0.11, 0.7233, 0.9633], abs=1e-4)
    assert rows[0][7] == "0.1, 0.12, 0.11" and rows[0][8:] == ["reference", "–"]
    assert [r[6] for r in rows] == ["–"] * 4 + ["1"]  # no evaluation: no error at k = d, but predict 0's
    # the mask against all tokens, paired by seed: differences 0.60, 0.63, 0.61 (sd 0.0153), 2 comparisons, so
    # the interval is +-t(0.05 / 2, 2 df) se and the detectable difference (t(0.05 / 2) + t(0.4)) se
    se = pd.Series([0.60, 0.63, 0.61]).std() / math.sqrt(3)
    critical, power = t_quantile(0.025, 2), t_quantile(0.4, 2)
    assert rows[1][8] == f"+0.613 [{0.61333 - critical * se:+.3f}, {0.61333 + critical * se:+.3f}]: worse (paired)"
    assert rows[1][9] == f"{(critical + power) * se:.3g}"
    assert rows[3][3] == "–" and rows[4][3] == "1"
    assert "on the training's held-out prompts" in report


def test_each_section_links_its_own_figures_when_names_differ_only_outside_the_slug(tmp_path):
    names = ("a/b", "a:b")
    summary = pd.concat([summary_frame(hypotheses=name).assign(trial_id=lambda f, i=i: f["trial_id"] + f"-{i}")
                         for i, name in enumerate(names)], ignore_index=True)
    links = {}
    for name in names:
        path = plot_path(tmp_path / "plots", name, "loss")
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"")
        links[name] = f"]({path.relative_to(tmp_path).as_posix()})"
    assert len(set(links.values())) == 2
    report = render(summary, tmp_path=tmp_path)
    for name, other in (names, names[::-1]):
        section = report.split(f"\n## {name}\n")[1].split("\n## ")[0]
        assert links[name] in section and links[other] not in section


def test_report_cost_table(tmp_path):
    report = render(summary_frame(), tmp_path=tmp_path)
    cost = table_rows(report, "variant | parameters")
    assert cost[0] == ["`n_last_tokens=all`", "1,000", "2", "3", "11", "3 finished"]
    assert len(cost) == 3


def test_report_ranks_by_the_evaluation_when_there_is_one(tmp_path):
    summary = summary_frame()
    # the evaluation's prompts put the 8-token mask 0.3 lower than the training's did, on every trial
    evaluation = evaluation_frame(summary, shift=0.0)
    evaluation.loc[evaluation["model.n_last_tokens"] == 8, "mean"] -= 0.3
    report = render(summary, evaluation, {"information_flow": MASKS}, tmp_path)
    rows = table_rows(report, "rank")
    assert [float(r[3]) for r in rows[:3]] == pytest.approx([0.11, 0.4233, 0.9633], abs=1e-4)
    assert rows[3][:4] == ["reference", "least squares", "–", "0.001"]
    assert "on the evaluation's 1280 fresh prompts at k = 16" in report
    # at k = d = 8: twice each seed's error (the mask's 0.3 lower too), mean over the three seeds
    assert [float(r[6]) for r in rows] == pytest.approx([0.22, 1.1467, 1.9267, 0.25, 1], abs=5e-4)


def test_the_error_at_d_counts_finished_trials_only(tmp_path):
    summary = summary_frame()
    evaluation = evaluation_frame(summary, shift=0.0)
    summary.loc[summary["trial_id"] == "n8s2", "status"] = "diverged"
    rows = {r[1]: r for r in table_rows(render(summary, evaluation, tmp_path=tmp_path), "rank")}
    assert float(rows["`n_last_tokens=8`"][6]) == pytest.approx(0.70 + 0.75, abs=1e-4)  # 2 x 0.70 and 2 x 0.75
    assert float(rows["`n_last_tokens=all`"][6]) == pytest.approx(0.22, abs=1e-4)


@pytest.mark.parametrize("errors, word", [
    ({-1: [0.10, 0.12, 0.11], 8: [0.05, 0.06, 0.055]}, "contradicted"),
    ({-1: [0.10, 0.30], 8: [0.12, 0.28]}, "underpowered"),
    ({-1: [0.10, 0.12, 0.11], 8: [0.105, 0.118, 0.112]}, "inconclusive"),
    ({-1: [0.95, 0.99, 0.97], 8: [0.95, 0.96, 0.97]}, "inconclusive"),
])
def test_report_verdict_words(tmp_path, errors, word):
    report = render(summary_frame(errors), declared={"information_flow": MASKS}, tmp_path=tmp_path)
    assert f"**Verdict: {word}.**" in report


def test_report_without_a_declared_reference_says_so(tmp_path):
    report = render(summary_frame(), tmp_path=tmp_path)
    assert "**Verdict: none.** The search space declares no `reference` and `expect`" in report
    # the ranking stands without a verdict
    assert [r[0] for r in table_rows(report, "rank")][:3] == ["1", "2", "did not learn"]


def test_only_finished_trials_are_ranked(tmp_path):
    summary = summary_frame()
    # seed 1 of the 8-token mask diverged at step 41; seed 0 of the all-tokens variant is still running
    summary.loc[summary["trial_id"] == "n8s1", ["status", "last_step"]] = ["diverged", 41]
    summary.loc[summary["trial_id"] == "n-1s0", ["status", "last_step"]] = ["incomplete", 60]
    summary = summary[summary["training.seed"] < 2]
    report = render(summary, declared={"information_flow": MASKS}, tmp_path=tmp_path)
    rows = {r[1]: r for r in table_rows(report, "rank")}
    assert rows["`n_last_tokens=8`"][2:4] == ["1", "0.7"] and rows["`n_last_tokens=all`"][2:4] == ["1", "0.12"]
    # one seed a side is not enough for a difference
    assert rows["`n_last_tokens=8`"][8:] == ["+0.580: no clear difference, not tested (fewer than 2 seeds a side)",
                                                "–"]
    cost = {r[0]: r[-1] for r in table_rows(report, "variant | parameters")}
    assert cost["`n_last_tokens=8`"] == "1 finished, 1 diverged at step 41"
    assert cost["`n_last_tokens=all`"] == "1 incomplete at step 60, 1 finished"


def test_a_variant_with_no_finished_trial_is_not_ranked(tmp_path):
    summary = summary_frame()
    summary.loc[summary["model.n_last_tokens"] == 23, ["status", "last_step"]] = ["diverged", 7]
    rows = {r[1]: r for r in table_rows(render(summary, tmp_path=tmp_path), "rank")}
    assert rows["`n_last_tokens=23`"][:4] == ["–", "`n_last_tokens=23`", "0", "–"]


def test_report_prints_the_trend_apart_from_the_verdict(tmp_path):
    errors = {8: [0.78, 0.77, 0.79], -1: [0.15, 0.12, 0.14], 23: [0.20, 0.25, 0.22]}
    report = render(summary_frame(errors), declared={"information_flow": ORDERED}, tmp_path=tmp_path)
    assert f"**The trend's rule.** {TREND_RULE}" in report
    verdict = report.index("**Verdict: ")
    trend = report.index("**Trend (error decreasing in n_last_tokens): holds**, p = ")
    assert verdict < trend < report.index("### Ranking")
    # per seed, (0.15 - 0.78) / 2, (0.12 - 0.77) / 2 and (0.14 - 0.79) / 2 along 8, 23, all
    assert "mean slope -0.322 of the error per step along n_last_tokens, over 3 seeds." in report


def test_report_uses_the_tasks_predict_zero_error(tmp_path):
    # relu_2nn_regression at d = 4 is reported unnormalised: predicting 0 scores 4, and 0.95 has learned
    report = render(summary_frame(predict_zero=4.0), declared={"information_flow": MASKS}, tmp_path=tmp_path)
    rows = {r[1]: r for r in table_rows(report, "rank")}
    assert rows["predict 0"][3] == "4" and rows["`n_last_tokens=23`"][0] == "3"
    assert "smallest difference of interest: 0.4." in report


def test_forest_plot_is_drawn_and_linked(tmp_path):
    summary, declared = summary_frame(), {"information_flow": MASKS}
    curves = pd.DataFrame({"hypotheses": pd.Series(dtype=str), "step": pd.Series(dtype=int)})
    written = write_plots(tmp_path / "plots", curves, summary, declared=declared)
    assert tmp_path / "plots" / "information_flow_differences.png" in written
    assert "![each variant's difference to its reference, with its simultaneous interval]" \
           "(plots/information_flow_differences.png)" in render(summary, declared=declared, tmp_path=tmp_path)
    assert tmp_path / "plots" / "information_flow_differences.png" not in write_plots(
        tmp_path / "undeclared", curves, summary)
