"""Tidy dataframes of an experiment: training curves (one row per trial and step), one row per trial, and
the mean over seeds with its bootstrap band.

Configuration columns are the dotted config keys (`model.n_layer`); metric names use `/` (`eval/loss`) and
bookkeeping columns have neither, which is how `config_columns` tells them apart.
"""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pandas as pd

from analysis.cost import trial_cost
from analysis.experiment import AnalysisWarning, TrialFolder, config_value, identities, read_trials
from analysis.stats import bootstrap_mean
from trainers.onednn import recorded_library
from trainers.records import SEED_KEY, trial_status
from trainers.tasks import predict_zero_error

log = logging.getLogger(__name__)

PREDICT_ZERO_COLUMN = "predict_zero"  # the summary's column: the error of predicting 0 on the trial's task
PRODUCTS_COLUMN = "products"  # the summary's column: the library of the trial's fp32 CPU products (MKL, oneDNN)
# Ray's bookkeeping; `time_total_s` and `node_id` stay because wall time and placement are worth a column
RAY_COLUMNS = frozenset({
    "trial_id", "training_iteration", "timestamp", "date", "hostname", "node_ip", "pid", "done",
    "time_this_iter_s", "time_since_restore", "iterations_since_restore", "timesteps_since_restore",
    "timesteps_total", "timesteps_this_iter", "episodes_total", "episodes_this_iter", "experiment_id",
    "experiment_tag", "config", "should_checkpoint", "checkpoint_dir_name", "warmup_time",
})


def config_columns(frame: pd.DataFrame) -> list[str]:
    return [column for column in frame.columns if "." in column]


def load_curves(experiment_dir) -> pd.DataFrame:
    return frames_of(read_trials(experiment_dir))[0]


def load_summary(experiment_dir) -> pd.DataFrame:
    return frames_of(read_trials(experiment_dir))[1]


def frames_of(trials: list[TrialFolder]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, summary) of the trials; each trial's history is rebuilt once, so gaps are reported once."""
    histories = [trial_history(trial) for trial in trials]
    ids = identities(trials)
    return _curves_frame(ids, histories), summary_frame(trials, ids, histories)


def _is_metric(key, value) -> bool:
    return key not in RAY_COLUMNS and (value is None or isinstance(value, (bool, int, float, str)))


def trial_history(trial: TrialFolder) -> pd.DataFrame:
    """The trial's rows, one per step: the checkpoint's history merged with result.json.

    After a restore Ray may have lost rows of result.json or written some twice (ray-project/ray#41668).
    Later sources win (result.json after the checkpoint, later lines after earlier ones), and a column one
    source lacks, such as Ray's `time_total_s` for rows only the checkpoint kept, stays empty.
    """
    rows = [{k: v for k, v in row.items() if _is_metric(k, v)}
            for row in (*trial.saved_rows, *trial.rows) if isinstance(row.get("step"), (int, float))]
    if not rows:
        return pd.DataFrame({"step": pd.Series(dtype="int64")})
    frame = pd.DataFrame(rows).astype({"step": "int64"})
    history = frame.groupby("step", sort=True).last().reset_index()
    reported = {int(row["step"]) for row in trial.rows if isinstance(row.get("step"), (int, float))}
    recovered = len(set(history["step"]) - reported)
    if recovered and trial.rows:
        log.info("trial %s: %d step(s) recovered from the checkpoint's history", trial.trial_id, recovered)
    _warn_gaps(trial, history["step"].to_numpy())
    return history


def logging_cadence(trial: TrialFolder, steps: np.ndarray) -> int:
    configured = config_value(trial.config, "wandb.log_every_steps")
    if isinstance(configured, int) and configured > 0:
        return configured
    gaps = np.diff(steps)
    return int(np.bincount(gaps).argmax()) if len(gaps) else 0


def missing_steps(steps: np.ndarray, cadence: int) -> list[int]:
    """Steps of the logging cadence between the first and the last logged step that no source has."""
    if len(steps) < 2 or cadence <= 0:
        return []
    # the phase most steps share: evaluation and checkpoint rows fall off the cadence, logged rows do not
    phase = int(np.bincount(steps % cadence).argmax())
    first = int(steps.min()) + (phase - int(steps.min())) % cadence
    return sorted(set(range(first, int(steps.max()) + 1, cadence)) - set(steps.tolist()))


