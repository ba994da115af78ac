"""REPORT.md of a sequential study from synthetic frames: its rule, design and looks, each comparison's state, look,
seeds, repeated interval and sequential p-value, a study stopped at its budget or its cap; and a fixed study's
command that continues it as a sequential one."""
import math
import shlex
import statistics

import pandas as pd
import pytest

from analysis.answers import answers
from analysis.plots import _differences_figure, write_plots
from analysis.report import render_report
from analysis.results import results_frame
from analysis.sequential import Design, rule
from analysis.verdict import RULE, Hypothesis
from helpers.markdown import table_rows
from trainers.records import AT_CAP, OVER_BUDGET, LookRecord, SpaceRecord, StudyRecord
from tune_looped.space import parse_set

MASKS = Hypothesis("information_flow", {"model.n_last_tokens": -1}, "worse")
# paths: fewer than the default's, for speed; the design is the default otherwise
STUDY = StudyRecord(looks=[3, 5, 8, 12], alpha=0.05, spending="obrien-fleming", smallest_effect=0.1, paths=20_000,
                    seeds=list(range(12)), budget_hours=2.0)
DESIGN = Design(paths=20_000)
# per seed, variant minus reference: the 8-token mask far worse at every seed, decided at 5 seeds (look 2), so
# it gets no more; the 23-token mask noisy around a small difference, open at 8 seeds or undecided at 12
WORSE = [0.60, 0.63, 0.61, 0.62, 0.60]
NOISY = [0.05, -0.08, 0.12, 0.02, 0.10, -0.05, 0.09, 0.01]
WIDE = [0.15, -0.20, 0.30, 0.05, 0.25, -0.15, 0.28, 0.02, 0.21, -0.06, 0.12, -0.17]
OPEN_8, OPEN_23 = "information_flow: n_last_tokens=8", "information_flow: n_last_tokens=23"


def summary_frame(differences: dict) -> pd.DataFrame:
    """The reference's error 0.10 + 0.01 seed on as many seeds as its longest comparison; each variant its
    reference's error plus its difference, seed by seed."""
    reference = [0.10 + 0.01 * seed for seed in range(max(map(len, differences.values())))]
    errors = {-1: reference, **{n: [r + d for r, d in zip(reference, values)] for n, values in differences.items()}}
    rows = []
    for n, values in errors.items():
        for seed, error in enumerate(values):
            rows.append({"trial_id": f"n{n}s{seed}", "hypotheses": "information_flow", "model.n_last_tokens": n,
                         "training.seed": seed, "status": "finished", "last_step": 99, "train_steps": 100,
                         "final_eval_loss": 2 * error, "final_eval_loss_last": error, "best_eval_loss": 2 * error,
                         "wall_time_s": 10.0, "node_id": "a", "parameters": 1000, "step_flops": 2e9,
                         "training_flops": 3e12, "predict_zero": 1.0})
    return pd.DataFrame(rows)


def looks(*opens, ended=""):
    """The looks a runner took, the i-th with the comparisons `opens[i]` left open; the last ended as given."""
    taken = ["2026-12-01T14:03:10", "2026-12-01T14:07:12", "2026-12-01T14:12:40", "2026-12-01T14:20:05"]
    return [LookRecord(look=k + 1, seeds=STUDY.looks[k], taken=taken[k], round_s=[600.0, 240.0, 300.0, 420.0][k],
                       round_tflop=[1.5, 1.0, 0.9, 1.2][k], open=list(left),
                       ended=ended if k == len(opens) - 1 else "") for k, left in enumerate(opens)]


def record(looks_taken, study=STUDY, **fields) -> SpaceRecord:
    given = {"name": "masks", "source": "search_spaces/masks.yaml", "hypotheses": [MASKS]} | fields
    return SpaceRecord(**given, decide=study, looks=looks_taken)


def render(summary, space, tmp_path, experiment_dir=None):
    return render_report("study", summary, None, tmp_path / "plots", tmp_path, {"information_flow": MASKS},
                         record=space, experiment_dir=experiment_dir)


def repeated(values, k, m=2):
    """(mean, lo, hi) of the repeated interval at look k (0-based) of m comparisons, by hand from the design's
    boundary: mean +- c_k(alpha / m) x the standard error."""
    mean, se = statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))
    half = DESIGN.table().critical(m)[k] * se
    return mean, mean - half, mean + half


def cells(report, header_start="variant | reference"):
    return {row[0]: row for row in table_rows(report, header_start)}


