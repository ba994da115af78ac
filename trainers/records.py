"""The records contract: what the runner writes beside Ray Tune's files and the analysis reads back.

An experiment folder holds `space.yaml` (the resolved space: its base inlined, its hypotheses with their
questions, references and expectations, the trials it asked for) and, in every trial folder, `trial.json`
(the trial's id, hypotheses and dotted values). `tune_looped` writes them and `analysis` reads them; nobody else
knows their shape. Both models also read the records of runners before the rename of `experiments` to
`hypotheses`.

This module also owns the rules the runner, the analysis and W&B must agree on: which trial is the same trial
(`trial_key`), how a trial ended (`trial_status`) and how a variant or a run is named (`variant_label`,
`wandb_run_name`, by the table of `trainers.knobs`). Where the files are is `trainers.layout`'s.
"""
from __future__ import annotations

import json
import math
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from trainers import atomic, knobs
from trainers.config import MAX_SEED, PositiveInt, apply_overrides, config_from_dict
from trainers.layout import ERROR_FILES, FIRST_RUN, SPACE_RECORD, TRIAL_RECORD, trial_folders
from trainers.schema import Section

SEED_KEY = "training.seed"  # a variant is a configuration without its seed

Expectation = Literal["worse", "better"]
EXPECTATIONS: tuple[str, ...] = Expectation.__args__
TrendDirection = Literal["increasing", "decreasing"]
TREND_DIRECTIONS: tuple[str, ...] = TrendDirection.__args__
# the keys of the rows a trial reports (`trainers.training.train`; the evaluation keys on evaluation steps only):
# what a space's `metric` may name for the scheduler and Tune's results
METRIC_KEYS = ("step", "overall_loss", "n_loops", "n_points", "n_dims", "lr", "grad_norm", "elapsed_s",
               "steps_per_s", "prompts_per_s", "eval/loss", "eval/loss_last")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _renamed(raw, old: str, new: str):
    """A record of an earlier runner with `old` where the contract now says `new`."""
    if isinstance(raw, dict) and old in raw and new not in raw:
        raw = {**{k: v for k, v in raw.items() if k != old}, new: raw[old]}
    return raw


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Trend:
    """A predicted ordering: the error rises or falls as the grid key grows (`trend_order` sorts its values)."""
    key: str  # a grid key of the hypothesis
    error: TrendDirection


# a dataclass rather than a record model, so that the verdict's tables can write one positionally
@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Hypothesis:
    """One hypothesis, as the space resolves it, its record keeps it and the verdict judges it: the question it
    asks and, for the verdict, its reference and prediction (the other variants worse or better), and its
    predicted trend."""
    name: str
    # keyword-only, so that it is written second in the record, as before, yet not given positionally
    question: str = field(default="", kw_only=True)
    reference: dict[str, Any] = field(default_factory=dict)  # dotted key -> the reference value
    expect: Expectation | None = None
    trend: Trend | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, raw):
        return _renamed(raw, "description", "question")


class PlannedTrial(_Record):
    """A trial the space asked for: its hypotheses and the dotted values that vary across the space."""
    hypotheses: tuple[str, ...]
    values: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, raw):
        return _renamed(raw, "experiments", "hypotheses")


def trial_key(base: dict, values: dict[str, Any], sampled=(), hypotheses=None) -> str:
    """A trial's identity, the one rule for "the same trial": between the space record's entries, its trial
    folders' records, Tune's results and a space an extension resolves.

    The rule: the trial's whole config, `base` with its dotted `values` applied, the seed included. So a value
    given as the base's is the same trial as the value left to the base (a grid key new to an extension), and
    55 from one file is 55.0 from another. Not the values of the keys `sampled` (a space's `sample:`): each run
    draws them afresh, and the space record's entries do not hold them. Not its hypotheses either, tags that a new
    hypothesis adds to trials that ran; given `hypotheses`, the key holds them too (in any order): the same trial
    tagged alike, which is what the summary and a resume compare with the space record, since the analysis takes a
    trial's hypotheses from its own record. Values that make no config are a ConfigError naming the key."""
    # a whole float as the int it spells: an int key's schema refuses 55.0, a float key's takes 55
    grid = {key: int(value) if isinstance(value, float) and value.is_integer() and abs(value) < 2**53 else value
            for key, value in values.items() if key not in sampled}
    config = config_from_dict(apply_overrides(base, grid, "trial"), "trial").model_dump()
    key = config if hypotheses is None else [config, sorted(set(hypotheses))]
    return json.dumps(key, sort_keys=True, default=str)


def configuration_key(base: dict, values: dict[str, Any]) -> str:
    """The identity of a trial's configuration, the seed aside: `trial_key` of its values without the seed, so
    the trials of one configuration across seeds share it."""
    return trial_key(base, {k: v for k, v in values.items() if k != SEED_KEY})


