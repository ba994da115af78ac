"""REPORT.md: per hypothesis its question, the variants ranked by final eval/loss (mean and 5-95% band over
seeds), the figures, and the evaluation's model and baseline errors at the same k.

Every number is read from the frames (summary, evaluation); the only hand-written text is the questions.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from analysis.evaluation import aggregate_evaluation
from analysis.experiment import read_trials
from analysis.frames import aggregate_seeds, frames_of
from analysis.plots import PLOTS_DIR, plot_path, read_evaluation
from analysis.variants import Variants, hypotheses, of_hypothesis, variants_of

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
           ("error_vs_loop", "error vs loop iteration"))


def question(hypothesis: str) -> str:
    return QUESTIONS.get(hypothesis, f"How do the variants of `{hypothesis}` compare on eval/loss?")


def number(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def report_experiment(experiment_dir, out=None) -> Path:
    """Write REPORT.md into `out` (default: the experiment directory), linking the figures beside it."""
    _, summary = frames_of(read_trials(experiment_dir))
    out_dir = Path(out if out is not None else experiment_dir)
    evaluation = read_evaluation(out_dir, experiment_dir)
    return write_report(out_dir / REPORT_FILE, Path(experiment_dir).name, summary, evaluation)


def write_report(path: Path, title: str, summary: pd.DataFrame, evaluation: pd.DataFrame | None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(title, summary, evaluation, path.parent / PLOTS_DIR, path.parent))
    return path


def render_report(title, summary, evaluation, plots_dir: Path, report_dir: Path) -> str:
    statuses = ", ".join(f"{count} {status}" for status, count in summary["status"].value_counts().items())
    lines = [f"# {title}", "", f"{len(summary)} trials: {statuses}."]
    for hypothesis in hypotheses(summary):
        own = of_hypothesis(summary, hypothesis)
        variants = variants_of(own, hypothesis)
        lines += ["", f"## {hypothesis}", "", f"**Question.** {question(hypothesis)}", ""]
        lines += variant_section(own, variants)
        lines += figure_links(hypothesis, plots_dir, report_dir)
        if evaluation is not None:
            lines += evaluation_section(of_hypothesis(evaluation, hypothesis), variants)
    return "\n".join(lines) + "\n"


def variant_section(summary: pd.DataFrame, variants: Variants) -> list[str]:
    final = aggregate_seeds(summary, "final_eval_loss", by=())
    final = final.assign(label=final.apply(variants.label, axis=1) if len(final) else [])
    labelled = summary.assign(label=summary.apply(variants.label, axis=1))
    rows = []
    for label, trials in labelled.groupby("label", sort=False):
        stats = final[final["label"] == label]
        mean, lo, hi = (stats[c].iloc[0] if len(stats) else math.nan for c in ("mean", "lo", "hi"))
        status = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
        rows.append([label, len(trials), mean, lo, hi, trials["best_eval_loss"].min(),
                     trials["last_step"].max(), trials["wall_time_s"].mean(), status])
    rows.sort(key=lambda row: (math.isnan(row[2]), row[2]))
    ranked = [[rank if not math.isnan(row[2]) else "–", row[0], row[1], *map(number, row[2:8]), row[8]]
              for rank, row in enumerate(rows, start=1)]
    header = ["rank", "variant", "seeds", "final eval/loss", "5%", "95%", "best eval/loss", "last step",
              "wall time (s)", "status"]
    order = " < ".join(f"`{row[0]}`" for row in rows if not math.isnan(row[2]))
    return table(header, ranked) + ["", f"Ranking, lowest final eval/loss first: {order or '–'}.", ""]


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
