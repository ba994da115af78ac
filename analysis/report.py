"""REPORT.md: per hypothesis its question, a verdict by the stated rule and its declared trend, the variants
ranked by their final error at the last position (mean and 5-95% band over seeds, beside least squares and the
task's predict-0 error) and their error at k = d in-context examples, with each one's difference to its
reference, simultaneous interval and smallest detectable difference, what each variant cost, the figures, and
the evaluation's model and baseline errors at the same k. A sequential study's report states its rule instead,
its design and looks (`analysis.study_report`), and each comparison's state with its repeated interval; a fixed
study's names the command that would continue it as a sequential one.

Every number is read from the frames (summary, evaluation, and the results for each trial's errors); each
question is its hypothesis' `description:` in the space file, as the space record keeps it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from analysis.answers import answers
from analysis.evaluation import aggregate_evaluation
from analysis.experiment import read_trials, space_record
from analysis.frames import PRODUCTS_COLUMN, config_columns, frames_of
from analysis.plots import PLOTS_DIR, plot_path, read_evaluation
from analysis.ranking import least_squares_last
from analysis.results import at_d, experiment_results, results_frame
from analysis.significance import POWER
from analysis.study import stopped_at_budget
from analysis.study_report import (comparison_table, continuable, continue_lines, state_word, study_lines,
                                   verdict_rule)
from analysis.variants import Variants, of_hypothesis
from analysis.verdict import (DID_NOT_LEARN, RULE, TREND_RULE, UNCLEAR, Hypothesis, TrendTest,
                              describe_reference, hypotheses_of, predict_zero_level)
from trainers import atomic
from trainers.records import SEED_KEY, STOPPED_EARLY, SpaceRecord, StudyRecord, short_key
from trainers.layout import REPORT_FILE
from trainers.table import format_number, render

FIGURES = (("loss", "eval/loss vs step"), ("loss_zoom", "eval/loss, last part of training"),
           ("error_vs_k", "error vs in-context examples, with baselines"),
           ("error_vs_loop", "error vs loop iteration"),
           ("cost", "final error at the last position vs training FLOPs"),
           ("differences", "each variant's difference to its reference, with its {interval} interval"))


def question(hypothesis: str, questions: dict[str, str]) -> str:
    return questions.get(hypothesis) or f"How do the variants of `{hypothesis}` compare on eval/loss?"


def number(value) -> str:
    # one dash where the renderer would show nan or a blank: the report reads every missing value (NaN, pd.NA) alike
    return "–" if value is None or pd.isna(value) else format_number(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    return render(header, rows, markdown=True)


def report_experiment(experiment_dir, out=None) -> Path:
    """Write REPORT.md into `out` (default: the experiment directory), linking the figures beside it, and the
    results it reports into `<out>/results.parquet`."""
    _, summary = frames_of(read_trials(experiment_dir))
    out_dir = Path(out if out is not None else experiment_dir)
    evaluation = read_evaluation(out_dir, experiment_dir)
    record = space_record(experiment_dir)
    results = experiment_results(out_dir, summary, evaluation, hypotheses_of(record))
    return write_report(out_dir / REPORT_FILE, Path(experiment_dir).name, summary, evaluation, record,
                        results=results, experiment_dir=experiment_dir)


def write_report(path: Path, title: str, summary: pd.DataFrame, evaluation: pd.DataFrame | None,
                 record: SpaceRecord | None = None, *, results: pd.DataFrame | None = None,
                 experiment_dir=None) -> Path:
    """`record`: the space record, whose hypotheses give each section its question and verdict, and a sequential
    study its design and looks; `experiment_dir` (default: the report's folder) is what the command that
    continues a fixed study names."""
    path = Path(path)
    questions = {h.name: h.question for h in record.hypotheses} if record is not None else {}
    atomic.write_text(path, render_report(title, summary, evaluation, path.parent / PLOTS_DIR, path.parent,
                                          hypotheses_of(record), questions, results=results, record=record,
                                          experiment_dir=experiment_dir))
    return path


def render_report(title, summary, evaluation, plots_dir: Path, report_dir: Path,
                  declared: dict[str, Hypothesis], questions: dict[str, str] | None = None, *,
                  results: pd.DataFrame | None = None, record: SpaceRecord | None = None,
                  experiment_dir=None) -> str:
    """`results`: the frame of `results.parquet`, whose per-trial errors the report shows; None computes it from
    the summary and evaluation. `record`: the space record, for a sequential study's design and looks (its
    `decide`) and a fixed study's continuing command, which names `experiment_dir` (default: `report_dir`)."""
    statuses = ", ".join(f"{count} {status}" for status, count in summary["status"].value_counts().items())
    if results is None:
        results = results_frame(summary, evaluation, declared)
    study = record.decide if record is not None else None
    at_budget = stopped_at_budget(record)
    found = answers(summary, results, declared, study=study, at_budget=at_budget)
    lines = [f"# {title}", "", f"{len(summary)} trials: {statuses}; {_seed_range(summary)} per configuration.", "",
             *_products_lines(summary),
             "**How to read it.** Variants are ranked by their final error at the last position, measured on "
             f"{found.source}: squared error / the task's normaliser, on which predicting 0 scores the `predict 0` "
             "row of each ranking (E[y^2] / normaliser: 1 for the normalised tasks, d for relu_2nn_regression); mean "
             "over seeds with the bootstrap 5-95% band over seeds. Beside it, the error at k = d in-context "
             "examples (d the final curriculum's dimension, where least squares first fits exactly: the measure of "
             "in-context learning), mean over seeds, on the evaluation's prompts (– without an evaluation). Only "
             "finished trials count: the cost table's status says where the others stopped. A variant at >= "
             f"{DID_NOT_LEARN:g} x predict-0's error on every seed **did not learn**: it is marked, not ranked.", "",
             f"**The verdict's rule.** {RULE if study is None else verdict_rule(study)}", ""]
    if continuable(record) and any(h.expect for h in declared.values()):
        lines += continue_lines(record, experiment_dir if experiment_dir is not None else report_dir)
    if any(h.trend is not None for h in declared.values()):
        lines += [f"**The trend's rule.** {TREND_RULE}", ""]
    if study is not None:
        lines += study_lines(record)
    for answer in found.items:
        hypothesis, verdict = answer.hypothesis, answer.verdict
        lines += ["", f"## {hypothesis}", "", f"**Question.** {question(hypothesis, questions or {})}", ""]
        lines += _verdict_lines(verdict, answer.declaration)
        if study is not None and verdict is not None and verdict.comparisons:
            lines += comparison_table(verdict, study, at_budget)
        lines += _trend_lines(answer.trend)
        references = _reference_rows(evaluation, predict_zero_level(answer.trials))
        lines += (_ranking_table(answer.ranking, _mean_at_d(answer.results), verdict, references, study, at_budget)
                  + _stopped_early_table(answer.trials, answer.variants) + _cost_table(answer.ranking))
        lines += _figure_links(hypothesis, plots_dir, report_dir, "simultaneous" if study is None else "repeated")
        if evaluation is not None:
            lines += _evaluation_section(of_hypothesis(evaluation, hypothesis), answer.variants)
    return "\n".join(lines) + "\n"


