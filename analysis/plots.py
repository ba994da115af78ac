"""The figures of each hypothesis, as PNGs: training `eval/loss` vs step (and its last part zoomed), error vs
in-context examples beside the baselines, error vs loop iteration, final error vs training FLOPs, and each
variant's difference to its reference with the verdict's simultaneous interval (a sequential study's repeated
one: a forest plot). Predicting 0 is drawn at the task's own level (`trainers.tasks.predict_zero_error`), not
at 1.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so nothing global changes.
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.answers import answers
from analysis.evaluation import EVALUATION_FILE, aggregate_evaluation
from analysis.experiment import read_trials, space_record
from analysis.frames import aggregate_seeds, frames_of
from analysis.ranking import least_squares_last
from analysis.results import experiment_results, results_frame
from analysis.study import stopped_at_budget
from analysis.variants import Variants, of_hypothesis
from analysis.verdict import Hypothesis, Verdict, hypotheses_of, predict_zero_level
from trainers.atomic import replacing
from trainers.layout import PLOTS_DIR
from trainers.records import StudyRecord

SLUG_LENGTH = 100  # of a hypothesis' name in its figures' file names, well within a filesystem's 255 bytes
ZOOM_FRACTION = 0.25  # the zoomed view: the last quarter of training, where variants separate
BASELINE_STYLES = (":", "-.", (0, (5, 2)), (0, (1, 3)), (0, (3, 1, 1, 1)))
ERROR_LABEL = "squared error / normaliser"


def plot_experiment(experiment_dir, out=None) -> list[Path]:
    """Write every figure into `<out>/plots` (default: the experiment directory), and the results they draw
    into `<out>/results.parquet`; returns the figures."""
    curves, summary = frames_of(read_trials(experiment_dir))
    out_dir = Path(out if out is not None else experiment_dir)
    record = space_record(experiment_dir)
    evaluation, declared = read_evaluation(out_dir, experiment_dir), hypotheses_of(record)
    return write_plots(out_dir / PLOTS_DIR, curves, summary, evaluation, declared=declared,
                       results=experiment_results(out_dir, summary, evaluation, declared),
                       study=record.decide if record is not None else None, at_budget=stopped_at_budget(record))


def read_evaluation(*directories) -> pd.DataFrame | None:
    """The evaluation frame from the first directory holding one (the output, then the experiment)."""
    for directory in directories:
        path = Path(directory) / EVALUATION_FILE
        if path.exists():
            return pd.read_parquet(path)
    return None


def plot_path(plots_dir: Path, hypothesis: str, kind: str) -> Path:
    """A file of the hypothesis' own: its name where that is a safe file name of at most SLUG_LENGTH characters,
    else a slug of it (`[A-Za-z0-9_.-]`) and a short hash of the whole name, so that `a/b` and `a:b` (or two
    emoji) do not share a file. REPORT.md links its figures by this same path."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", hypothesis)[:SLUG_LENGTH]
    if slug != hypothesis:
        slug += "-" + hashlib.sha256(hypothesis.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return Path(plots_dir) / f"{slug}_{kind}.png"


FIGURES_PER_HYPOTHESIS = 6


def write_plots(plots_dir, curves: pd.DataFrame, summary: pd.DataFrame,
                evaluation: pd.DataFrame | None = None, progress=None,
                declared: dict[str, Hypothesis] | None = None, results: pd.DataFrame | None = None,
                study: StudyRecord | None = None, at_budget: bool = False) -> list[Path]:
    """`progress`: called once per figure (FIGURES_PER_HYPOTHESIS a hypothesis, drawn or left out for no data).
    `declared`: the space's hypotheses, whose verdicts the forest plots draw. `results`: the frame of
    `results.parquet`, whose per-trial errors the figures draw; None computes it from the summary and evaluation.
    `study`: a sequential study's design (the space record's `decide`), whose rule then gives the verdicts;
    `at_budget`: its runner stopped it at its budget."""
    written = []
    least_squares = least_squares_last(evaluation)
    if results is None:
        results = results_frame(summary, evaluation, declared)
    interval = "simultaneous 95%" if study is None else f"repeated {1 - study.alpha:.0%}"
    for answer in answers(summary, results, declared, study=study, at_budget=at_budget).items:
        hypothesis, variants = answer.hypothesis, answer.variants
        own_curves = of_hypothesis(curves, hypothesis)
        own_evaluation = of_hypothesis(evaluation, hypothesis) if evaluation is not None else None
        predict_zero = predict_zero_level(answer.trials)
        figures = {
            "loss": loss_figure(own_curves, variants, zoom=False),
            "loss_zoom": loss_figure(own_curves, variants, zoom=True),
            "error_vs_k": _error_vs_k_figure(own_evaluation, variants, predict_zero),
            "error_vs_loop": _error_vs_loop_figure(own_evaluation, variants),
            "cost": _cost_figure(answer.ranking, variants, least_squares, predict_zero),
            "differences": _differences_figure(answer.verdict, variants, interval),
        }
        for kind, figure in figures.items():
            if figure is not None:
                path = plot_path(plots_dir, hypothesis, kind)
                with replacing(path) as temporary:
                    figure.savefig(temporary, dpi=120)
                written.append(path)
            if progress is not None:
                progress()
    return written


def new_axes(title: str):
    figure = Figure(figsize=(7, 4.5), layout="tight")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    return figure, axes


def _by_label(frame: pd.DataFrame, variants: Variants):
    """(label, rows) in the variants' display order."""
    labels = frame.apply(variants.label, axis=1) if len(frame) else pd.Series(dtype=str)
    for label in variants.labels:
        rows = frame[labels == label]
        if len(rows):
            yield label, rows


def loss_figure(curves: pd.DataFrame, variants: Variants, *, zoom: bool) -> Figure | None:
    if "eval/loss" not in curves or curves["eval/loss"].notna().sum() == 0:
        return None
    mean = aggregate_seeds(curves, "eval/loss")
    title = f"{variants.hypothesis}: eval/loss" + (" (last part of training)" if zoom else "")
    figure, axes = new_axes(title)
    for label, rows in _by_label(mean, variants):
        colour, seeds = variants.colour(label), int(rows["n_seeds"].max())
        axes.plot(rows["step"], rows["mean"], color=colour, label=f"{label} ({seeds} seed{'s' * (seeds > 1)})")
        axes.fill_between(rows["step"], rows["lo"], rows["hi"], color=colour, alpha=0.2, linewidth=0)
    axes.set_yscale("log")
    axes.set_xlabel("training step")
    axes.set_ylabel("eval/loss (mean over seeds, 5-95% band)")
    if zoom:
        start = mean["step"].max() * (1 - ZOOM_FRACTION)
        window = mean[mean["step"] >= start]
        axes.set_xlim(start, mean["step"].max())
        axes.set_ylim(window["lo"].min() / 1.1, window["hi"].max() * 1.1)
    axes.legend(fontsize="small")
    return figure


def _loop_counts(evaluation: pd.DataFrame, variants: Variants) -> dict:
    """label -> (b, max_loops) the variant was evaluated with."""
    return {label: (int(rows["train_loops"].iloc[0]), int(rows["max_loops"].iloc[0]))
            for label, rows in _by_label(evaluation, variants)}


def _error_vs_k_figure(evaluation: pd.DataFrame | None, variants: Variants, predict_zero: float) -> Figure | None:
    if evaluation is None or not (evaluation["kind"] == "model").any():
        return None
    loops = _loop_counts(evaluation[evaluation["kind"] == "model"], variants)
    mean = aggregate_evaluation(evaluation)
    mean = mean[mean["axis"] == "k"]
    figure, axes = new_axes(f"{variants.hypothesis}: error vs in-context examples")
    models = mean[mean["kind"] == "model"]
    for label, rows in _by_label(models, variants):
        b, max_loops = loops[label]
        for name, style, legend in (("model", "-", label), ("model@b", "-", f"{label}, b={b} loops"),
                                    ("model@max_loops", "--", f"{label}, {max_loops} loops")):
            line = rows[rows["name"] == name].sort_values("x")
            if len(line):
                axes.plot(line["x"], line["mean"], style, color=variants.colour(label), label=legend)
                axes.fill_between(line["x"], line["lo"], line["hi"], color=variants.colour(label), alpha=0.15,
                                  linewidth=0)
    baselines = mean[mean["kind"] == "baseline"]
    for style, (name, line) in zip(BASELINE_STYLES, baselines.groupby("name", sort=True)):
        line = line.sort_values("x")
        axes.plot(line["x"], line["mean"], linestyle=style, color="black", label=name)
    axes.axhline(predict_zero, color="grey", linestyle=":", label="predict 0")
    # averaging's early errors dwarf everything; the models' range, up to predicting 0, is what the figure is for
    axes.set_ylim(0, max(1.25 * predict_zero, 1.1 * models["mean"].max()))
    axes.set_xlabel("in-context examples k")
    axes.set_ylabel(ERROR_LABEL)
    axes.legend(fontsize="small")
    return figure


def _error_vs_loop_figure(evaluation: pd.DataFrame | None, variants: Variants) -> Figure | None:
    if evaluation is None:
        return None
    models = evaluation[(evaluation["kind"] == "model") & (evaluation["axis"] == "loop")]
    if models.empty:
        return None
    loops = _loop_counts(models, variants)
    mean = aggregate_evaluation(models)
    figure, axes = new_axes(f"{variants.hypothesis}: error vs loop iteration (last position)")
    for label, rows in _by_label(mean, variants):
        colour, rows = variants.colour(label), rows.sort_values("x")
        axes.plot(rows["x"], rows["mean"], color=colour, label=label)
        axes.fill_between(rows["x"], rows["lo"], rows["hi"], color=colour, alpha=0.15, linewidth=0)
        axes.axvline(loops[label][0], color=colour, linestyle=":", linewidth=1)
    axes.set_yscale("log")
    axes.set_xlabel("loop iteration (dotted: b, the training loop count)")
    axes.set_ylabel(ERROR_LABEL)
    axes.legend(fontsize="small")
    return figure


def _cost_figure(frame: pd.DataFrame, variants: Variants, least_squares: float, predict_zero: float) -> Figure | None:
    """Each variant at (training FLOPs, final error at the last position), with its seed band; a hollow
    marker for a variant that did not learn."""
    frame = frame.dropna(subset=["training_flops", "mean"])
    if frame.empty:
        return None
    figure, axes = new_axes(f"{variants.hypothesis}: final error vs training cost")
    for _, row in frame.iterrows():
        colour = variants.colour(row["variant"])
        axes.errorbar(row["training_flops"], row["mean"], yerr=[[row["mean"] - row["lo"]], [row["hi"] - row["mean"]]],
                      fmt="o", color=colour, markerfacecolor=colour if row["learned"] else "none", capsize=3,
                      label=row["variant"] + ("" if row["learned"] else " (did not learn)"))
    axes.axhline(predict_zero, color="black", linestyle=":", label="predict 0")
    if not math.isnan(least_squares):
        axes.axhline(least_squares, color="black", linestyle="-.", label="least squares")
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("training FLOPs (matrix products, whole run)")
    axes.set_ylabel(f"{ERROR_LABEL} at the last position")
    axes.legend(fontsize="small")
    return figure


def _differences_figure(verdict: Verdict | None, variants: Variants,
                        interval: str = "simultaneous 95%") -> Figure | None:
    """A forest plot: each variant's difference to its reference with the verdict's simultaneous interval (a
    sequential study's repeated one), the zero line, the band of differences smaller than the one of interest,
    and the verdict in the title. A hollow marker without an interval is a comparison that was not tested."""
    if verdict is None or not verdict.comparisons:
        return None
    figure, axes = new_axes(f"{variants.hypothesis}: {verdict.word}")
    rows = range(len(verdict.comparisons) - 1, -1, -1)  # the first comparison on top
    for y, c in zip(rows, verdict.comparisons):
        colour = variants.colour(c.variant)
        # an interval without finite ends (a sequential boundary too high to reach) draws as none
        if not (math.isfinite(c.lo) and math.isfinite(c.hi)):
            axes.plot(c.difference, y, "o", color=colour, markerfacecolor="none")
        else:
            axes.errorbar(c.difference, y, xerr=[[c.difference - c.lo], [c.hi - c.difference]], fmt="o",
                          color=colour, capsize=4)
    axes.axvline(0, color="black", linewidth=1)
    axes.axvspan(-verdict.smallest, verdict.smallest, color="grey", alpha=0.15, linewidth=0,
                 label=f"within +-{verdict.smallest:.3g}, the difference of interest")
    axes.set_yticks(list(rows), [f"{c.variant}\nvs {c.reference}" + ("\n(not tested)" if math.isnan(c.lo) else "")
                                 for c in verdict.comparisons])
    axes.set_xlabel(f"final error at the last position, variant - reference ({interval} intervals)")
    axes.set_ylim(-1.2, len(verdict.comparisons) - 0.5)  # an empty row at the bottom holds the legend
    axes.legend(fontsize="small", loc="lower right")
    return figure