class RunRecord(_Record):
    """One Tune run of the experiment: where its Tune experiment is, when it started, the trials it added."""
    folder: str = FIRST_RUN
    started: str = ""  # local time, ISO 8601
    trials: list[PlannedTrial] = []
    # of a sequential study: the look (1 = the first) whose seeds the run's trials bring, fixed by its design
    look: int | None = None


# looped models are evaluated to 10 b by default: far enough to see whether they hold a fixed point
LOOPS_FACTOR = 10


class Evaluation(Section):
    """How the analysis scores every trial's final checkpoint (`analysis.evaluation`): on `n_prompts` fresh
    prompts drawn from `seed`, looped models run to `max_loops` iterations (None: LOOPS_FACTOR times their
    training loops).
    A space's `evaluation:` section; its record keeps it, so that every later analysis of the experiment scores
    the trials alike."""
    n_prompts: PositiveInt = 1280  # the research's evaluation
    seed: Annotated[int, Field(ge=0, le=MAX_SEED, description=f"an integer from 0 to 2**64 - 1 ({MAX_SEED})")] = 0
    max_loops: PositiveInt | None = Field(
        None, description=f"a positive integer, or null for {LOOPS_FACTOR} times the training loops")


class StudyRecord(_Record):
    """A sequential study's design (`analysis.sequential.Design`'s fields), fixed before its first look, with the
    seeds in the order its rounds give them (look k runs the first `looks[k]`) and its budget (None: no limit)."""
    looks: list[int]
    alpha: float
    spending: str
    smallest_effect: float
    paths: int
    seeds: list[int]
    budget_hours: float | None = None
    budget_tflop: float | None = None

    def seeds_at(self, look: int) -> list[int]:
        """The seeds the round of `look` (1 = the first) brings."""
        return self.seeds[self.looks[look - 2] if look > 1 else 0:self.looks[look - 1]]


# why a sequential study stopped at a look (`LookRecord.ended`)
DECIDED, AT_CAP, OVER_BUDGET = "no comparison left open", "the seed cap", "the budget"


class LookRecord(_Record):
    """One look a sequential study's runner took, after the round that brought its seeds had ended."""
    look: int  # 1 = the first
    seeds: int  # a variant, at this look
    taken: str  # local time, ISO 8601
    round_s: float  # the wall time of the Tune run that brought the look's seeds, its analysis included
    round_tflop: float  # the training FLOPs of that run's trials, in TFLOP
    open: list[str] = []  # `hypothesis: variant` of each comparison still open after it
    ended: str = ""  # why the study stopped here (DECIDED, AT_CAP, OVER_BUDGET); "" when it went on


class SpaceRecord(_Record):
    name: str = ""
    source: str = ""
    quick: bool = False
    base: dict[str, Any] = {}
    hypotheses: list[Hypothesis] = []
    trials: list[PlannedTrial] = []
    sample: dict[str, str] = {}
    num_samples: int = 1
    resources: dict[str, Any] = {}
    scheduler: dict[str, Any] = {}
    metric: str = "eval/loss"
    mode: str = "min"
    max_concurrent: int | None = None
    wandb: dict[str, Any] = {}
    overrides: dict[str, Any] = {}  # the runner's `--set`: dotted keys set in the base (which holds them too)
    # a record of a runner before the section has the defaults, which its analysis used
    evaluation: Evaluation = Evaluation()
    # the history: the first run, then each extension; a record of a runner before extensions has none
    runs: list[RunRecord] = []
    decide: StudyRecord | None = None  # a sequential study's design (`--until-decided`); None: a fixed study
    looks: list[LookRecord] = []  # the looks a sequential study took so far

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, raw):
        return _renamed(raw, "experiments", "hypotheses")

    def run_list(self) -> list[RunRecord]:
        """The experiment's Tune runs, first to last; one at the root for a record that lists none."""
        return self.runs or [RunRecord(trials=self.trials)]

    def seeds(self) -> list[int]:
        """The seeds the experiment's trials ran with, in the order they were first asked for."""
        return list(dict.fromkeys(t.values[SEED_KEY] for t in self.trials if SEED_KEY in t.values))


class TrialRecord(_Record):
    trial_id: str
    hypotheses: tuple[str, ...]
    values: dict[str, Any]  # dotted key -> value, as the space gave it (grid and sampled keys)

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, raw):
        return _renamed(raw, "experiments", "hypotheses")


class RecordError(ValueError):
    """A record that is missing, unreadable or not of the contract; the message names the file."""


def write_space_record(experiment_dir, record: SpaceRecord) -> Path:
    return atomic.write_text(Path(experiment_dir) / SPACE_RECORD, yaml.safe_dump(record.model_dump(), sort_keys=False))


