"""The validation engine of config files and space files: strict, frozen pydantic models whose errors become
one line, `source: dotted.key: what is wrong, got value`, and dotted keys (`--model.n_layer=2`) typed by the
same models.

A field's `description` says what it allows: a value the field's type accepts but its constraints refuse is
told "must be <description>"; a value of the wrong type is told the type ("expected an integer").
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from trainers.dotted import set_dotted


class ConfigError(ValueError):
    """A bad config: the message is one line naming the source, the dotted key and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def allowed_if(ok) -> AfterValidator:
    """A check that a type cannot express; its error says the field's description."""
    def check(value):
        if not ok(value):
            raise ValueError("not allowed")
        return value
    return AfterValidator(check)


def rule(key: str, allowed: str, got) -> PydanticCustomError:
    """A cross-field rule broken: `key` is relative to the model whose validator raises it."""
    return PydanticCustomError("rule", "must be {allowed}", {"key": key, "allowed": allowed, "got": got})


TYPE_ERRORS = {"int_type", "int_from_float", "float_type", "bool_type", "string_type", "dict_type", "model_type",
               "list_type", "too_short"}


def validate(schema: type[BaseModel], raw, source: str):
    """`raw` as a `schema` instance, or ConfigError naming `source` and the first wrong key."""
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_describe_error(err.errors()[0], schema, raw)}") from None


def _describe_error(error: dict, schema: type[BaseModel], raw) -> str:
    """One pydantic error as `dotted.key: problem`, the key and value read from `raw`. An error inside a list
    of plain values (`seeds[1]`) is told of the whole list, which is what the user wrote."""
    path, field, value, cls = "", None, raw, schema
    for part in error["loc"]:
        if _is_model(cls) and part in cls.model_fields:
            field = cls.model_fields[part]
            # a mapping's next part is one of its keys, not a field of the model its values may be
            nested = None if typing.get_origin(field.annotation) is dict else _inner(field.annotation)
            path, cls = f"{path}.{part}" if path else part, nested
        elif _is_model(cls) and isinstance(part, int):
            path, field = f"{path}[{part}]", None
        elif cls is None and field is not None and typing.get_origin(field.annotation) is dict:
            # a value of the mapping: what is wrong is told of the mapping's value type, not of the mapping
            path, field = f"{path}.{part}", _ValueOf(typing.get_args(field.annotation)[1])
            cls = _inner(field.annotation)
        else:
            break
        value = value[part] if isinstance(value, dict) and part in value or isinstance(
            value, list) and isinstance(part, int) and part < len(value) else value
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "rule":
        return f"{'.'.join(filter(None, (path, ctx['key'])))}: must be {ctx['allowed']}, got {ctx['got']!r}"
    if kind == "extra_forbidden":
        key = ".".join(filter(None, (path, str(error["loc"][-1]))))
        return f"{key}: unknown key; allowed: {', '.join(cls.model_fields)}"
    return f"{path or 'top level'}: {problem(kind, field, value)}"


def problem(kind: str, field, value) -> str:
    """What is wrong with `value` for `field` (a FieldInfo, or None for a mapping), after the error `kind`."""
    annotation = field.annotation if field is not None else dict
    expected = _type_phrase(annotation)
    allowed = (field.description if field is not None else None) or expected
    if kind == "missing":
        return f"missing; expected {allowed}"
    if kind in TYPE_ERRORS:
        return f"expected {expected}, got {value!r}"
    return f"must be {allowed}, got {value!r}"


def _type_phrase(annotation) -> str:
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return f"one of {', '.join(map(str, args))}"
    if origin is list:
        return f"a non-empty list of {_type_phrase(args[0]).split(' ', 1)[-1]}s"
    if args and origin is not dict:  # a union: its mapping first, so that a wrong type reads "expected a mapping"
        phrases = sorted((_type_phrase(a) for a in args if a is not type(None)), key=lambda p: p != "a mapping")
        return " or ".join(phrases + ["null"] * (type(None) in args))
    if dict in (annotation, origin) or _is_model(annotation):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(annotation, "a value")