def _seed_range(summary: pd.DataFrame) -> str:
    keys = [c for c in config_columns(summary) if c != SEED_KEY]
    counts = summary.groupby(keys, dropna=False).size() if keys else pd.Series([len(summary)])
    low, high = int(counts.min()), int(counts.max())
    return f"{low} seed{'s' * (low != 1)}" if low == high else f"{low} to {high} seeds"


def _products_lines(summary: pd.DataFrame) -> list[str]:
    """Which library computed the trials' fp32 products: the libraries round differently, so a study whose
    trials ran on several (a cluster of mixed CPUs) has variants that differ by more than their settings."""
    if PRODUCTS_COLUMN not in summary or summary.empty:
        return []
    counts = summary[PRODUCTS_COLUMN].fillna("unknown").value_counts()
    if len(counts) == 1:
        where = f"all {len(summary)} trials" if len(summary) > 1 else "the one trial"
        return [f"Products: {counts.index[0]} in {where} (`training.onednn_linear`).", ""]
    mix = ", ".join(f"{name} in {count}" for name, count in counts.items())
    return [f"Products: {mix} trials (`training.onednn_linear`): the libraries round differently, so the "
            "variants differ by more than their settings.", ""]


def _reference_rows(evaluation: pd.DataFrame | None, predict_zero: float) -> list[tuple[str, float, float]]:
    """(name, error at the last position, error at k = d) of the reference rows every ranking ends with;
    predicting 0 scores the same at every k."""
    return [("least squares", least_squares_last(evaluation), _least_squares_at_d(evaluation)),
            ("predict 0", predict_zero, predict_zero)]


