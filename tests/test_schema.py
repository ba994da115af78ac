"""The validation engine behind config and space files: one-line errors naming the dotted key, and dotted keys
typed by the schema, on the command line and in overrides."""
from typing import Annotated, Literal

import pytest
from pydantic import Field, model_validator

from trainers.config import ConfigError, load_config, parse_override_args
from trainers.schema import Section, apply_overrides, coerce_value, key_field, rule, validate


# a schema of its own: the engine's messages, apart from the rules of the real config
class Inner(Section):
    size: Annotated[int, Field(gt=0, description="a positive integer")] = 1

    @model_validator(mode="after")
    def _small(self):
        if self.size > 10:
            raise rule("size", "at most 10", self.size)
        return self


class Root(Section):
    name: str
    inner: Inner = Inner()
    seeds: list[int] = [0]
    mode: Literal["a", "b"] = "a"


def test_string_keys_keep_the_text_verbatim():
    assert parse_override_args(["--wandb.name", "yes"]) == {"wandb.name": "yes"}
    assert parse_override_args(["--wandb.notes", "123"]) == {"wandb.notes": "123"}


@pytest.mark.parametrize("argv,message", [
    (["--model.n_layr", "2"], "model.n_layr: unknown key; model has: family"),
    (["--model", "2"], "expected --section.key VALUE"),
    (["--model.n_layer"], "missing value"),
    (["--model.n_layer.x", "1"], "model.n_layer is not a section"),
    (["n_layer", "1"], "expected --section.key VALUE"),
])
def test_bad_override_arguments(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_override_args(argv)


def test_override_with_wrong_type_names_the_key(tiny_config_file):
    with pytest.raises(ConfigError, match=r"model.n_layer: expected an integer, got 'deep'"):
        load_config(tiny_config_file, parse_override_args(["--model.n_layer", "deep"]))


def test_override_of_a_section_is_refused(tiny_config_file):
    with pytest.raises(ConfigError, match="training.curriculum: is a section"):
        load_config(tiny_config_file, {"training.curriculum": 3})


@pytest.mark.parametrize("argv, expected", [
    (["--model.n_layer=2"], {"model.n_layer": 2}),
    (["--model.n_layer", "2", "--wandb.name=a=b"], {"model.n_layer": 2, "wandb.name": "a=b"}),
    (["--training.seed=7", "--wandb.notes=123"], {"training.seed": 7, "wandb.notes": "123"}),
    (["--model.pretrained_path=null"], {"model.pretrained_path": None}),
], ids=["equals", "mixed-and-equals-in-value", "typed-by-schema", "null"])
def test_overrides_take_key_equals_value(argv, expected):
    assert parse_override_args(argv) == expected


@pytest.mark.parametrize("argv, message", [
    (["--model.n_layr=2"], "model.n_layr: unknown key"),
    (["--layers=2"], "expected --section.key VALUE or --section.key=VALUE"),
])
def test_bad_key_equals_value(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_override_args(argv)


@pytest.mark.parametrize("raw, message", [
    ({}, "name: missing; expected a string"),
    ({"name": 3}, "name: expected a string, got 3"),
    ({"name": "x", "inner": {"size": "big"}}, "inner.size: expected an integer, got 'big'"),
    ({"name": "x", "inner": 3}, "inner: expected a mapping, got 3"),
    ([1], "top level: expected a mapping, got [1]"),
    ({"name": "x", "inner": {"size": 0}}, "inner.size: must be a positive integer, got 0"),
    ({"name": "x", "inner": {"size": 11}}, "inner.size: must be at most 10, got 11"),
    ({"name": "x", "mode": "c"}, "mode: must be one of a, b, got 'c'"),
    ({"name": "x", "seeds": [0, "one"]}, "seeds: expected a non-empty list of integers, got [0, 'one']"),
    ({"name": "x", "inner": {"sise": 2}}, "inner.sise: unknown key; allowed: size"),
    ({"name": "x", "other": 1}, "other: unknown key; allowed: name, inner, seeds, mode"),
], ids=["missing", "wrong-type", "wrong-type-nested", "section-not-a-mapping", "top-level", "constraint", "rule",
        "literal", "list-item", "extra-key-nested", "extra-key"])
def test_an_error_is_one_line_naming_the_source_and_the_dotted_key(raw, message):
    with pytest.raises(ConfigError) as err:
        validate(Root, raw, "f.yaml")
    assert str(err.value) == f"f.yaml: {message}"


class Mappings(Section):
    labels: dict[str, str] = {}
    sections: dict[str, Inner] = {}


@pytest.mark.parametrize("raw, message", [
    ({"labels": {"a.b": 3}}, "labels.a.b: expected a string, got 3"),
    ({"labels": 3}, "labels: expected a mapping, got 3"),
    ({"sections": {"s": {"size": 0}}}, "sections.s.size: must be a positive integer, got 0"),
    ({"sections": {"s": {"sise": 1}}}, "sections.s.sise: unknown key; allowed: size"),
], ids=["value", "not-a-mapping", "value-section", "value-section-extra-key"])
def test_a_value_inside_a_mapping_is_told_of_the_value_type(raw, message):
    with pytest.raises(ConfigError) as err:
        validate(Mappings, raw, "f.yaml")
    assert str(err.value) == f"f.yaml: {message}"


@pytest.mark.parametrize("dotted, message", [
    ("inner.sise", "arg: inner.sise: unknown key; inner has: size"),
    ("nam", "arg: nam: unknown key; top level has: name, inner, seeds, mode"),
    ("name.x", "arg: name.x: name is not a section"),
])
def test_key_field_names_what_is_wrong_with_a_dotted_key(dotted, message):
    with pytest.raises(ConfigError) as err:
        key_field(Root, dotted, "arg")
    assert str(err.value) == message


def test_key_field_gives_a_section_or_a_field():
    assert key_field(Root, "inner", "arg") is Inner
    assert key_field(Root, "inner.size", "arg").description == "a positive integer"


def test_a_value_is_coerced_strictly_by_the_keys_type():
    assert coerce_value(Root, "inner.size", 3, "--inner.size") == 3
    for wrong in ("3", 2.0):
        with pytest.raises(ConfigError, match=rf"^--inner.size: expected an integer, got {wrong!r}$"):
            coerce_value(Root, "inner.size", wrong, "--inner.size")


def test_overrides_set_keys_and_refuse_sections_unless_unchecked():
    raw = apply_overrides(Root, {"name": "x"}, {"inner.size": 4}, "cli")
    assert validate(Root, raw, "cli").inner.size == 4
    with pytest.raises(ConfigError, match="^cli: inner: is a section; set its keys one by one$"):
        apply_overrides(Root, {}, {"inner": 4}, "cli")
    # a secret's key is set as given: the schema is not asked, so it cannot echo the value in an error
    assert apply_overrides(Root, {}, {"secret.key": "s3cr3t"}, "cli", unchecked=("secret.key",)) == {
        "secret": {"key": "s3cr3t"}}
