"""How a space's trials travel through Ray Tune, and the callback that records each one.

Tune gets `{"variant": grid_search([{"hypotheses": [...], dotted_key: value, ...}, ...]), sampled_key: domain}`
and hands every trial its resolved params in that shape; `trial_values` turns them back into the trial's
hypotheses and flat dotted values. Only this module knows the shape.

`TrialRecorder`, a Tune callback on the driver, writes each trial's record (`trainers.records.TrialRecord`, the
sampled values included) into the trial's folder when the trial starts, beside Ray's params.json, so it is
synced to the storage and kept on `--resume` as params.json is. The analysis reads that record, never Tune's
params.
"""
from __future__ import annotations

import contextlib

from ray import tune
from ray.tune.logger import LoggerCallback

from trainers.records import PlannedTrial, RecordError, TrialRecord, read_trial_record, write_trial_record

_VARIANT = "variant"
_TAGS = "hypotheses"
_EARLIER_TAGS = "experiments"  # what sweeps started before the rename carry in their saved Tune state


def encode(trials: list[PlannedTrial], sampled: dict) -> dict:
    """Tune's param_space: one grid entry per trial, in the given order, and the sampled keys' Tune domains.
    A configuration that several hypotheses share is one entry carrying all their names."""
    grid = [{_TAGS: list(t.hypotheses), **t.values} for t in trials]
    return {_VARIANT: tune.grid_search(grid), **sampled}


def trial_values(params: dict) -> tuple[tuple[str, ...], dict]:
    """A trial's resolved params -> (its hypotheses, {dotted key: value} of the grid and the sampled keys)."""
    variant = dict(params.get(_VARIANT) or {})
    tags = variant.pop(_TAGS, None)
    earlier = variant.pop(_EARLIER_TAGS, ())
    return tuple(earlier if tags is None else tags), {**variant, **{k: v for k, v in params.items() if k != _VARIANT}}


def trial_record(trial_id: str, params: dict) -> TrialRecord:
    hypotheses, values = trial_values(params)
    return TrialRecord(trial_id=trial_id, hypotheses=list(hypotheses), values=values)


class TrialRecorder(LoggerCallback):
    """Writes the trial's record into its folder on the driver (`RunConfig(callbacks=[TrialRecorder()])`).

    The folder is Tune's staging copy of the trial's folder, which Tune syncs to the storage with params.json;
    a restarted or resumed trial keeps the record it has, which an extension may have given a new hypothesis
    (`tune_looped.extend`) that Tune's saved params do not know."""

    def log_trial_start(self, trial) -> None:
        # Tune's own loggers run after the run config's callbacks: the folder may not exist yet
        trial.init_local_path()
        record = trial_record(trial.trial_id, trial.config)
        # the staging folder of a new Ray session starts empty: the record kept is the one in the storage
        for folder in (trial.local_path, trial.path):
            with contextlib.suppress(RecordError, TypeError):
                kept = read_trial_record(folder)
                if kept.trial_id == trial.trial_id:
                    record = kept
                    break
        write_trial_record(trial.local_path, record)