def read_space_record(experiment_dir) -> SpaceRecord:
    path = Path(experiment_dir) / SPACE_RECORD
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: no space record") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise RecordError(f"{path}: unreadable ({str(err).splitlines()[0]})") from None
    try:
        return SpaceRecord.model_validate(raw)
    except ValidationError:
        raise RecordError(f"{path}: not the space record the runner writes") from None


def write_trial_record(folder, record: TrialRecord) -> Path:
    text = json.dumps(record.model_dump(), indent=2, sort_keys=True) + "\n"
    return atomic.write_text(Path(folder) / TRIAL_RECORD, text)


def read_trial_record(folder) -> TrialRecord:
    try:
        raw = json.loads((Path(folder) / TRIAL_RECORD).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(f"{folder}: {TRIAL_RECORD} unreadable ({err})") from None
    try:
        return TrialRecord.model_validate(raw)
    except ValidationError:
        raise RecordError(f"{folder}: {TRIAL_RECORD} is not the runner's record (trial_id, hypotheses, values)"
                          ) from None


def trial_records(experiment_dir) -> list[tuple[Path, TrialRecord]]:
    """Each trial folder of the experiment whose record reads, with the record; the runner's own decisions (what
    to retag, what a round adds) skip a folder without one, which the analysis warns of."""
    found = []
    for folder in trial_folders(experiment_dir):
        try:
            found.append((folder, read_trial_record(folder)))
        except RecordError:
            continue
    return found


# How a trial ended. A scheduler (ASHA) stopping a trial before its last step is "stopped early": a complete
# answer for the sweep, but not a model to rank beside full-length runs.
FINISHED, STOPPED_EARLY, DIVERGED, ERROR, INCOMPLETE = "finished", "stopped early", "diverged", "error", "incomplete"
STATUSES = (FINISHED, STOPPED_EARLY, DIVERGED, ERROR, INCOMPLETE)
ENDED = (FINISHED, STOPPED_EARLY, DIVERGED, ERROR)  # nothing left to run: only INCOMPLETE is resumed


def last_step(rows) -> int | float | None:
    """The highest step among `rows` (result rows: dicts of JSON values), None before the first."""
    steps = [row["step"] for row in rows if isinstance(row.get("step"), (int, float))
             and not isinstance(row["step"], bool) and not math.isnan(row["step"])]
    return max(steps, default=None)


def trial_status(rows, train_steps, *, errored: bool = False) -> str:
    """How a trial ended, by one rule for the runner's summary, its resume and rebuild, and the analysis.

    `rows`: every row the trial reported that is at hand, in any order (Tune's results; the rows of result.json;
    the analysis adds those its checkpoint kept, which a restore may have lost from result.json); `train_steps`
    its config's; `errored`: the trial failed (Ray's error file, Tune's error). The rule, first match:
    - diverged: a row says so (`diverged`: its loss was not finite, and the trial stopped there);
    - finished: a row reached the last step, `train_steps - 1`;
    - stopped early: Tune marked a row `done` before that (a scheduler's stop: ASHA's at a rung);
    - error: the trial failed;
    - incomplete: still running, interrupted, or no row yet; what a resume continues.
    Any row counts, not only the last: after a restore Ray may write rows twice, or lose some. An
    error followed by a retry that ran on ends as the retry did, so the steps reached decide before `errored`.
    """
    if any(row.get("diverged") is True for row in rows):
        return DIVERGED
    reached = last_step(rows)
    if isinstance(train_steps, int) and reached is not None and reached >= train_steps - 1:
        return FINISHED
    if any(row.get("done") is True for row in rows):
        return STOPPED_EARLY
    return ERROR if errored else INCOMPLETE


def trend_order(key: str, value) -> float:
    """Where a value of `key` sorts along a trend: n_last_tokens=-1 keeps every token, the least masked, so last."""
    return math.inf if key == "model.n_last_tokens" and value == -1 else float(value)


def trial_failed(folder) -> bool:
    """Whether Ray left a failure of the trial in its folder (an attempt that raised); a retry that then ran on
    leaves the file in place, which is why `trial_status` weighs the steps reached first."""
    return any((Path(folder) / name).exists() for name in ERROR_FILES)


# how a key, a setting and a run are named is the display table's (trainers.knobs); the runner, the analysis
# and W&B take the names from here, beside the records they name
short_key, format_setting, wandb_run_name = knobs.short_key, knobs.format_setting, knobs.wandb_run_name


def variant_label(values: dict, default: str = "base") -> str:
    """A variant's name from the settings that tell it apart: `L=2 LSTM`, `n_last_tokens=8 seed=1`."""
    return " ".join(part for part in (format_setting(k, v) for k, v in values.items()) if part) or default
