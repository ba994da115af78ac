"""How each config key a space may sweep is shown: its part of a variant's label (the tables, the plots, the
report), its column in the live table, and its part of a run's name (`LR_loop_L2_ends{30}_T{15}`).

One row per key, in KNOBS; the functions below are the only readers. A key without a row (a `wandb.` or `gpu.`
key, or a key of an old record) is shown as `name=value` under its last part and takes no part in run names.
Every `model.` and `training.` key in use has a row (tests/test_knobs.py), so whoever adds a knob decides how
it is shown, and whether runs that differ in it need different names.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from trainers.config import Config

LOOPED_FAMILY = "gpt2_loop"
FAMILY_WORDS = {"gpt2": "transformer", LOOPED_FAMILY: "looped"}
TASK_ABBREVIATIONS = {
    "linear_regression": "LR", "noisy_linear_regression": "NLR", "sparse_linear_regression": "SLR",
    "relu_2nn_regression": "R2NN", "decision_tree": "DT",
}


@dataclass(frozen=True)
class Knob:
    """How one dotted key is shown.

    `label`: a set value's part of a variant's label ('' when not worth naming), or None for `name=value`.
    `column`: the live table's heading, '' for the name. `run`: a value's part of a run name ('' for none), or
    None where the key is never in one; `looped_only`: that part only for the looped family, the one that has
    loops; `swept_only`: only where the key varies across the space.
    """
    key: str
    label: Callable[[Any], str | None] | None = None
    column: str = ""
    run: Callable[[Any], str] | None = None
    looped_only: bool = False
    swept_only: bool = False


# the rows with a part in run names come first, in the order of their parts in a name
_NAMED = (
    Knob("training.task_name", run=lambda v: TASK_ABBREVIATIONS.get(v, v)),
    Knob("model.family", label=lambda v: str(FAMILY_WORDS.get(v, v)),
         run=lambda v: "loop" if v == LOOPED_FAMILY else "tf"),
    Knob("model.n_layer", label=lambda v: f"L={v}", run=lambda v: f"L{v}"),
    Knob("model.use_lstm_layer", label=lambda v: "LSTM" if v else "", column="lstm",
         run=lambda v: "LSTM" if v else ""),
    Knob("model.n_last_tokens", label=lambda v: "n_last_tokens=all" if v == -1 else None,
         run=lambda v: "" if v == -1 else f"N{v}"),
    Knob("training.curriculum.loops.end", run=lambda v: f"ends{{{v}}}", looped_only=True),
    Knob("training.n_loop_window", run=lambda v: f"T{{{v}}}", looped_only=True),
    Knob("training.seed", run=lambda v: f"seed{v}", swept_only=True),
)
# shown as `name=value`, in no run name
_PLAIN = (
    "model.n_embd", "model.n_head", "model.n_dims", "model.n_positions", "model.pred_type", "model.pretrained_path",
    "model.loop_func",
    "training.batch_size", "training.learning_rate", "training.weight_decay", "training.train_steps",
    "training.save_every_steps", "training.keep_every_steps", "training.eval_every_steps", "training.eval_prompts",
    "training.sparsity", "training.precision", "training.device", "training.onednn_linear", "training.compile",
    "training.cuda_graphs",
    "training.curriculum.dims.start", "training.curriculum.dims.end", "training.curriculum.dims.inc",
    "training.curriculum.dims.interval", "training.curriculum.points.start", "training.curriculum.points.end",
    "training.curriculum.points.inc", "training.curriculum.points.interval", "training.curriculum.loops.start",
    "training.curriculum.loops.inc", "training.curriculum.loops.interval",
)
KNOBS: dict[str, Knob] = {row.key: row for row in (*_NAMED, *map(Knob, _PLAIN))}


def knob(key: str) -> Knob:
    """The row of `key`, or the plain row of a key the table does not name."""
    return KNOBS.get(key) or Knob(key)


def short_key(key: str) -> str:
    """`model.n_layer` -> `n_layer`: a dotted key as tables and labels name it."""
    return key.rsplit(".", 1)[-1]


def column_name(key: str) -> str:
    """The live table's heading of `key` (`model.use_lstm_layer` -> `lstm`)."""
    return knob(key).column or short_key(key)


def _missing(value) -> bool:
    """None, NaN, or pandas' NA (known by its type's name: trainers does not import pandas)."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ == "NAType"


def format_setting(key: str, value) -> str:
    """One key's part of a variant's label (`L=2`, `LSTM`, `n_last_tokens=all`); '' for a setting not worth naming."""
    name = short_key(key)
    if _missing(value):
        return f"{name}=default"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)  # a dataframe column with gaps turns 55 into 55.0; 1e30 stays 1e+30
    label = knob(key).label
    shown = label(value) if label is not None else None
    if shown is not None:
        return shown
    return f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"


def wandb_run_name(config: Config, values: dict) -> str:
    """A trial's W&B run name in the research's style (`LR_loop_L2_ends{30}_T{15}`), from its whole config;
    `values`: the trial's values of the keys its space varies."""
    looped = config.model.family == LOOPED_FAMILY
    parts = (row.run(attrgetter(row.key)(config)) for row in KNOBS.values()
             if row.run is not None and (looped or not row.looped_only) and (row.key in values or not row.swept_only))
    return "_".join(part for part in parts if part)
