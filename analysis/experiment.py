"""One experiment on disk, read without Ray: its trial folders, their values, results and checkpoints.

Ray Tune writes one folder per trial; the runner records in each the trial's id, hypotheses and dotted
values (`trial.json`, `trainers.records`). Which folders are trial folders is `trainers.layout`'s rule; the
analysis reads those that hold the record. The experiment may still be running or may have been interrupted,
so a half-written last line of `result.json` is skipped and a checkpoint that does not load gives way to the
next most recent one.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from trainers.checkpoint import read_weights, reason
from trainers.dotted import flatten, get_dotted
from trainers.layout import (PARAMS_FILE, RESULT_FILE, SPACE_RECORD, TRIAL_RECORD, checkpoint_files, experiments_in,
                             trial_folders)
from trainers.records import RecordError, SpaceRecord, read_space_record, read_trial_record, trial_failed


class AnalysisError(ValueError):
    """An experiment that cannot be analysed; the message is one line naming the path."""


class AnalysisWarning(UserWarning):
    """Part of a trial is missing or unreadable; the analysis goes on with what is there."""


@dataclass(frozen=True)
class TrialFolder:
    """One trial as the analysis reads it from its folder."""
    trial_id: str
    path: Path
    hypotheses: tuple[str, ...]  # sorted
    params: dict  # dotted config key -> value, as the search space gave it (grid and sampled keys)
    rows: list  # result.json rows in file order
    checkpoint: dict | None  # the latest loadable checkpoint.pt
    errored: bool

    @property
    def config(self) -> dict:
        return self.checkpoint.get("config", {}) if self.checkpoint else {}

    @property
    def saved_rows(self) -> list:
        """The metrics history the latest checkpoint holds: every row up to that checkpoint."""
        return (self.checkpoint.get("metrics") or []) if self.checkpoint else []


def read_trials(experiment_dir) -> list[TrialFolder]:
    root = Path(experiment_dir)
    if not root.is_dir():
        raise AnalysisError(f"{root}: no such experiment directory")
    _refuse_several(root)
    folders = trial_folders(root)
    recorded = [folder for folder in folders if (folder / TRIAL_RECORD).exists()]
    unrecorded = sorted(set(folders) - set(recorded))
    if unrecorded and not recorded:
        raise AnalysisError(f"{root}: no trial folder holds {TRIAL_RECORD}, only Ray's {PARAMS_FILE}: an experiment "
                            f"of a runner older than the trial record; `python -m tune_looped.upgrade {root}` "
                            "writes them")
    for folder in unrecorded:
        warnings.warn(f"{folder}: {PARAMS_FILE} but no {TRIAL_RECORD}; trial skipped", AnalysisWarning, stacklevel=2)
    trials = [trial for folder in recorded if (trial := _read_trial(folder)) is not None]
    if not trials:
        raise AnalysisError(f"{root}: no trials there (no folder holds a readable {TRIAL_RECORD})")
    if not any(trial.rows or trial.checkpoint for trial in trials):
        raise AnalysisError(f"{root}: no trial has reported a result yet ({len(trials)} trial folder(s), none with "
                            "a result.json row or a checkpoint)")
    return trials


def _refuse_several(root: Path) -> None:
    """A folder of several experiments (a storage root such as ~/ray_results) is not one experiment: its trials
    would be ranked together although they answer different spaces."""
    inside = [p for p in experiments_in(root) if p != root]
    if inside:
        names = ", ".join(str(p.relative_to(root)) for p in inside[:5]) + (", ..." if len(inside) > 5 else "")
        what = "another experiment" if (root / SPACE_RECORD).exists() else f"{len(inside)} experiment(s)"
        raise AnalysisError(f"{root}: holds {what} ({names}), not one experiment; give one experiment's folder, "
                            f"e.g. {inside[0]}")


def space_record(experiment_dir) -> SpaceRecord | None:
    """The runner's record of the space; None for an experiment made otherwise, or a record that does not read."""
    try:
        return read_space_record(experiment_dir)
    except RecordError:
        return None


def _read_trial(folder: Path) -> TrialFolder | None:
    """The trial in `folder`, or None with a warning when its record is unreadable."""
    try:
        record = read_trial_record(folder)
    except RecordError as err:
        warnings.warn(f"{err}; trial skipped", AnalysisWarning, stacklevel=2)
        return None
    params = {key: cell(value) for key, value in flatten(record.values).items()}
    errored = trial_failed(folder)
    return TrialFolder(record.trial_id, folder, tuple(sorted(set(record.hypotheses))), params,
                       read_result_rows(folder / RESULT_FILE), load_latest_checkpoint(folder), errored)


def cell(value):
    """A value as a dataframe cell: lists do not fit a cell that must survive CSV and Parquet, so they are JSON."""
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


def read_result_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            # a running trial's last line may be half written; anything else is worth a word
            if number < len(lines):
                warnings.warn(f"{path}: line {number} is not JSON; skipped", AnalysisWarning, stacklevel=2)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def load_latest_checkpoint(folder: Path) -> dict | None:
    """The loadable checkpoint with the highest step among the trial's (`trainers.layout.checkpoint_files`).

    Tune numbers its checkpoint folders by report, and a restore from an older checkpoint goes on from there, so
    the step stored inside decides. mmap keeps the model weights on disk until someone reads them.
    """
    states = []
    for file in checkpoint_files(folder):
        try:
            state = read_weights(file, mmap=True)
        except (OSError, ValueError) as err:
            warnings.warn(f"{file}: checkpoint not loadable ({reason(err)}); skipped", AnalysisWarning, stacklevel=2)
            continue
        if isinstance(state, dict) and isinstance(state.get("step"), int):
            states.append(state)
    return max(states, key=lambda s: (s["step"], len(s.get("metrics") or ())), default=None)


def config_value(config: dict, dotted: str):
    """A config's value at `dotted` as a dataframe cell, NaN where the config has no such key."""
    return cell(get_dotted(config, dotted, math.nan))


def identities(trials: list[TrialFolder]) -> list[dict]:
    """Per trial: trial_id, hypotheses (';'-joined) and every key any trial's params set.

    A key that a trial's params leave out takes the value its checkpoint's config holds, so a variant that
    relies on the base file's value still gets a cell.
    """
    keys = sorted({key for trial in trials for key in trial.params})
    return [
        {"trial_id": trial.trial_id, "hypotheses": ";".join(trial.hypotheses),
         **{key: trial.params[key] if key in trial.params else config_value(trial.config, key) for key in keys}}
        for trial in trials
    ]