def _least_squares_at_d(evaluation: pd.DataFrame | None) -> float:
    """Least squares' error at k = d, each trial's own d (NaN without an evaluation)."""
    if evaluation is None or evaluation.empty:
        return math.nan
    rows = at_d(evaluation[(evaluation["kind"] == "baseline") & (evaluation["name"] == "least_squares")
                           & (evaluation["axis"] == "k")])
    return float(rows["mean"].mean()) if len(rows) else math.nan


def _mean_at_d(results: pd.DataFrame) -> pd.Series:
    """Per variant label, the mean over its finished seeds of their error at k = d."""
    return results.groupby("variant")["error_at_d"].mean()


def _verdict_lines(verdict, hypothesis: Hypothesis | None) -> list[str]:
    if verdict is None:
        return ["**Verdict: none.** The search space declares no `reference` and `expect` for this hypothesis, "
                "so there is no prediction to test.", ""]
    return [f"**Verdict: {verdict.word}.** {verdict.reason[0].upper()}{verdict.reason[1:]}. Reference: "
            f"`{describe_reference(hypothesis)}`; prediction: every other variant is {hypothesis.expect}; "
            f"smallest difference of interest: {verdict.smallest:.3g}.", ""]


def _trend_lines(result: TrendTest | None) -> list[str]:
    if result is None:
        return []
    p = "" if math.isnan(result.p) else f", p = {result.p:.2g}"
    return [f"**Trend (error {result.trend.error} in {short_key(result.trend.key)}): {result.word}**{p}; "
            f"{result.reason}.", ""]


def _difference(variant: str, verdict, sequential: bool, at_budget: bool) -> tuple[str, str]:
    """The variant's comparison with its reference as the verdict made it (a sequential one worded by its state),
    and its smallest detectable difference."""
    comparisons = verdict.comparisons if verdict is not None else ()
    for c in comparisons:
        outcome = state_word(c, verdict.smallest, at_budget) if sequential else c.outcome
        if c.variant == variant and math.isnan(c.lo):
            shown = "–" if math.isnan(c.difference) else f"{c.difference:+.3f}"
            return f"{shown}: {outcome if sequential else UNCLEAR}, not tested ({c.test})", "–"
        if c.variant == variant:
            return (f"{c.difference:+.3f} [{c.lo:+.3f}, {c.hi:+.3f}]: {outcome} ({c.test})",
                    "–" if sequential else f"{c.detectable:.3g}")
    return ("reference", "–") if any(c.reference == variant for c in comparisons) else ("–", "–")


def _ranking_table(frame: pd.DataFrame, at_d: pd.Series, verdict, references, study: StudyRecord | None = None,
                   at_budget: bool = False) -> list[str]:
    """A sequential study's differences carry their repeated interval; it has no detectable difference, since
    its seeds are not fixed, so that column is left out."""
    rows = []
    for _, row in frame.iterrows():
        rank = row["rank"] if not pd.isna(row["rank"]) else "did not learn" if row["n_seeds"] else "–"
        seeds = ", ".join(number(v) for v in row["seed_values"]) or "–"
        rows.append([rank, f"`{row['variant']}`", row["n_seeds"], number(row["mean"]), number(row["lo"]),
                     number(row["hi"]), number(at_d.get(row["variant"])), seeds,
                     *_difference(row["variant"], verdict, study is not None, at_budget)])
    rows += [["reference", name, "–", number(last), "–", "–", number(first_fit), "–", "–", "–"]
             for name, last, first_fit in references]
    header = ["rank", "variant", "seeds", "error at the last position", "5%", "95%", "error at k = d", "per seed",
              "difference to its reference [simultaneous 95% interval]",
              f"smallest detectable difference ({POWER:.0%} power)"]
    if study is not None:
        header[-2] = f"difference to its reference [repeated {1 - study.alpha:.0%} interval]"
        header, rows = header[:-1], [row[:-1] for row in rows]
    return ["### Ranking", ""] + table(header, rows) + [""]


