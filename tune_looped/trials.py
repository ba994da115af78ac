"""The trial format: how a space's trials travel through Ray Tune, and the record the runner keeps of each.

Tune gets `{"variant": grid_search([{"experiments": [...], dotted_key: value, ...}, ...]), sampled_key: domain}`
and hands every trial its resolved params in that shape; `trial_values` turns them back into the trial's
experiments and flat dotted values. Only this module knows the shape.

`TrialRecorder`, a Tune callback on the driver, writes each trial's `trial.json` (`{"trial_id", "experiments",
"values"}`, the sampled values included) into the trial's folder when the trial starts, beside Ray's
params.json, so it is synced to the storage and kept on `--resume` as params.json is. The analysis reads
that file, never Tune's params.
"""
from __future__ import annotations

import json
from pathlib import Path

from ray import tune
from ray.tune.logger import LoggerCallback

from analysis.experiment import TRIAL_RECORD
from tune_looped.space import Trial

_VARIANT = "variant"


def encode(trials: list[Trial], sampled: dict) -> dict:
    """Tune's param_space: one grid entry per trial, in the given order, and the sampled keys' Tune domains.
    A configuration that several experiments share is one entry carrying all their tags."""
    grid = [{"experiments": list(t.experiments), **t.values} for t in trials]
    return {_VARIANT: tune.grid_search(grid), **sampled}


def trial_values(params: dict) -> tuple[tuple[str, ...], dict]:
    """A trial's resolved params -> (its experiments, {dotted key: value} of the grid and the sampled keys)."""
    variant = dict(params.get(_VARIANT) or {})
    experiments = tuple(variant.pop("experiments", ()))
    return experiments, {**variant, **{k: v for k, v in params.items() if k != _VARIANT}}


def trial_record(trial_id: str, params: dict) -> dict:
    """What `trial.json` holds for the analysis."""
    experiments, values = trial_values(params)
    return {"trial_id": trial_id, "experiments": list(experiments), "values": values}


def write_record(folder, record: dict) -> None:
    Path(folder, TRIAL_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


class TrialRecorder(LoggerCallback):
    """Writes `trial.json` into the trial's folder on the driver (`RunConfig(callbacks=[TrialRecorder()])`).

    The folder is Tune's staging copy of the trial's folder, which Tune syncs to the storage with params.json;
    a restarted or resumed trial writes the same record again."""

    def log_trial_start(self, trial) -> None:
        # Tune's own loggers run after the run config's callbacks: the folder may not exist yet
        trial.init_local_path()
        write_record(trial.local_path, trial_record(trial.trial_id, trial.config))
