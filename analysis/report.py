"""REPORT.md: per hypothesis its question, a verdict by the stated rule and its declared trend, the variants
ranked by their final error at the last position (mean and 5-95% band over seeds, beside least squares and the
task's predict-0 error) with each one's difference to its reference, simultaneous interval and smallest
detectable difference, what each variant cost, the figures, and the evaluation's model and baseline errors at
the same k.

Every number is read from the frames (summary, evaluation); the only hand-written text is the questions.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from analysis.evaluation import aggregate_evaluation
from analysis.experiment import read_space_record, read_trials
from analysis.frames import SEED_KEY, config_columns, frames_of
from analysis.plots import PLOTS_DIR, plot_path, read_evaluation
from analysis.ranking import final_errors, least_squares_last, ranked, variant_frame
from analysis.significance import POWER
from analysis.variants import Variants, hypotheses, of_hypothesis, variants_of
from analysis.verdict import (DID_NOT_LEARN, RULE, TREND_RULE, UNCLEAR, Hypothesis, TrendTest,
                              describe_reference, hypotheses_of, judge, predict_zero_level, trend_test)

REPORT_FILE = "REPORT.md"
QUESTIONS = {
    "information_flow": "Does the loop need its whole state? Before every iteration only the last "
                        "`n_last_tokens` positions of the state are kept (-1 keeps all of them, 0 none). "
                        "Does masking more of the state make in-context learning worse?",
    "looped_n_layers": "Does a loop body of more layers (1, 2 or 3 transformer layers: A A A..., A B A B..., "
                       "A B C A B C...) learn better, and at what cost in time?",
    "looped_lstm": "Can LSTM layers (1, 2 or 3) replace the transformer layers inside the loop, and do more "
                   "LSTM layers help?",
    "baseline": "How does the plain (non-looped) transformer do: the reference the looped models are "
                "measured against?",
}
FIGURES = (("loss", "eval/loss vs step"), ("loss_zoom", "eval/loss, last part of training"),
           ("error_vs_k", "error vs in-context examples, with baselines"),
           ("error_vs_loop", "error vs loop iteration"),
           ("cost", "final error at the last position vs training FLOPs"),
           ("differences", "each variant's difference to its reference, with its simultaneous interval"))


def question(hypothesis: str) -> str:
    return QUESTIONS.get(hypothesis, f"How do the variants of `{hypothesis}` compare on eval/loss?")


def number(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{value:.4g}"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def report_experiment(experiment_dir, out=None) -> Path:
    """Write REPORT.md into `out` (default: the experiment directory), linking the figures beside it."""
    _, summary = frames_of(read_trials(experiment_dir))
    out_dir = Path(out if out is not None else experiment_dir)
    evaluation = read_evaluation(out_dir, experiment_dir)
    declared = hypotheses_of(read_space_record(experiment_dir))
    return write_report(out_dir / REPORT_FILE, Path(experiment_dir).name, summary, evaluation, declared)


def write_report(path: Path, title: str, summary: pd.DataFrame, evaluation: pd.DataFrame | None,
                 declared: dict[str, Hypothesis] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(title, summary, evaluation, path.parent / PLOTS_DIR, path.parent, declared or {}))
    return path


def render_report(title, summary, evaluation, plots_dir: Path, report_dir: Path,
                  declared: dict[str, Hypothesis]) -> str:
    statuses = ", ".join(f"{count} {status}" for status, count in summary["status"].value_counts().items())
    errors, source = final_errors(summary, evaluation)
    lines = [f"# {title}", "", f"{len(summary)} trials: {statuses}; {seed_range(summary)} per configuration.", "",
             "**How to read it.** Variants are ranked by their final error at the last position, measured on "
             f"{source}: squared error / the task's normaliser, on which predicting 0 scores the `predict 0` row "
             "of each ranking (E[y^2] / normaliser: 1 for the normalised tasks, d for relu_2nn_regression); mean "
             "over seeds with the bootstrap 5-95% band over seeds. Only finished trials count: the cost table's "
             f"status says where the others stopped. A variant at >= {DID_NOT_LEARN:g} x predict-0's error on every "
             "seed **did not learn**: it is marked, not ranked.", "", f"**The verdict's rule.** {RULE}", ""]
    if any(h.trend is not None for h in declared.values()):
        lines += [f"**The trend's rule.** {TREND_RULE}", ""]
    for hypothesis in hypotheses(summary):
        own = of_hypothesis(errors, hypothesis)
        variants = variants_of(own, hypothesis)
        lines += ["", f"## {hypothesis}", "", f"**Question.** {question(hypothesis)}", ""]
        declaration = declared.get(hypothesis)
        verdict = judge(own, variants, declaration) if declaration is not None and declaration.expect else None
        lines += verdict_lines(verdict, declaration)
        lines += trend_lines(trend_test(own, variants, declaration) if declaration is not None else None)
        frame = ranked(variant_frame(own, variants))
        lines += ranking_table(frame, verdict, reference_rows(evaluation, predict_zero_level(own))) + cost_table(frame)
        lines += figure_links(hypothesis, plots_dir, report_dir)
        if evaluation is not None:
            lines += evaluation_section(of_hypothesis(evaluation, hypothesis), variants)
    return "\n".join(lines) + "\n"


def seed_range(summary: pd.DataFrame) -> str:
    keys = [c for c in config_columns(summary) if c != SEED_KEY]
    counts = summary.groupby(keys, dropna=False).size() if keys else pd.Series([len(summary)])
    low, high = int(counts.min()), int(counts.max())
    return f"{low} seed{'s' * (low != 1)}" if low == high else f"{low} to {high} seeds"


def reference_rows(evaluation: pd.DataFrame | None, predict_zero: float) -> list[tuple[str, float]]:
    """(name, error at the last position) of the reference rows every ranking ends with."""
    return [("least squares", least_squares_last(evaluation)), ("predict 0", predict_zero)]


def verdict_lines(verdict, hypothesis: Hypothesis | None) -> list[str]:
    if verdict is None:
        return ["**Verdict: none.** The search space declares no `reference` and `expect` for this hypothesis, "
                "so there is no prediction to test.", ""]
    return [f"**Verdict: {verdict.word}.** {verdict.reason[0].upper()}{verdict.reason[1:]}. Reference: "
            f"`{describe_reference(hypothesis)}`; prediction: every other variant is {hypothesis.expect}; "
            f"smallest difference of interest: {verdict.smallest:.3g}.", ""]


def trend_lines(result: TrendTest | None) -> list[str]:
    if result is None:
        return []
    p = "" if math.isnan(result.p) else f", p = {result.p:.2g}"
    return [f"**Trend (error {result.trend.error} in {result.trend.key.rsplit('.', 1)[-1]}): {result.word}**{p}; "
            f"{result.reason}.", ""]


def difference(variant: str, verdict) -> tuple[str, str]:
    """The variant's comparison with its reference as the verdict made it, and its smallest detectable difference."""
    comparisons = verdict.comparisons if verdict is not None else ()
    for c in comparisons:
        if c.variant == variant and math.isnan(c.lo):
            shown = "–" if math.isnan(c.difference) else f"{c.difference:+.3f}"
            return f"{shown}: {UNCLEAR}, not tested ({c.test})", "–"
        if c.variant == variant:
            return f"{c.difference:+.3f} [{c.lo:+.3f}, {c.hi:+.3f}]: {c.outcome} ({c.test})", f"{c.detectable:.3g}"
    return ("reference", "–") if any(c.reference == variant for c in comparisons) else ("–", "–")