@dataclasses.dataclass(frozen=True)
class _ValueOf:
    """The part of a FieldInfo that `problem` reads, for a value inside a `dict[str, X]` field."""
    annotation: Any
    description: str | None = None


def _is_model(cls) -> bool:
    return isinstance(cls, type) and issubclass(cls, BaseModel)


def _inner(annotation):
    """The model (or None) that the next part of an error's location lies in."""
    return next((a for a in (annotation, *typing.get_args(annotation)) if _is_model(a)), None)


def describe_keys(root: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None) -> list[tuple]:
    """Every leaf key of `root` as (dotted key, default, what it allows), in the schema's order: what a
    command line's `--help` lists. A section's default (`defaults`) gives its keys theirs."""
    out = []
    for name, field in root.model_fields.items():
        dotted = f"{prefix}{name}"
        default = getattr(defaults, name) if defaults is not None else field.get_default(call_default_factory=True)
        if _is_model(field.annotation):
            out += describe_keys(field.annotation, f"{dotted}.", default if isinstance(default, BaseModel) else None)
        else:
            out.append((dotted, default, field.description or _type_phrase(field.annotation)))
    return out


def key_field(root: type[BaseModel], dotted: str, source: str):
    """The field (a FieldInfo, or the model of a section) of a dotted key, or ConfigError naming the key."""
    cls, parts = root, dotted.split(".")
    for i, part in enumerate(parts):
        if not _is_model(cls):
            raise ConfigError(f"{source}: {dotted}: {'.'.join(parts[:i])} is not a section")
        if part not in cls.model_fields:
            raise ConfigError(f"{source}: {dotted}: unknown key; {'.'.join(parts[:i]) or 'top level'} has: "
                              f"{', '.join(cls.model_fields)}")
        field = cls.model_fields[part]
        cls = field.annotation
    return cls if _is_model(cls) else field


@functools.cache
def _adapter(root: type[BaseModel], dotted: str) -> TypeAdapter:
    field = key_field(root, dotted, dotted)
    annotated = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    return TypeAdapter(annotated, config=ConfigDict(strict=True))


def coerce_value(root: type[BaseModel], dotted: str, value, where: str):
    """`value` as the schema's type for `dotted` (e.g. YAML 1.1's string `1e-4` as a float), or ConfigError."""
    field = key_field(root, dotted, where)
    try:
        return _adapter(root, dotted).validate_python(value)
    except ValidationError as err:
        raise ConfigError(f"{where}: {problem(err.errors()[0]['type'], field, value)}") from None


def apply_overrides(root: type[BaseModel], raw: dict, overrides: dict[str, Any], source: str,
                    unchecked: tuple = ()) -> dict:
    """`raw` with each dotted key set; keys in `unchecked` (secrets) are set without a look at the schema."""
    for dotted, value in overrides.items():
        if dotted not in unchecked and _is_model(key_field(root, dotted, source)):
            raise ConfigError(f"{source}: {dotted}: is a section; set its keys one by one")
        raw = set_dotted(raw, dotted, value)
    return raw


def parse_override_args(root: type[BaseModel], args: list[str], unchecked: tuple = ()) -> dict[str, Any]:
    """`--model.n_layer 2 --wandb.name=x` -> {"model.n_layer": 2, "wandb.name": "x"}, typed by the schema."""
    out: dict[str, Any] = {}
    it = iter(args)
    for flag in it:
        dotted, equals, text = flag[2:].partition("=")
        if not flag.startswith("--") or "." not in dotted:
            raise ConfigError(f"argument {flag}: expected --section.key VALUE or --section.key=VALUE")
        if not equals:
            text = next(it, None)
            if text is None:
                raise ConfigError(f"argument {flag}: missing value")
        field = None if dotted in unchecked else key_field(root, dotted, f"argument --{dotted}")
        out[dotted] = text if field is None or _is_text(field) and text not in ("null", "~") else _scalar(text)
    return out


def _is_text(field) -> bool:
    """A key whose value is kept verbatim on the command line: `--wandb.notes 123` means the text 123."""
    annotation = getattr(field, "annotation", None)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation is str or args == [str] or typing.get_origin(annotation) is Literal and all(
        isinstance(a, str) for a in args)


def _scalar(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