def _stopped_early_table(trials: pd.DataFrame, variants: Variants) -> list[str]:
    """The trials a scheduler stopped before their last step: not ranked beside full-length runs, but listed."""
    stopped = trials[trials["status"] == STOPPED_EARLY].sort_values("last_step", kind="stable")
    if stopped.empty:
        return []
    rows = [[f"`{variants.label(row)}`", number(row.get(SEED_KEY)), number(row["last_step"]),
             number(row["train_steps"]), number(row["final_eval_loss_last"])] for _, row in stopped.iterrows()]
    header = ["variant", "seed", "stopped at step", "of", "eval/loss_last when stopped"]
    return (["### Stopped early", "", f"{len(stopped)} trial(s) stopped by the scheduler before their last step; "
             "they are not ranked.", ""] + table(header, rows) + [""])


def _cost_table(frame: pd.DataFrame) -> list[str]:
    rows = [[f"`{row['variant']}`", "–" if pd.isna(row["parameters"]) else f"{int(row['parameters']):,}",
             number(row["step_flops"] / 1e9),
             number(row["training_flops"] / 1e12), number(row["wall_time_s"]), row["status"]]
            for _, row in frame.iterrows()]
    header = ["variant", "parameters", "GFLOP per step (final curriculum)", "training TFLOP",
              "wall time (s, mean over seeds)", "status"]
    note = ("FLOPs are the matrix products counted from the config (forward, and backward in the loss window); "
            "wall time depends on the machine and its load, so it is shown but not compared.")
    return ["### Cost", ""] + table(header, rows) + ["", note, ""]


def _figure_links(hypothesis: str, plots_dir: Path, report_dir: Path, interval: str) -> list[str]:
    """`interval`: which the forest plot draws, simultaneous (a fixed study's) or repeated (a sequential one's)."""
    links = []
    for kind, caption in FIGURES:
        path = plot_path(plots_dir, hypothesis, kind)
        if path.exists():
            target = Path(os.path.relpath(path, report_dir)).as_posix()
            links.append(f"![{caption.format(interval=interval)}]({target})")
    return links + [""] if links else []


def _evaluation_section(evaluation: pd.DataFrame, variants: Variants) -> list[str]:
    """Models (after b loops and after max_loops) and baselines at the last in-context position."""
    if evaluation.empty:
        return []
    mean = aggregate_evaluation(evaluation)
    at_k = mean[mean["axis"] == "k"]
    k = int(at_k["x"].max())
    at_k = at_k[at_k["x"] == k]
    loops = evaluation[evaluation["kind"] == "model"].drop_duplicates("trial_id")
    counts = {variants.label(row): (row["train_loops"], row["max_loops"]) for _, row in loops.iterrows()}
    rows = []
    models = at_k[at_k["kind"] == "model"]
    for label in variants.labels:
        own = models[models.apply(variants.label, axis=1) == label] if len(models) else models
        b, max_loops = counts.get(label, (None, None))
        names = {"model": label, "model@b": f"{label}, b={b} loops",
                 "model@max_loops": f"{label}, {max_loops} loops"}
        rows += [[names[r["name"]], int(r["n_seeds"]), number(r["mean"]), number(r["lo"]), number(r["hi"])]
                 for _, r in own.iterrows()]
    rows += [[r["name"], "–", number(r["mean"]), number(r["lo"]), number(r["hi"])]
             for _, r in at_k[at_k["kind"] == "baseline"].sort_values("name").iterrows()]
    n_prompts = int(evaluation["n_prompts"].iloc[0])
    return [f"### Evaluation at k = {k} in-context examples ({n_prompts} fresh prompts, squared error / "
            "normaliser)", ""] + table(["curve", "seeds", "mean", "5%", "95%"], rows) + [""]