def _warn_gaps(trial: TrialFolder, steps: np.ndarray) -> None:
    missing = missing_steps(steps, logging_cadence(trial, steps))
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        warnings.warn(f"trial {trial.trial_id}: {len(missing)} logged step(s) missing from result.json and the "
                      f"checkpoint ({shown}); its curves have gaps there", AnalysisWarning, stacklevel=2)


def _curves_frame(ids: list[dict], histories: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [pd.concat([pd.DataFrame([ident] * len(history)), history.reset_index(drop=True)], axis=1)
             for ident, history in zip(ids, histories) if len(history)]
    identity = list(ids[0]) + ["step"]
    if not parts:
        return pd.DataFrame(columns=identity)
    curves = pd.concat(parts, ignore_index=True, sort=False)
    return curves[identity + [c for c in curves.columns if c not in identity]]


def summary_frame(trials: list[TrialFolder], ids: list[dict], histories: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.DataFrame([{**ident, **trial_summary(trial, history)}
                         for trial, ident, history in zip(trials, ids, histories)])


def _last(history: pd.DataFrame, column: str):
    values = history[column].dropna() if column in history else ()
    return values.iloc[-1] if len(values) else math.nan


def trial_summary(trial: TrialFolder, history: pd.DataFrame) -> dict:
    train_steps = config_value(trial.config, "training.train_steps")
    last_step = int(history["step"].max()) if len(history) else math.nan
    losses = history["eval/loss"].dropna() if "eval/loss" in history else pd.Series(dtype=float)
    wall = _last(history, "time_total_s")
    return {
        # the checkpoint's rows too: a restore may have lost some of result.json's
        "status": trial_status((*trial.saved_rows, *trial.rows), train_steps, errored=trial.errored),
        "last_step": last_step,
        "train_steps": train_steps,
        "final_eval_loss": float(losses.iloc[-1]) if len(losses) else math.nan,
        "final_eval_loss_last": float(_last(history, "eval/loss_last")),
        "best_eval_loss": float(losses.min()) if len(losses) else math.nan,
        "wall_time_s": _last(history, "elapsed_s") if pd.isna(wall) else wall,
        "node_id": _last(history, "node_id"),
        PRODUCTS_COLUMN: recorded_library(trial.checkpoint),
        PREDICT_ZERO_COLUMN: _trial_predict_zero(trial.config),
        **trial_cost(trial.config),
    }


def _trial_predict_zero(config: dict) -> float:
    """The error predicting 0 scores on the trial's final prompts, on the scale errors are reported in; NaN
    without a config."""
    task, dims, sparsity = (config_value(config, key) for key in
                            ("training.task_name", "training.curriculum.dims.end", "training.sparsity"))
    try:
        return predict_zero_error(task, dims, sparsity)
    except (TypeError, ValueError):
        return math.nan


def aggregate_seeds(frame: pd.DataFrame, metric: str = "eval/loss", *, by=("step",),
                    band: tuple[str, str] | None = None) -> pd.DataFrame:
    """Mean of `metric` over the trials of one configuration (all config keys but the seed) per `by`,
    with the bootstrap 5-95% band of that mean and the number of seeds.

    `band` names the lo/hi columns a lone trial already carries (a band over prompts); a configuration with
    one seed keeps that band instead of a zero-width one.
    """
    keys = [c for c in config_columns(frame) if c != SEED_KEY] + list(by)
    data = frame.dropna(subset=[metric])
    groups = data.groupby(keys, dropna=False, sort=False) if keys else [((), data)]
    rows = []
    for key, group in groups:
        mean, lo, hi = bootstrap_mean(group[metric].to_numpy(dtype=float))
        if band is not None and len(group) == 1:
            lo, hi = group[band[0]].iloc[0], group[band[1]].iloc[0]
        tags = {tag for joined in group["hypotheses"].dropna() for tag in str(joined).split(";") if tag}
        rows.append({"hypotheses": ";".join(sorted(tags)), **dict(zip(keys, key)),
                     "mean": float(mean), "lo": float(lo), "hi": float(hi), "n_seeds": len(group)})
    result = pd.DataFrame(rows, columns=["hypotheses", *keys, "mean", "lo", "hi", "n_seeds"])
    return result.sort_values(list(by), kind="stable", ignore_index=True) if by else result
