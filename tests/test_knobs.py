"""The display table: a row for every key a space may sweep, and the labels, live-table columns and run names it
gives, which are those of the code before the table (the variant labels, test_records.py; the run names,
test_wandb_log.py; the live table, test_live_table.py)."""
import math

import pytest
from pydantic import BaseModel, create_model

from trainers.config import IGNORED_KEYS, Config, ModelConfig, config_from_dict
from trainers.knobs import KNOBS, column_name, format_setting, short_key, wandb_run_name
from trainers.records import format_setting as records_format_setting
from trainers.records import wandb_run_name as records_wandb_run_name
from trainers.records import short_key as records_short_key

SECTIONS = ("model", "training")


def keys_of(section: type[BaseModel], prefix: str) -> list[str]:
    """The dotted keys of a schema class's fields, nested sections opened."""
    keys = []
    for name, field in section.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += keys_of(field.annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def rowless(config: type[BaseModel]) -> list[str]:
    """The `model.` and `training.` keys in use (not those accepted and ignored) that the table has no row for."""
    keys = keys_of(config, "")
    return [k for k in keys if k.split(".")[0] in SECTIONS and k not in IGNORED_KEYS and k not in KNOBS]


def test_every_model_and_training_key_has_a_row():
    assert rowless(Config) == [], "give each key a row in trainers/knobs.py: how it is labelled and named"


def test_a_new_model_field_without_a_row_is_found():
    with_knob = create_model("WithKnob", __base__=ModelConfig, use_unshown_layer=(bool, False))
    config = create_model("ConfigWithKnob", __base__=Config, model=(with_knob, with_knob()))
    assert rowless(config) == ["model.use_unshown_layer"]


def test_every_row_names_a_key_of_the_schema():
    assert set(KNOBS) <= set(keys_of(Config, "")) - set(IGNORED_KEYS)


def test_the_records_names_are_the_tables():
    """The runner, the analysis and W&B import them from trainers.records, as before the table."""
    assert ((records_format_setting, records_wandb_run_name, records_short_key)
            == (format_setting, wandb_run_name, short_key))


# what each row gave before the table, for a value of each kind
@pytest.mark.parametrize("key, value, label", [
    ("model.family", "gpt2", "transformer"),
    ("model.family", "gpt2_loop", "looped"),
    ("model.family", "gpt3", "gpt3"),
    ("model.family", 3, "3"),  # a stray number is told as text, which the label joins
    ("model.n_layer", 2, "L=2"),
    ("model.n_layer", 2.0, "L=2"),
    ("model.use_lstm_layer", True, "LSTM"),
    ("model.use_lstm_layer", False, ""),
    ("model.use_lstm_layer", None, "use_lstm_layer=default"),
    ("model.n_last_tokens", -1, "n_last_tokens=all"),
    ("model.n_last_tokens", -1.0, "n_last_tokens=all"),
    ("model.n_last_tokens", 55.0, "n_last_tokens=55"),
    ("model.n_last_tokens", math.nan, "n_last_tokens=default"),
    ("model.loop_func", "z=f(x*z)", "loop_func=z=f(x*z)"),
    ("model.n_embd", 64, "n_embd=64"),
    ("training.task_name", "decision_tree", "task_name=decision_tree"),
    ("training.learning_rate", 1e-4, "learning_rate=0.0001"),
    ("training.learning_rate", 1e30, "learning_rate=1e+30"),
    ("training.curriculum.loops.end", 30, "end=30"),
    ("training.seed", 3, "seed=3"),
    ("wandb.group", "g", "group=g"),  # no row: the default
    ("nodots", 1, "nodots=1"),
])
def test_labels(key, value, label):
    assert format_setting(key, value) == label


@pytest.mark.parametrize("key, column", [
    ("model.use_lstm_layer", "lstm"), ("model.n_layer", "n_layer"), ("training.seed", "seed"),
    ("training.curriculum.loops.end", "end"), ("gpu.n_gpu", "n_gpu"),
])
def test_columns(key, column):
    assert column_name(key) == column


def config_of(family="gpt2_loop", **model):
    return config_from_dict({"model": {"family": family, "n_layer": 3, **model},
                             "training": {"task_name": "relu_2nn_regression", "seed": 9, "n_loop_window": 5,
                                          "curriculum": {"loops": {"start": 1, "end": 20}}}})


@pytest.mark.parametrize("config, values, name", [
    (config_of(), {}, "R2NN_loop_L3_ends{20}_T{5}"),
    (config_of(use_lstm_layer=True, n_last_tokens=0), {"training.seed": 9}, "R2NN_loop_L3_LSTM_N0_ends{20}_T{5}_seed9"),
    # the loop count and window are the looped family's alone
    (config_of("gpt2", n_last_tokens=7), {"model.n_layer": 3}, "R2NN_tf_L3_N7"),
    # keys without a run part leave the name as it is, even when they vary
    (config_of(n_embd=64, n_head=4, loop_func="z=f(x*z)"), {"model.n_embd": 64, "model.loop_func": "z=f(x*z)"},
     "R2NN_loop_L3_ends{20}_T{5}"),
])
def test_run_names(config, values, name):
    assert wandb_run_name(config, values) == name
