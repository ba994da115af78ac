"""The records contract: what the runner writes beside Ray Tune's files and the analysis reads back.

An experiment folder holds `space.yaml` (the resolved space: its base inlined, its hypotheses with their
questions, references and expectations, the trials it asked for) and, in every trial folder, `trial.json`
(the trial's id, hypotheses and dotted values). `tune_looped` writes them and `analysis` reads them; nobody else
knows their shape. Both models also read the records of runners before the rename of `experiments` to
`hypotheses`.

This module also owns the two rules the runner, the analysis and W&B must agree on: how a trial ended
(`trial_status`) and how a variant or a run is named (`variant_label`, `run_name`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from trainers import atomic
from trainers.config import Config

SPACE_RECORD = "space.yaml"
TRIAL_RECORD = "trial.json"
# the runner's own files in an experiment folder (its lock, copies of Tune's state, trials a rebuild replaced):
# never a trial folder, so readers of the trial folders pass it by
RUNNER_DIR = ".tune_looped"
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


class TrendRecord(_Record):
    """A predicted ordering: the error rises or falls as the grid key grows (`trend_order` sorts its values)."""
    key: str
    error: TrendDirection


class HypothesisRecord(_Record):
    """One hypothesis of the space: the question it asks and, for the verdict, its reference and prediction, and
    its predicted trend."""
    name: str
    question: str = ""
    reference: dict[str, Any] = {}
    expect: Expectation | None = None
    trend: TrendRecord | None = None

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

    def key(self) -> str:
        """What makes two entries the same trial asked for: the hypotheses (in any order) and the values, numbers
        by value (55 from one file is 55.0 from another)."""
        values = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in self.values.items()}
        return json.dumps([sorted(self.hypotheses), values], sort_keys=True, default=str)


# an experiment's first Tune run is at its root; each `--extend` is a Tune experiment of its own in a folder
# `extend-N` beside the first run's trial folders (Tune keeps one experiment's state at that experiment's root)
FIRST_RUN = "."
EXTENSION_PREFIX = "extend-"
# where an experiment's trial folders are, as glob patterns relative to it: the first run's right below it (where
# Tune puts them), each extension's below the extension's folder
TRIAL_FOLDERS = ("*", f"{EXTENSION_PREFIX}*/*")


class RunRecord(_Record):
    """One Tune run of the experiment: where its Tune experiment is, when it started, the trials it added."""
    folder: str = FIRST_RUN
    started: str = ""  # local time, ISO 8601
    trials: list[PlannedTrial] = []


class SpaceRecord(_Record):
    name: str = ""
    source: str = ""
    quick: bool = False
    base: dict[str, Any] = {}
    hypotheses: list[HypothesisRecord] = []
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
    # the history: the first run, then each extension; a record of a runner before extensions has none
    runs: list[RunRecord] = []

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, raw):
        return _renamed(raw, "experiments", "hypotheses")

    def run_list(self) -> list[RunRecord]:
        """The experiment's Tune runs, first to last; one at the root for a record that lists none."""
        return self.runs or [RunRecord(trials=self.trials)]


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


# How a trial ended. A scheduler (ASHA) stopping a trial before its last step is "stopped early": a complete
# answer for the sweep, but not a model to rank beside full-length runs.
FINISHED, STOPPED_EARLY, DIVERGED, ERROR, INCOMPLETE = "finished", "stopped early", "diverged", "error", "incomplete"
STATUSES = (FINISHED, STOPPED_EARLY, DIVERGED, ERROR, INCOMPLETE)
ENDED = (FINISHED, STOPPED_EARLY, DIVERGED, ERROR)  # nothing left to run: only INCOMPLETE is resumed


def trial_status(*, last_step, train_steps, diverged: bool, stopped: bool, errored: bool) -> str:
    """One rule for the runner's summary and the analysis.

    `stopped`: Tune marked the trial done (its `done` flag), which a scheduler's stop does before the last step.
    `errored`: the trial failed; an error followed by a successful retry still ends as the retry did, so the
    steps reached decide first.
    """
    if diverged:
        return DIVERGED
    if isinstance(train_steps, int) and isinstance(last_step, (int, float)) and not math.isnan(last_step) \
            and last_step >= train_steps - 1:
        return FINISHED
    if stopped:
        return STOPPED_EARLY
    return ERROR if errored else INCOMPLETE


def trend_order(key: str, value) -> float:
    """Where a value of `key` sorts along a trend: n_last_tokens=-1 keeps every token, the least masked, so last."""
    return math.inf if key == "model.n_last_tokens" and value == -1 else float(value)


def trial_failed(folder) -> bool:
    """Whether Ray left a failure of the trial in its folder (an attempt that raised); a retry that then ran on
    leaves the file in place, which is why `trial_status` weighs the steps reached first."""
    return any((Path(folder) / name).exists() for name in ("error.txt", "error.pkl"))


def short_key(key: str) -> str:
    """`model.n_layer` -> `n_layer`: a dotted key as tables and labels show it."""
    return key.rsplit(".", 1)[-1]


def _missing(value) -> bool:
    """None, NaN, or pandas' NA (known by its type's name: trainers does not import pandas)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType"


def format_setting(key: str, value) -> str:
    """One key's part of a variant's label (`L=2`, `LSTM`, `n_last_tokens=all`); '' for a setting not worth naming."""
    short = short_key(key)
    if _missing(value):
        return f"{short}=default"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)  # a dataframe column with gaps turns 55 into 55.0; 1e30 stays 1e+30
    if key == "model.n_layer":
        return f"L={value}"
    if key == "model.use_lstm_layer":
        return "LSTM" if value else ""
    if key == "model.n_last_tokens" and value == -1:
        return "n_last_tokens=all"
    if key == "model.family":
        return {"gpt2": "transformer", "gpt2_loop": "looped"}.get(value, value)
    return f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}"


def variant_label(values: dict, default: str = "base") -> str:
    """A variant's name from the settings that tell it apart: `L=2 LSTM`, `n_last_tokens=8 seed=1`."""
    return " ".join(part for part in (format_setting(k, v) for k, v in values.items()) if part) or default


TASK_ABBREVIATIONS = {
    "linear_regression": "LR", "noisy_linear_regression": "NLR", "sparse_linear_regression": "SLR",
    "relu_2nn_regression": "R2NN", "decision_tree": "DT",
}


def run_name(config: Config, values: dict) -> str:
    """A trial's W&B run name in the research's style (`LR_loop_L2_ends{30}_T{15}`), from its whole config."""
    m, t = config.model, config.training
    parts = [TASK_ABBREVIATIONS.get(t.task_name, t.task_name), "loop" if m.family == "gpt2_loop" else "tf",
             f"L{m.n_layer}"]
    if m.use_lstm_layer:
        parts.append("LSTM")
    if m.n_last_tokens != -1:
        parts.append(f"N{m.n_last_tokens}")
    if m.family == "gpt2_loop":
        parts += [f"ends{{{t.curriculum.loops.end}}}", f"T{{{t.n_loop_window}}}"]
    if SEED_KEY in values:
        parts.append(f"seed{t.seed}")
    return "_".join(parts)
