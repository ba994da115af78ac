"""Each trial's answers, one row per (trial, hypothesis): `results.parquet`.

A row holds the trial's variant and role in the hypothesis, its seed and status (the summary's), its final error
at the last position (what the verdict compares), at k = d in-context examples (d the final curriculum's
dimension, where least squares first fits exactly: the research's measure of in-context learning) and, for a
looped model, at the last position after max_loops iterations, and how the evaluation ran it. The report, the
figures and W&B take their per-trial numbers from this frame. Each command that writes one of them writes the
frame again from the trials and the evaluation as they are then, so the file always holds what they showed.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.ranking import LAST_POSITION_CURVES, final_errors
from analysis.variants import Variants, hypotheses, of_hypothesis, variants_of
from analysis.verdict import Hypothesis, reference_label
from trainers.atomic import replacing
from trainers.layout import RESULTS_FILE
from trainers.records import FINISHED, SEED_KEY

# a trial's role in a hypothesis: its variant is a reference, or compared with one
REFERENCE, COMPARED = "reference", "compared"
ERROR_COLUMNS = ["error_last", "error_at_d", "error_last_max_loops"]
# how the evaluation ran the trial: its task, d, prompt length, loop counts (b and the most run) and prompts
SETTING_COLUMNS = ["task_name", "d", "n_points", "train_loops", "max_loops", "n_prompts"]
RESULTS_COLUMNS = ["trial_id", "hypothesis", "variant", "role", SEED_KEY, "status", *ERROR_COLUMNS,
                   "error_last_source", *SETTING_COLUMNS]
_D = "n_dims_truncated"  # the evaluation's name of d


def role(variants: Variants, declaration: Hypothesis | None, row) -> str:
    """REFERENCE for a trial of a reference variant (one the others are compared with), else COMPARED."""
    if declaration is None or not declaration.expect:
        return COMPARED
    settings = {key: row[key] for key in variants.keys}
    return REFERENCE if reference_label(variants, settings, declaration) == variants.label(settings) else COMPARED


def results_frame(summary: pd.DataFrame, evaluation: pd.DataFrame | None,
                  declared: dict[str, Hypothesis] | None = None) -> pd.DataFrame:
    """The frame of `results.parquet`, columns RESULTS_COLUMNS. `error_last` is measured where
    `ranking.final_errors` says (`error_last_source`: the evaluation's prompts, else the training's own); every
    error is empty unless the trial finished, since the last checkpoint of any other trial is not the model
    training ended with."""
    errors, source = final_errors(summary, evaluation)
    rows = []
    for hypothesis in hypotheses(summary):
        own = of_hypothesis(errors, hypothesis)
        variants, declaration = variants_of(own, hypothesis), (declared or {}).get(hypothesis)
        rows += [{"trial_id": row["trial_id"], "hypothesis": hypothesis, "variant": variants.label(row),
                  "role": role(variants, declaration, row), SEED_KEY: row.get(SEED_KEY), "status": row["status"],
                  "error_last": row["error"]} for _, row in own.iterrows()]
    frame = pd.DataFrame(rows, columns=["trial_id", "hypothesis", "variant", "role", SEED_KEY, "status", "error_last"])
    frame = frame.merge(evaluated(evaluation), on="trial_id", how="left").assign(error_last_source=source)
    finished = frame["status"] == FINISHED
    frame = frame.assign(**{column: frame[column].astype(float).where(finished) for column in ERROR_COLUMNS})
    whole = {column: "Int64" for column in SETTING_COLUMNS if column != "task_name"}
    return frame.astype({**whole, "task_name": object})[RESULTS_COLUMNS]


def at_d(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the evaluation frame `rows` at k = d in-context examples, each trial's own d."""
    return rows[rows["x"] == rows[_D]]


def evaluated(evaluation: pd.DataFrame | None) -> pd.DataFrame:
    """Per evaluated trial: its model's error at k = d after b loops, at the last position after max_loops (a
    looped model's; none for a plain one), and the evaluation's settings."""
    columns = ["trial_id", "error_at_d", "error_last_max_loops", *SETTING_COLUMNS]
    models = (evaluation[(evaluation["kind"] == "model") & (evaluation["axis"] == "k")]
              if evaluation is not None and not evaluation.empty else pd.DataFrame())
    if models.empty:
        return pd.DataFrame(columns=columns)
    trained = models[models["name"].isin(LAST_POSITION_CURVES)]
    error_at_d = at_d(trained).groupby("trial_id")["mean"].first()
    longest = models[models["name"] == "model@max_loops"]
    at_max = (longest[longest["x"] == longest.groupby("trial_id")["x"].transform("max")]
              .groupby("trial_id")["mean"].first())
    settings = models.rename(columns={_D: "d"}).groupby("trial_id", sort=False)[SETTING_COLUMNS].first()
    return settings.assign(error_at_d=error_at_d, error_last_max_loops=at_max).reset_index()[columns]


def write_results(results: pd.DataFrame, folder) -> Path:
    path = Path(folder) / RESULTS_FILE
    with replacing(path) as temporary:
        results.to_parquet(temporary, index=False)
    return path


def read_results(folder) -> pd.DataFrame:
    return pd.read_parquet(Path(folder) / RESULTS_FILE)


def experiment_results(folder, summary: pd.DataFrame, evaluation: pd.DataFrame | None,
                       declared: dict[str, Hypothesis] | None = None) -> pd.DataFrame:
    """The frame of the trials and evaluation as they are now, written to `<folder>/results.parquet` and read
    back, so that what a command shows is what the file holds."""
    write_results(results_frame(summary, evaluation, declared), folder)
    return read_results(folder)
