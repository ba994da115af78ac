"""`python -m analysis compare DIR_A DIR_B [...]`: the hypotheses that several experiments share, side by side.

For the same study at two widths or two learning rates: each experiment's variants are labelled, ranked and
banded as its own report does (`analysis.ranking`), and every hypothesis the experiments have in common gets a
table (each variant's error and seed band in each experiment) and an overlay figure. Both are drawn from one
long-form frame, one row per (experiment, hypothesis, variant), written as `comparison.csv`.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.experiment import AnalysisError, read_trials
from analysis.frames import frames_of
from analysis.plots import ERROR_LABEL, PLOTS_DIR, new_axes, plot_path, read_evaluation
from analysis.ranking import final_errors, variant_frame
from analysis.report import number, table
from analysis.variants import PALETTE, hypotheses, of_hypothesis, variants_of
from trainers import atomic
from trainers.atomic import replacing

COMPARISON_FILE, COMPARISON_REPORT = "comparison.csv", "COMPARISON.md"
COLUMNS = ("experiment", "hypothesis", "variant", "n_seeds", "mean", "lo", "hi", "learned", "source")


def _names(experiment_dirs: list[Path]) -> list[str]:
    """Each experiment by its folder's name, or by its path where two names are the same."""
    names = [d.name for d in experiment_dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in experiment_dirs]


def comparison_frame(experiment_dirs) -> pd.DataFrame:
    """One row per (experiment, hypothesis, variant) for the hypotheses every experiment has."""
    dirs = [Path(d) for d in experiment_dirs]
    if len(dirs) < 2:
        raise AnalysisError("compare: give at least two experiment folders")
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise AnalysisError("compare: an experiment folder is given twice")
    per_experiment = []
    for directory in dirs:
        _, summary = frames_of(read_trials(directory))
        per_experiment.append((summary, *final_errors(summary, read_evaluation(directory))))
    shared = set.intersection(*(set(hypotheses(summary)) for summary, _, _ in per_experiment))
    if not shared:
        raise AnalysisError(f"compare: the experiments share no hypothesis ({', '.join(_names(dirs))})")
    rows = []
    for name, (summary, errors, source) in zip(_names(dirs), per_experiment):
        for hypothesis in sorted(shared):
            own = of_hypothesis(errors, hypothesis)
            frame = variant_frame(own, variants_of(of_hypothesis(summary, hypothesis), hypothesis))
            rows += [{"experiment": name, "hypothesis": hypothesis, **{c: row[c] for c in COLUMNS[2:-1]},
                      "source": source} for _, row in frame.iterrows()]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _variants_in_order(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["variant"]))


def comparison_table(frame: pd.DataFrame, hypothesis: str) -> list[str]:
    """Markdown rows: a variant a line, an experiment a column (`mean [5%, 95%] (n seeds)`)."""
    own = frame[frame["hypothesis"] == hypothesis]
    experiments = list(dict.fromkeys(own["experiment"]))
    rows = []
    for variant in _variants_in_order(own):
        cells = []
        for experiment in experiments:
            match = own[(own["variant"] == variant) & (own["experiment"] == experiment)]
            row = match.iloc[0] if len(match) else None
            if row is None or not row["n_seeds"]:
                cells.append("–")
            else:
                learned = "" if row["learned"] else ", did not learn"
                cells.append(f"{number(row['mean'])} [{number(row['lo'])}, {number(row['hi'])}] "
                             f"({row['n_seeds']} seeds{learned})")
        rows.append([f"`{variant}`", *cells])
    return table(["variant", *experiments], rows)


def comparison_figure(frame: pd.DataFrame, hypothesis: str):
    """Each variant's final error with its seed band, one colour an experiment, side by side."""
    own = frame[(frame["hypothesis"] == hypothesis) & (frame["n_seeds"] > 0)]
    if own.empty:
        return None
    variants, experiments = _variants_in_order(own), list(dict.fromkeys(own["experiment"]))
    figure, axes = new_axes(f"{hypothesis}: final error by experiment")
    width = 0.8 / len(experiments)
    for j, experiment in enumerate(experiments):
        rows = own[own["experiment"] == experiment]
        x = [variants.index(v) - 0.4 + width * (j + 0.5) for v in rows["variant"]]
        axes.errorbar(x, rows["mean"], yerr=[rows["mean"] - rows["lo"], rows["hi"] - rows["mean"]], fmt="o",
                      color=PALETTE[j % len(PALETTE)], capsize=3, label=experiment)
    axes.set_xticks(range(len(variants)), variants, rotation=20, ha="right")
    axes.set_ylim(bottom=0)
    axes.set_ylabel(f"{ERROR_LABEL} at the last position")
    axes.legend(fontsize="small")
    return figure


def compare(experiment_dirs, out) -> dict[str, Path | list[Path]]:
    """Write `comparison.csv`, `COMPARISON.md` and a figure per shared hypothesis into `out`; returns the paths."""
    frame = comparison_frame(experiment_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with replacing(out / COMPARISON_FILE) as temporary:
        frame.to_csv(temporary, index=False)
    lines = [f"# Comparison: {', '.join(dict.fromkeys(frame['experiment']))}", "",
             "Each cell: the variant's final error at the last position, mean over seeds with the bootstrap 5-95% "
             "band over seeds, as each experiment's REPORT.md ranks it. Measured on:", ""]
    lines += [f"- {experiment}: {source}" for experiment, source in
              frame[["experiment", "source"]].drop_duplicates().itertuples(index=False)]
    plots = []
    for hypothesis in dict.fromkeys(frame["hypothesis"]):
        lines += ["", f"## {hypothesis}", "", *comparison_table(frame, hypothesis)]
        figure = comparison_figure(frame, hypothesis)
        if figure is not None:
            path = plot_path(out / PLOTS_DIR, hypothesis, "comparison")
            with replacing(path) as temporary:
                figure.savefig(temporary, dpi=120)
            plots.append(path)
            lines += ["", f"![{hypothesis}]({path.relative_to(out).as_posix()})"]
    report = atomic.write_text(out / COMPARISON_REPORT, "\n".join(lines) + "\n")
    return {"comparison": out / COMPARISON_FILE, "report": report, "plots": plots}