def test_an_open_study_reports_its_rule_design_looks_and_each_comparisons_state(tmp_path):
    space = record(looks([OPEN_8, OPEN_23], [OPEN_23], [OPEN_23]))
    report = render(summary_frame({8: WORSE, 23: NOISY}), space, tmp_path)
    assert f"**The verdict's rule.** {rule(DESIGN)}" in report and RULE not in report
    assert "**Verdict: undecided so far.**" in report
    assert ("**Design.** Looks at 3, 5, 8, 12 seeds a variant (the cap: 12), `obrien-fleming` spending of 5% a "
            "hypothesis over all its looks, equivalence margin 0.1 x the predict-0 error; budget: no round starts "
            "once the study has spent 2 h of wall time.") in report
    assert "0, 1, 2 (look 1); 3, 4 (look 2); 5, 6, 7 (look 3); 8, 9, 10, 11 (look 4)" in report
    assert "its next look is at 12 seeds a variant" in report
    assert "biased away from zero" in report and "**undecided at the budget**" not in report
    rows = cells(report)
    # the 8-token mask decided worse at look 2, from its 5 seeds, by its sequential p-value below Holm's 0.025
    worse = rows["`n_last_tokens=8`"]
    assert worse[1:5] == ["`n_last_tokens=all`", "decided worse", "2 of 4", "5"]
    mean, lo, hi = repeated(WORSE, 1)
    assert float(worse[5]) == pytest.approx(mean, abs=5e-4)
    assert worse[6] == f"[{lo:+.3f}, {hi:+.3f}]" and lo > 0
    assert 0 < float(worse[7]) < 0.025 and worse[8] == "–"
    # the 23-token mask open at look 3 with 8 seeds: its interval holds 0, and the larger end is what it allows
    still = rows["`n_last_tokens=23`"]
    assert still[2:5] == ["open", "3 of 4", "8"]
    mean, lo, hi = repeated(NOISY, 2)
    assert still[6] == f"[{lo:+.3f}, {hi:+.3f}]" and lo < 0 < hi
    assert float(still[7]) > 0.025 and float(still[8]) == pytest.approx(max(-lo, hi), abs=5e-4)
    # the looks, what each round cost, and what it left open
    looked = table_rows(report, "look | seeds a variant")
    assert looked[0] == ["1", "3", "2026-12-01 14:03:10", "10", "1.5", f"2: `{OPEN_8}`, `{OPEN_23}`", "–"]
    assert [r[:2] + r[3:6] for r in looked[1:]] == [["2", "5", "4", "1", f"1: `{OPEN_23}`"],
                                                   ["3", "8", "5", "0.9", f"1: `{OPEN_23}`"],
                                                   ["total", "–", "19", "3.4", "–"]]


def test_the_ranking_shows_the_repeated_interval_and_no_detectable_difference(tmp_path):
    space = record(looks([OPEN_8, OPEN_23], [OPEN_23], [OPEN_23]))
    report = render(summary_frame({8: WORSE, 23: NOISY}), space, tmp_path)
    assert "| difference to its reference [repeated 95% interval] |" in report
    assert "simultaneous" not in report and "smallest detectable difference" not in report
    rows = {r[1]: r for r in table_rows(report, "rank")}
    assert [rows[v][2] for v in ("`n_last_tokens=all`", "`n_last_tokens=8`", "`n_last_tokens=23`")] == ["8", "5", "8"]
    mean, lo, hi = repeated(WORSE, 1)
    assert rows["`n_last_tokens=8`"][8:] == [
        f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]: decided worse (paired, sequential, look 2 of 4)"]


def test_a_study_stopped_at_its_budget_leaves_the_open_comparison_undecided_at_the_budget(tmp_path):
    space = record(looks([OPEN_8, OPEN_23], [OPEN_23], [OPEN_23], ended=OVER_BUDGET))
    report = render(summary_frame({8: WORSE, 23: NOISY}), space, tmp_path)
    assert cells(report)["`n_last_tokens=23`"][2:4] == ["undecided at the budget", "3 of 4"]
    assert ("The study stopped at its budget with 1 comparison still open: it is **undecided at the budget**"
            in report)
    assert table_rows(report, "look | seeds a variant")[2][-1] == OVER_BUDGET
    assert "its next look is at" not in report


