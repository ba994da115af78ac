"""One row per variant of a hypothesis: its final error at the last position over seeds, whether it learned,
and its cost. The report's tables and the cost figure are drawn from this frame.
"""
from __future__ import annotations

import math

import pandas as pd

from analysis.cost import COST_COLUMNS
from analysis.stats import bootstrap_mean
from analysis.variants import Variants
from analysis.verdict import did_not_learn, predict_zero_level
from trainers.records import FINISHED, SEED_KEY

LAST_POSITION_CURVES = ("model@b", "model")  # a looped model after its b training loops; a plain one


def final_errors(summary: pd.DataFrame, evaluation: pd.DataFrame | None) -> tuple[pd.DataFrame, str]:
    """The summary with an `error` column, each finished trial's final error at the last position, and a line
    that says where it comes from: the evaluation's fresh prompts when there is one, else the training's own
    held-out prompts (`eval/loss_last`). A trial that diverged, failed or is still running has no final
    model, so no error: its last checkpoint would rank a model that training did not end with."""
    models = evaluation[evaluation["kind"] == "model"] if evaluation is not None else pd.DataFrame()
    finished = summary["status"] == FINISHED
    if models.empty:
        return (summary.assign(error=summary["final_eval_loss_last"].where(finished)),
                "the training's held-out prompts at the final curriculum size (`eval/loss_last`)")
    at_k = models[(models["axis"] == "k") & models["name"].isin(LAST_POSITION_CURVES)]
    last = at_k[at_k["x"] == at_k.groupby("trial_id")["x"].transform("max")]
    errors = last.set_index("trial_id")["mean"]
    k, n_prompts = int(last["x"].max()), int(models["n_prompts"].iloc[0])
    return (summary.assign(error=summary["trial_id"].map(errors).where(finished)),
            f"the evaluation's {n_prompts} fresh prompts at k = {k}, after the training loop count b")


def least_squares_last(evaluation: pd.DataFrame | None) -> float:
    """Least squares' error at the last position (NaN without an evaluation): what a learner can reach."""
    if evaluation is None:
        return math.nan
    rows = evaluation[(evaluation["kind"] == "baseline") & (evaluation["name"] == "least_squares")
                      & (evaluation["axis"] == "k")]
    return float(rows.loc[rows["x"] == rows["x"].max(), "mean"].mean()) if len(rows) else math.nan


def variant_frame(errors: pd.DataFrame, variants: Variants) -> pd.DataFrame:
    """Per variant, in display order: seeds, mean error with its seed band, did it learn, cost, wall time. The
    seeds' values in seed order, whichever run (an extension's, a round's) brought them."""
    if SEED_KEY in errors:
        errors = errors.sort_values(SEED_KEY, kind="stable")
    labels = errors.apply(variants.label, axis=1) if len(errors) else pd.Series(dtype=str)
    rows = []
    for label in variants.labels:
        trials = errors[labels == label]
        values = trials["error"].dropna().to_numpy(dtype=float)
        mean, lo, hi = bootstrap_mean(values) if len(values) else (math.nan,) * 3
        rows.append({
            "variant": label, "n_seeds": len(values), "mean": float(mean), "lo": float(lo), "hi": float(hi),
            "seed_values": tuple(values.round(4)),
            "learned": len(values) > 0 and not did_not_learn(values, predict_zero_level(trials)),
            **{column: trials[column].dropna().iloc[0] if trials[column].notna().any() else math.nan
               for column in COST_COLUMNS},
            "wall_time_s": trials["wall_time_s"].mean(),
            "status": status_line(trials),
        })
    return pd.DataFrame(rows)


def status_line(trials: pd.DataFrame) -> str:
    """`2 finished, 1 diverged at step 21`: how the variant's trials ended, and where the unfinished ones stopped."""
    parts = []
    for status, group in trials.groupby("status", sort=False):
        steps = ", ".join(str(int(s)) for s in sorted(group["last_step"].dropna()))
        where = f" at step{'s' * (len(group) > 1)} {steps}" if status != FINISHED and steps else ""
        parts.append(f"{len(group)} {status}{where}")
    return ", ".join(parts)


def ranked(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with `rank` (1 = lowest mean error) for the variants that learned; the others get none."""
    order = frame[frame["learned"]].sort_values("mean", kind="stable").index
    ranks = pd.Series(range(1, len(order) + 1), index=order, dtype="Int64")
    out = frame.assign(rank=ranks.reindex(frame.index))
    return out.sort_values(["rank", "mean"], na_position="last", kind="stable", ignore_index=True)
