"""A study as the command line and `run_space` run it: one sweep (`tune_looped.sweep`) or, for a sequential study
(`--until-decided`), its first look's seeds, then rounds that give the design's next seeds
to the comparisons still open and to their references, until every comparison is decided, the last look (the
seed cap) is taken, or the budget is spent.

The schedule, which seeds each look has, is the design's, fixed in space.yaml before the first look; the results
choose only which comparisons the next round serves, as the group-sequential rule allows. Each round is an
extension of the experiment (`tune_looped.extend`): its new trials run in a Tune run of their own, and no trial
runs twice. After a round the sweep's analysis writes the frames and results; the look is taken from them with
the experiment's lock still held, recorded (`trainers.records.LookRecord`), and the report written again with
it. A resume finishes the round it stopped in, takes its look if it was not taken, and goes on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainers.layout import SUMMARY_FRAME, frame_file
from trainers.records import (AT_CAP, DECIDED, OVER_BUDGET, SEED_KEY, LookRecord, PlannedTrial, RecordError,
                              SpaceRecord, StudyRecord, configuration_key, read_space_record, trial_key,
                              trial_records, write_space_record)
from tune_looped.cluster import ray_held
from tune_looped.extend import saved_state
from tune_looped.inputs import DEFAULT_STORAGE, Options, Round, check_seeds
from tune_looped.sweep import Sweep, sweep

if TYPE_CHECKING:
    import pandas as pd

    from analysis.answers import Answers


def run_space(space, *, quick: bool = False, seeds: list[int] | None = None, storage: str = DEFAULT_STORAGE,
              name: str | None = None, extend: bool = False, resume: bool = False,
              overrides: dict[str, Any] | None = None, report: bool = True, **options) -> Sweep:
    """Run the space file `space` (a path, or a name in the package's search_spaces/); returns the experiment
    folder and Tune's ResultGrid. The keywords are the command line's flags (`max_concurrent=2` for
    `--max-concurrent 2`, `overrides={"training.train_steps": 50}` for `--set`, `report=False` for `--no-report`).

    Raises SpaceError on bad input, before Ray starts or anything is written, and SweepError when the sweep ran
    but not every trial ended well (`resume=True` with the same arguments and `name` continues it)."""
    unknown = sorted(set(options) - (set(Options.__dataclass_fields__) - {"dry_run"}))
    if unknown:
        raise TypeError(f"run_space() got unexpected keyword argument(s): {', '.join(unknown)}")
    if seeds is not None:
        seeds = check_seeds(seeds, "seeds")
    return run_study(Options(space=str(space), quick=quick, seeds=seeds, storage=storage, name=name, extend=extend,
                         resume=resume, overrides=dict(overrides or {}), report=report, **options))


def run_study(args: Options) -> Sweep:
    """The sweep of `args`; for a sequential study, its rounds after it, until the study ends. The rounds share
    the first sweep's Ray, which stays up through each round's analysis; a fixed study's Ray ends before its
    analysis, so that no worker's line of Ray's stopping reaches the terminal there."""
    args = _sequential_if_recorded(args)
    with ray_held() if args.until_decided else contextlib.nullcontext():
        return _study(args)


def _study(args: Options) -> Sweep:
    experiment_dir, outcome = Path(args.storage).expanduser() / (args.name or ""), None
    if not (args.resume and _round_never_saved(experiment_dir)):
        outcome = sweep(args, then=_look_taker(time.monotonic()))
        experiment_dir = outcome.experiment_dir
    # else the round stopped before Tune first saved its state: it starts again, below, in the same folder
    record = read_space_record(experiment_dir)
    if record.decide is None:
        return outcome
    # the rounds extend the experiment with the design it recorded, whatever the command first asked
    args = dataclasses.replace(args, name=experiment_dir.name, resume=False, rebuild_state=False, extend=True,
                               until_decided=True)
    while record.looks and not record.looks[-1].ended:
        round = next_round(experiment_dir, record)
        print(f"round {round.look}: {len(round.trials) - len(record.trials)} trial(s), seeds "
              f"{_seeds_shown(record.decide.seeds_at(round.look))}, to the comparisons still open and their "
              "references", file=sys.stderr)
        outcome = sweep(args, round, then=_look_taker(time.monotonic()))
        record = read_space_record(experiment_dir)
    return outcome


def _sequential_if_recorded(args: Options) -> Options:
    """A resume of a sequential study is sequential, with or without the flag: its record says so."""
    if args.until_decided or not args.resume or not args.name:
        return args
    try:
        record = read_space_record(Path(args.storage).expanduser() / args.name)
    except RecordError:
        return args  # the resume's own checks say what is wrong
    return dataclasses.replace(args, until_decided=True) if record.decide is not None else args


def _round_never_saved(experiment_dir: Path) -> bool:
    """A sequential study whose last round was stopped before Tune first saved its state: a resume cannot restore
    it, and the rounds plan it again."""
    try:
        record = read_space_record(experiment_dir)
    except RecordError:
        return False
    runs = record.run_list()
    return record.decide is not None and len(runs) > 1 and not saved_state(experiment_dir / runs[-1].folder)


def _seeds_shown(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds))


def study_answers(experiment_dir: Path, record: SpaceRecord) -> tuple[pd.DataFrame, Answers]:
    """The summary and the answers of the analysis just written, by the study's rule."""
    # the analysis where a study is run, not where the package is imported (a dry run stays light)
    import pandas as pd

    from analysis.answers import answers
    from analysis.results import read_results
    from analysis.verdict import hypotheses_of

    summary = pd.read_parquet(frame_file(experiment_dir, SUMMARY_FRAME))
    return summary, answers(summary, read_results(experiment_dir), hypotheses_of(record), record.decide)


def _look_taker(started: float):
    def take(experiment_dir: Path) -> bool:
        return take_look(experiment_dir, time.monotonic() - started)
    return take


def take_look(experiment_dir: Path, seconds: float) -> bool:
    """Record the look the experiment's last run brought seeds to, unless it was taken (a resume of a round that
    ended); True when it recorded one. `seconds`: the runner's wall time on the round, its analysis included."""
    record = read_space_record(experiment_dir)
    study = record.decide
    if study is None:
        return False
    # a fixed study made sequential with nothing to add: the trials it had bring the first look
    look = record.run_list()[-1].look or 1
    if any(taken.look == look for taken in record.looks):
        return False
    summary, found = study_answers(experiment_dir, record)
    still_open = [f"{a.hypothesis}: {c.variant}" for a in found.items for c in _undecided(a)[0]]
    undecided = any(_undecided(a)[1] for a in found.items)
    in_round = summary[SEED_KEY].isin(study.seeds_at(look)) if SEED_KEY in summary else summary.index < 0
    tflop = float(summary.loc[in_round, "training_flops"].sum()) / 1e12
    spent_s = sum(taken.round_s for taken in record.looks) + seconds
    spent_tflop = sum(taken.round_tflop for taken in record.looks) + tflop
    ended = why_it_ends(study, look, undecided, spent_s, spent_tflop)
    taken = LookRecord(look=look, seeds=study.looks[look - 1], taken=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       round_s=round(seconds, 1), round_tflop=tflop, open=still_open, ended=ended)
    write_space_record(experiment_dir, record.model_copy(update={"looks": [*record.looks, taken]}))
    where = f"look {look} of {len(study.looks)} ({study.looks[look - 1]} seeds a variant)"
    print(f"{where}: {len(still_open)} comparison(s) open"
          + (f"; the study ends: {ended}" if ended else ""), file=sys.stderr)
    return True


def why_it_ends(study: StudyRecord, look: int, undecided: bool, spent_s: float, spent_tflop: float) -> str:
    """Why the study ends at `look` (1 = the first): no comparison left undecided (open, or at the cap), its last
    look, or its budget spent (the runner's wall time on its rounds and their training FLOPs, summed over the
    looks so far); "" if it goes on."""
    if not undecided:
        return DECIDED
    if look == len(study.looks):
        return AT_CAP
    if (study.budget_hours is not None and spent_s >= study.budget_hours * 3600
            or study.budget_tflop is not None and spent_tflop >= study.budget_tflop):
        return OVER_BUDGET
    return ""


def next_round(experiment_dir: Path, record: SpaceRecord) -> Round:
    """The experiment's trials with those of the next look's round: the design's next seeds for the variants of
    each open comparison and for their references."""
    study, look = record.decide, record.looks[-1].look + 1
    _, found = study_answers(experiment_dir, record)
    trial_ids = set()
    for answer in found.items:
        labels = answer.trials.apply(answer.variants.label, axis=1)
        for comparison in _undecided(answer)[0]:
            sides = labels.isin([comparison.variant, comparison.reference])
            trial_ids |= set(answer.trials.loc[sides, "trial_id"])
    wanted = {configuration_key(record.base, values) for values in _trial_values(experiment_dir, trial_ids)}
    tags: dict[str, tuple] = {}
    values_of: dict[str, dict] = {}
    for trial in record.trials:
        key = configuration_key(record.base, trial.values)
        if key in wanted:
            tags[key] = tuple(dict.fromkeys((*tags.get(key, ()), *trial.hypotheses)))
            values_of[key] = {k: v for k, v in trial.values.items() if k != SEED_KEY}
    have = {trial_key(record.base, t.values) for t in record.trials}
    added = [PlannedTrial(hypotheses=tags[key], values={**values_of[key], SEED_KEY: seed})
             for key in values_of for seed in study.seeds_at(look)
             if trial_key(record.base, {**values_of[key], SEED_KEY: seed}) not in have]
    return Round((*record.trials, *added), look)


def _undecided(answer) -> tuple[list, bool]:
    """The answer's comparisons still open, which the next round serves, and whether any is left undecided."""
    from analysis.study import open_comparisons, undecided

    return open_comparisons(answer.verdict), undecided(answer.verdict)


def _trial_values(experiment_dir: Path, trial_ids: set[str]) -> list[dict]:
    return [trial.values for _, trial in trial_records(experiment_dir) if trial.trial_id in trial_ids]
