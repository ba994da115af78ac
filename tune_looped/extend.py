"""`--extend`: more trials for an experiment that ran (more seeds, new grid values, new hypotheses).

Ray Tune cannot add trials to a restored experiment, and a second Tuner of the same name overwrites the first's
state at the experiment's root (`tuner.pkl`, `experiment_state-*.json`). So an extension is a Tune experiment of
its own, `<experiment>/extend-N/`, that runs only the trials the experiment does not have yet. The space record
then lists every trial asked for and, in `runs`, each Tune run with when it started and what it added
(`trainers.records.RunRecord`); the analysis reads all the trial folders as one experiment.

A trial is the same trial when its whole config is (the seed included; `trainers.records.trial_key`), so a new
grid key whose value is the base's leaves the trials that ran as they are. What would change a trial that ran is
refused, naming the key: `FROZEN` below. The questions, references and expectations of the hypotheses may change (the report reads
them); a new hypothesis that takes in trials that ran tags them, in their `trial.json`, and nothing else of
theirs is written.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from trainers.dotted import first_difference, get_dotted
from trainers.layout import SPACE_RECORD, extension_folder, newest_state, run_trial_folders
from trainers.records import (ERROR, INCOMPLETE, PlannedTrial, RunRecord, SpaceRecord, TrialRecord, trial_key,
                              trial_records, write_trial_record)
from tune_looped.space import Space, SpaceError, space_record, trial_config
from tune_looped.state import set_aside
from tune_looped.tables import against_space, folder_row

# what no extension may change: each would change trials that ran, or how they are judged against new ones
FROZEN = ("quick", "base", "overrides", "sample", "num_samples", "resources", "scheduler", "metric", "mode", "decide",
          "evaluation")


def _completed(base: dict, trial: PlannedTrial, keys: list[str]) -> dict:
    """A trial's values with each of `keys` it lacks at its config's value (a grid key new to the experiment)."""
    missing = [k for k in keys if k not in trial.values]
    if not missing:
        return dict(trial.values)
    config = trial_config(base, trial.values).model_dump()
    return {**trial.values, **{key: get_dotted(config, key) for key in missing}}


@dataclass(frozen=True)
class Extension:
    folder: str  # `extend-N`, the new Tune experiment's folder in the experiment
    record: SpaceRecord  # the experiment's record after the extension
    space: Space  # every trial of the experiment, old and new
    added: tuple[PlannedTrial, ...]  # what the extension's Tune experiment runs
    retagged: tuple[tuple[Path, TrialRecord], ...]  # trial folders whose record takes a new hypothesis or key
    earlier: SpaceRecord  # the record of the runs before this one, as their trial folders still say
    stale: Path | None = None  # an earlier extension's folder without Tune state, set aside before this one runs

    def extension_space(self) -> Space:
        return dataclasses.replace(self.space, trials=self.added)


def _check_frozen(saved: SpaceRecord, current: SpaceRecord, experiment_dir: Path, flag: str) -> None:
    # through YAML, as the saved record went, so that tuples and lists compare equal
    current = SpaceRecord.model_validate(yaml.safe_load(yaml.safe_dump(current.model_dump())))
    saved_values, current_values = saved.model_dump(), current.model_dump()
    for field in FROZEN:
        key = first_difference(saved_values[field], current_values[field], f"{field}.")
        if key and field == "evaluation":
            raise SpaceError(f"{flag}: {key} differs from the experiment's {experiment_dir / SPACE_RECORD}; the "
                             "trials an extension adds are scored as the earlier ones were (`python -m analysis all "
                             "EXPERIMENT_DIR` with --n-prompts, --max-loops or --seed scores them all another way)")
        if key:
            raise SpaceError(f"{flag}: {key} differs from the experiment's {experiment_dir / SPACE_RECORD}; an "
                             "extension must not change the trials that ran (start a new experiment with another "
                             "--name for that)")
    if saved.decide is not None:
        # a sequential study's comparisons are fixed with its design: its looks and Holm's m count them
        key = first_difference(_judged(saved), _judged(current), "hypotheses.")
        if key:
            raise SpaceError(f"{flag}: {key} differs from the experiment's {experiment_dir / SPACE_RECORD}; a "
                             "sequential study's hypotheses are fixed with its design (start a new experiment with "
                             "another --name for other ones)")


def _judged(record: SpaceRecord) -> dict[str, dict]:
    """The hypotheses by name, as the verdicts judge them: their questions aside."""
    return {h["name"]: {k: v for k, v in h.items() if k not in ("name", "question")}
            for h in record.model_dump()["hypotheses"]}


def plan(experiment_dir: Path, space: Space, saved: SpaceRecord, quick: bool, look: int | None = None) -> Extension:
    """What `--extend` adds to the experiment at `experiment_dir` (record `saved`) from `space`, resolved with the
    recorded seeds and the new ones; reads only. A SpaceError when a frozen key changed. `look`: the sequential
    study's look the added trials bring seeds to; a fixed study made sequential takes the space's design."""
    current = space_record(space, quick)
    _check_frozen(saved if saved.decide is not None else saved.model_copy(update={"decide": current.decide}),
                  current, experiment_dir, "--extend" if look is None or saved.decide is None else "--until-decided")
    runs, stale = saved.run_list(), None
    if len(runs) > 1 and not saved_state(experiment_dir / runs[-1].folder):
        # the last extension stopped before Tune first saved its state: it starts again, in the same folder
        stale, runs = runs[-1], runs[:-1]
        dropped = {trial_key(space.base, t.values) for t in stale.trials}
        saved = saved.model_copy(update={"trials": [t for t in saved.trials
                                                    if trial_key(space.base, t.values) not in dropped],
                                         "runs": runs})
    keys = sorted({k for t in (*saved.trials, *space.trials) for k in t.values})
    new_by_identity = {trial_key(space.base, t.values): t for t in space.trials}
    merged, seen = [], set()
    for old in saved.trials:
        identity = trial_key(space.base, old.values)
        seen.add(identity)
        match = new_by_identity.get(identity)
        tags = tuple(dict.fromkeys((*old.hypotheses, *(match.hypotheses if match else ()))))
        merged.append(PlannedTrial(hypotheses=tags, values=_completed(space.base, old, keys)))
    added = tuple(PlannedTrial(hypotheses=t.hypotheses, values=_completed(space.base, t, keys))
                  for identity, t in new_by_identity.items() if identity not in seen)
    declared = {h.name: h for h in saved.hypotheses} | {h.name: h for h in space.hypotheses}
    # the earlier runs' trials as the record now tags and completes them
    renamed = {trial_key(space.base, old.values): new for old, new in zip(saved.trials, merged)}
    runs = [run.model_copy(update={"trials": [renamed.get(trial_key(space.base, t.values), t) for t in run.trials]})
            for run in runs]
    folder = extension_folder(len(runs))
    if added:
        runs = [*runs, RunRecord(folder=folder, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), trials=list(added),
                                 look=look)]
    trials = [*merged, *added]
    record = current.model_copy(update={"hypotheses": list(declared.values()), "trials": trials, "runs": runs,
                                        "looks": saved.looks})
    everything = dataclasses.replace(space, trials=tuple(trials), hypotheses=tuple(declared.values()))
    stale_folder = experiment_dir / stale.folder if stale is not None and (experiment_dir / stale.folder).exists() \
        else None
    return Extension(folder, record, everything, added, _retags(experiment_dir, saved, merged, space), saved,
                     stale_folder)


def _retags(experiment_dir: Path, saved: SpaceRecord, merged: list[PlannedTrial],
            space: Space) -> tuple[tuple[Path, TrialRecord], ...]:
    """The trial folders whose record must name a hypothesis or a key the extension adds to their trial."""
    planned = {trial_key(space.base, old.values): new for old, new in zip(saved.trials, merged)}
    out = []
    for folder, record in trial_records(experiment_dir):
        new = planned.get(trial_key(space.base, record.values, space.sample))
        if new is None:
            continue
        values = {**new.values, **record.values}
        if tuple(new.hypotheses) != tuple(record.hypotheses) or values != record.values:
            out.append((folder, record.model_copy(update={"hypotheses": new.hypotheses, "values": values})))
    return tuple(out)


def saved_state(run_dir: Path) -> bool:
    """Whether Tune saved the state of the Tune run in `run_dir`, which a restore needs."""
    return newest_state(run_dir) is not None


def set_aside_stale(extension: Extension, experiment_dir: Path) -> None:
    """An earlier extension's folder that Tune never saved a state in, into `.tune_looped/replaced/`: its trials
    run again in the new extension."""
    if extension.stale is not None:
        set_aside(experiment_dir, [extension.stale])


def retag(extension: Extension) -> None:
    for folder, record in extension.retagged:
        write_trial_record(folder, record)


def unfinished_runs(experiment_dir: Path, space: Space, record: SpaceRecord) -> list[str]:
    """The folders of the experiment's Tune runs that have a trial to run still: one that did not end or that
    failed (a resume retries it), or one asked for that never started."""
    out = []
    for run in record.run_list():
        root = experiment_dir / run.folder
        rows = [row for folder in run_trial_folders(root) if (row := folder_row(folder, space)) is not None]
        own = record.model_copy(update={"trials": run.trials})
        _, missing = against_space(rows, own)
        if missing or any(row["status"] in (INCOMPLETE, ERROR) for row in rows):
            out.append(run.folder)
    return out