def test_a_comparison_still_open_at_the_last_look_is_undecided_at_the_cap(tmp_path):
    space = record(looks([OPEN_8, OPEN_23], [OPEN_23], [OPEN_23], [], ended=AT_CAP))
    report = render(summary_frame({8: WORSE, 23: WIDE}), space, tmp_path)
    assert "**Verdict: inconclusive.**" in report
    capped = cells(report)["`n_last_tokens=23`"]
    assert capped[2:5] == ["undecided at the cap", "4 of 4", "12"]
    mean, lo, hi = repeated(WIDE, 3)
    assert float(capped[5]) == pytest.approx(mean, abs=5e-4) and capped[6] == f"[{lo:+.3f}, {hi:+.3f}]"
    assert float(capped[8]) == pytest.approx(max(-lo, hi), abs=5e-4)
    assert table_rows(report, "look | seeds a variant")[3][-1] == AT_CAP
    # a sequential study is continued by its runner, not by this command
    assert "--until-decided" not in report


def test_a_study_before_its_first_look_says_when_that_is(tmp_path):
    report = render(summary_frame({8: WORSE[:2], 23: NOISY[:2]}), record([]), tmp_path)
    assert "No look taken yet: the first is at 3 seeds a variant." in report
    rows = cells(report)
    assert rows["`n_last_tokens=8`"][2:5] == ["open", "–", "0"] and rows["`n_last_tokens=8`"][6] == "–"


def test_a_fixed_study_names_the_command_that_continues_it_sequentially(tmp_path):
    experiment = tmp_path / "runs here" / "masks-quick"
    space = record([], study=None, source="/spaces/my masks.yaml", quick=True,
                   overrides={"training.train_steps": 50, "training.learning_rate": 0.0003, "wandb.notes": "a b"})
    report = render(summary_frame({8: WORSE[:3], 23: NOISY[:3]}), space, tmp_path, experiment_dir=experiment)
    command = (f"python -m tune_looped.run --space '/spaces/my masks.yaml' --quick --set training.train_steps=50 "
               f"--set training.learning_rate=0.0003 --set 'wandb.notes=a b' --storage "
               f"'{tmp_path / 'runs here'}' --name masks-quick --extend --until-decided")
    assert f"**Continuing it until decided.** `{command}` runs this experiment on" in report
    assert report.index(f"**The verdict's rule.** {RULE}") < report.index("**Continuing it until decided.**")
    # the runner reads the --set values back as the record holds them
    words = shlex.split(command)
    assert parse_set([words[i + 1] for i, w in enumerate(words) if w == "--set"]) == space.overrides
    assert "## The sequential study" not in report and "### Comparisons" not in report


def test_the_continue_command_needs_a_declared_prediction_and_a_record(tmp_path):
    summary = summary_frame({8: WORSE[:3]})
    undeclared = render_report("study", summary, None, tmp_path / "plots", tmp_path, {},
                               record=record([], study=None, hypotheses=[]))
    assert "--until-decided" not in undeclared
    assert "--until-decided" not in render_report("study", summary, None, tmp_path / "plots", tmp_path,
                                                  {"information_flow": MASKS})
    # without a folder of its own, the command names the report's
    named = render_report("study", summary, None, tmp_path / "plots", tmp_path / "exp", {"information_flow": MASKS},
                          record=record([], study=None))
    assert f"--storage {shlex.quote(str(tmp_path))} --name exp --extend --until-decided" in named


def test_the_forest_plot_draws_the_repeated_intervals_of_the_sequential_verdict(tmp_path):
    summary, declared = summary_frame({8: WORSE, 23: NOISY}), {"information_flow": MASKS}
    (answer,) = answers(summary, results_frame(summary, None, declared), declared, study=STUDY).items
    assert [c.outcome for c in answer.verdict.comparisons] == ["worse", "open"]
    axes = _differences_figure(answer.verdict, answer.variants, "repeated 95%").axes[0]
    assert axes.get_xlabel().endswith("(repeated 95% intervals)")
    # every comparison was tested at a look: none is marked otherwise
    assert not [t.get_text() for t in axes.get_yticklabels() if "not tested" in t.get_text()]
    curves = pd.DataFrame({"hypotheses": pd.Series(dtype=str), "step": pd.Series(dtype=int)})
    written = write_plots(tmp_path / "plots", curves, summary, declared=declared, study=STUDY)
    assert tmp_path / "plots" / "information_flow_differences.png" in written
    report = render(summary, record(looks([OPEN_8, OPEN_23])), tmp_path)
    assert ("![each variant's difference to its reference, with its repeated interval]"
            "(plots/information_flow_differences.png)") in report


def test_a_record_without_its_space_path_names_no_command(tmp_path):
    report = render(summary_frame({8: WORSE[:3]}), record([], study=None, source=""), tmp_path)
    assert "--until-decided" not in report