def ranking_table(frame: pd.DataFrame, verdict, references) -> list[str]:
    rows = []
    for _, row in frame.iterrows():
        rank = row["rank"] if not pd.isna(row["rank"]) else "did not learn" if row["n_seeds"] else "–"
        seeds = ", ".join(number(v) for v in row["seed_values"]) or "–"
        rows.append([rank, f"`{row['variant']}`", row["n_seeds"], number(row["mean"]), number(row["lo"]),
                     number(row["hi"]), seeds, *difference(row["variant"], verdict)])
    rows += [["reference", name, "–", number(value), "–", "–", "–", "–", "–"] for name, value in references]
    header = ["rank", "variant", "seeds", "error at the last position", "5%", "95%", "per seed",
              "difference to its reference [simultaneous 95% interval]",
              f"smallest detectable difference ({POWER:.0%} power)"]
    return ["### Ranking", ""] + table(header, rows) + [""]


def cost_table(frame: pd.DataFrame) -> list[str]:
    rows = [[f"`{row['variant']}`", "–" if pd.isna(row["parameters"]) else f"{int(row['parameters']):,}",
             number(row["step_flops"] / 1e9),
             number(row["training_flops"] / 1e12), number(row["wall_time_s"]), row["status"]]
            for _, row in frame.iterrows()]
    header = ["variant", "parameters", "GFLOP per step (final curriculum)", "training TFLOP",
              "wall time (s, mean over seeds)", "status"]
    note = ("FLOPs are the matrix products counted from the config (forward, and backward in the loss window); "
            "wall time depends on the machine and its load, so it is shown but not compared.")
    return ["### Cost", ""] + table(header, rows) + ["", note, ""]


def figure_links(hypothesis: str, plots_dir: Path, report_dir: Path) -> list[str]:
    links = []
    for kind, caption in FIGURES:
        path = plot_path(plots_dir, hypothesis, kind)
        if path.exists():
            links.append(f"![{caption}]({Path(os.path.relpath(path, report_dir)).as_posix()})")
    return links + [""] if links else []


def evaluation_section(evaluation: pd.DataFrame, variants: Variants) -> list[str]:
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
