"""Typed experiment configuration: the research's YAML schema as frozen dataclasses.

A config file has the sections `model`, `training` (with `curriculum.dims|points|loops`), `wandb` and `gpu`,
may `inherit:` other files, and can be changed by dotted overrides (`--model.n_layer 2`). Everything is
checked against the dataclasses below, so a typo fails before anything runs. The W&B key is a secret: it is
never stored in a dataclass, only handed to the caller that asks for it.
"""
from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config: the message is one line naming the source, the dotted key and what is allowed."""


@dataclass(frozen=True)
class ModelConfig:
    family: str = "gpt2_loop"
    n_embd: int = 256
    n_layer: int = 1
    n_head: int = 8
    n_dims: int = 20
    n_positions: int = 101
    n_last_tokens: int = -1
    use_lstm_layer: bool = False
    pred_type: str = "regression"
    pretrained_path: str | None = None
    loop_func: str = "z=f(x+z)"


@dataclass(frozen=True)
class Schedule:
    start: int
    end: int
    inc: int = 1
    interval: int = 1000


@dataclass(frozen=True)
class CurriculumConfig:
    dims: Schedule = Schedule(start=20, end=20, inc=1, interval=20000)
    points: Schedule = Schedule(start=11, end=41, inc=2, interval=1000)
    loops: Schedule = Schedule(start=15, end=30, inc=2, interval=500)


@dataclass(frozen=True)
class TrainingConfig:
    task_name: str = "linear_regression"
    batch_size: int = 64
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    train_steps: int = 20001
    save_every_steps: int = 1000
    keep_every_steps: int = -1
    eval_every_steps: int = 1000
    eval_prompts: int = 256
    n_loop_window: int = 15
    seed: int = 42
    sparsity: int = 3
    precision: str = "fp32"
    device: str = "auto"
    # performance (README "Performance")
    onednn_linear: bool = True  # the blocks' fp32 CPU products on oneDNN rather than MKL
    compile: bool = False       # torch.compile the backbone
    cuda_graphs: bool = False   # replay each fixed-shape step from a CUDA graph; CUDA only
    curriculum: CurriculumConfig = CurriculumConfig()
    # Keys of the reference code's schema that this project accepts but does not use.
    use_ctx: bool = False
    add_inputs_embeds: bool = False
    resume_id: str | None = None
    use_fixed_dataset: bool = False
    train_size: int = 0
    test_size: int = 0
    test_idx: int = 0


@dataclass(frozen=True)
class WandbConfig:
    project: str = "loop_tf"
    entity: str | None = None
    group: str | None = None
    notes: str | None = None
    name: str | None = None
    log_every_steps: int = 100
    timestamp: str | None = None
    enabled: bool = False
    mode: str = "auto"


@dataclass(frozen=True)
class GpuConfig:
    cuda: bool = True
    n_gpu: int = 1


@dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    wandb: WandbConfig = WandbConfig()
    gpu: GpuConfig = GpuConfig()
    out_dir: str | None = None
    debug_mode: bool = False


IGNORED_KEYS = (
    "debug_mode", "training.use_ctx", "training.add_inputs_embeds", "training.resume_id",
    "training.use_fixed_dataset", "training.train_size", "training.test_size", "training.test_idx",
    "wandb.timestamp",
)
SECRET_KEYS = ("wandb.key",)
PRECISIONS = ("fp32", "bf16")
LOOP_FUNCS = ("z=f(x+z)", "z=f(x*z)")
WANDB_MODES = ("auto", "online", "offline", "disabled")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _describe(tp) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[args[0] if args else tp]
    return f"{base} or null" if type(None) in typing.get_args(tp) else base


def _coerce(value, tp, where: str):
    """Check one scalar against its annotated type; ints are accepted where floats are expected."""
    optional = type(None) in typing.get_args(tp)
    if value is None and optional:
        return None
    base = [a for a in typing.get_args(tp) if a is not type(None)][0] if isinstance(tp, types.UnionType) else tp
    if base is float and isinstance(value, str):
        value = _yaml11_float(value)
    ok = (
        (base is bool and isinstance(value, bool))
        or (base is int and isinstance(value, int) and not isinstance(value, bool))
        or (base is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (base is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    return float(value) if base is float else value


def _yaml11_float(text: str):
    """PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a string; researchers mean a number."""
    try:
        return float(text)
    except ValueError:
        return text


def _build(cls, raw, source: str, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {raw!r}")
    types_ = _field_types(cls)
    unknown = sorted(set(raw) - set(types_))
    if unknown:
        raise ConfigError(f"{source}: {prefix}{unknown[0]}: unknown key; allowed: {', '.join(types_)}")
    values = {}
    for name, value in raw.items():
        tp, where = types_[name], f"{source}: {prefix}{name}"
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, value, source, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, tp, where)
    try:
        return cls(**values)
    except TypeError as err:
        missing = str(err).split("argument")[-1].strip(": '")
        raise ConfigError(f"{source}: {prefix}{missing}: required key is missing") from None


def _check(cfg: Config, source: str) -> None:
    """Cross-field rules a type cannot express."""
    from trainers.models import MODEL_FAMILIES
    from trainers.tasks import TASKS

    m, t = cfg.model, cfg.training
    rules = [
        ("model.family", m.family in MODEL_FAMILIES, f"one of {', '.join(MODEL_FAMILIES)}"),
        ("training.task_name", t.task_name in TASKS, f"one of {', '.join(TASKS)}"),
        ("model.n_head", m.n_head > 0 and m.n_embd % m.n_head == 0, f"a positive divisor of n_embd={m.n_embd}"),
        ("model.n_embd", m.n_embd > 0, "a positive integer"),
        ("model.n_layer", m.n_layer > 0, "a positive integer"),
        ("model.n_dims", m.n_dims > 0, "a positive integer"),
        ("model.n_last_tokens", m.n_last_tokens >= -1, "-1 (all tokens) or a count >= 0"),
        ("model.pred_type", m.pred_type == "regression", "regression"),
        ("model.loop_func", m.loop_func in LOOP_FUNCS, f"one of {', '.join(LOOP_FUNCS)}"),
        ("training.precision", t.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
        ("training.device", t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"),
         "auto, cpu, cuda or cuda:N"),
        ("training.curriculum.dims.end", t.curriculum.dims.end <= m.n_dims, f"at most model.n_dims={m.n_dims}"),
        ("training.curriculum.points.end", t.curriculum.points.end <= m.n_positions,
         f"at most model.n_positions={m.n_positions}"),
        ("training.keep_every_steps", t.keep_every_steps == -1 or t.keep_every_steps > 0,
         "a positive integer, or -1 for never"),
        ("training.sparsity", t.sparsity > 0, "a positive integer"),
        ("training.learning_rate", t.learning_rate > 0, "a positive number"),
        ("training.weight_decay", t.weight_decay >= 0, "a number >= 0"),
        ("wandb.mode", cfg.wandb.mode in WANDB_MODES, f"one of {', '.join(WANDB_MODES)}"),
        ("wandb.log_every_steps", cfg.wandb.log_every_steps > 0, "a positive integer"),
        ("gpu.n_gpu", cfg.gpu.n_gpu >= 0, "an integer >= 0"),
    ]
    for key in ("batch_size", "train_steps", "save_every_steps", "eval_every_steps", "eval_prompts", "n_loop_window"):
        rules.append((f"training.{key}", getattr(t, key) > 0, "a positive integer"))
    for name in ("dims", "points", "loops"):
        s = getattr(t.curriculum, name)
        where = f"training.curriculum.{name}"
        rules += [
            (f"{where}.start", s.start >= 1, "a positive integer"),
            (f"{where}.end", s.end >= s.start, f"at least start={s.start}"),
            (f"{where}.inc", s.inc >= 0, "an integer >= 0"),
            (f"{where}.interval", s.interval > 0, "a positive integer"),
        ]
    for key, ok, allowed in rules:
        if not ok:
            raise ConfigError(f"{source}: {key}: must be {allowed}, got {_get(cfg, key)!r}")


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _warn_ignored(cfg: Config, source: str) -> None:
    default = Config()
    for key in IGNORED_KEYS:
        if _get(cfg, key) != _get(default, key):
            warnings.warn(f"{source}: {key}: accepted for compatibility with the reference code and ignored",
                          stacklevel=3)


def config_from_dict(raw: dict, source: str = "<config>", secrets: dict | None = None) -> Config:
    """Validate a nested dict (a loaded YAML) into a Config; `wandb.key` goes to `secrets`, never the Config."""
    raw = strip_secrets(raw, secrets)
    cfg = _build(Config, raw, source, "")
    _check(cfg, source)
    _warn_ignored(cfg, source)
    return cfg


def strip_secrets(raw, secrets: dict | None = None):
    """`raw` without `wandb.key`; a real key (not the reference's placeholder) is put into `secrets`."""
    if not isinstance(raw, dict) or not isinstance(raw.get("wandb"), dict) or "key" not in raw["wandb"]:
        return raw
    wandb_section = dict(raw["wandb"])
    key = wandb_section.pop("key")
    if secrets is not None and isinstance(key, str) and key and key != "your_api_key":
        secrets["wandb.key"] = key
    return {**raw, "wandb": wandb_section}


def config_to_dict(cfg: Config) -> dict:
    """A plain nested dict (YAML/JSON-safe); it never holds a secret because the Config never does."""
    return dataclasses.asdict(cfg)


def read_yaml(path: Path, _seen: tuple = ()) -> dict:
    """Read a config YAML, merging the files it `inherit:`s (relative paths, in order) beneath it."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: inherit: cycle through {' -> '.join(str(p) for p in (*_seen, path))}")
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level: expected a mapping of sections, got {type(raw).__name__}")
    parents = raw.pop("inherit", None) or []
    if isinstance(parents, str):
        parents = [parents]
    merged: dict = {}
    for parent in parents:
        merged = deep_merge(merged, read_yaml(path.parent / parent, (*_seen, path.resolve())))
    return deep_merge(merged, raw)


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def key_type(dotted: str, source: str = "override"):
    """The annotated type of a dotted key, or ConfigError naming the key and what exists there."""
    cls, parts = Config, dotted.split(".")
    for i, part in enumerate(parts):
        types_ = _field_types(cls)
        if part not in types_:
            where = ".".join(parts[:i]) or "top level"
            raise ConfigError(f"{source}: {dotted}: unknown key; {where} has: {', '.join(types_)}")
        cls = types_[part]
        if i < len(parts) - 1 and not dataclasses.is_dataclass(cls):
            raise ConfigError(f"{source}: {dotted}: {'.'.join(parts[:i + 1])} is not a section")
    return cls


def coerce_value(dotted: str, value, where: str):
    """`value` as the schema's type for `dotted` (e.g. YAML 1.1's string `1e-4` as a float), or ConfigError."""
    return _coerce(value, key_type(dotted, where), where)


def set_dotted(raw: dict, dotted: str, value) -> dict:
    """A copy of `raw` with `dotted` set, creating the sections on the way."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return {**raw, head: value}
    section = raw.get(head)
    return {**raw, head: set_dotted(section if isinstance(section, dict) else {}, rest, value)}


def apply_overrides(raw: dict, overrides: dict[str, Any], source: str = "override") -> dict:
    for dotted, value in overrides.items():
        if dotted not in SECRET_KEYS:
            tp = key_type(dotted, source)
            if dataclasses.is_dataclass(tp):
                raise ConfigError(f"{source}: {dotted}: is a section; set its keys one by one")
        raw = set_dotted(raw, dotted, value)
    return raw


def parse_override_args(args: list[str]) -> dict[str, Any]:
    """`--model.n_layer 2 --wandb.name x` -> {"model.n_layer": 2, "wandb.name": "x"}, typed by the schema."""
    out: dict[str, Any] = {}
    it = iter(args)
    for flag in it:
        if not flag.startswith("--") or "." not in flag:
            raise ConfigError(f"argument {flag}: expected --section.key VALUE")
        dotted = flag[2:]
        text = next(it, None)
        if text is None:
            raise ConfigError(f"argument {flag}: missing value")
        if "=" in dotted:
            dotted, text = dotted.split("=", 1)[0], f"{dotted.split('=', 1)[1]}"
        tp = str if dotted in SECRET_KEYS else key_type(dotted, f"argument --{dotted}")
        out[dotted] = parse_scalar(text, tp)
    return out


def parse_scalar(text: str, tp):
    """A command-line value: kept verbatim for string keys, else read as a YAML scalar."""
    if tp in (str, str | None) and text not in ("null", "~"):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_config(path, overrides: dict[str, Any] | None = None, secrets: dict | None = None) -> Config:
    raw = read_yaml(Path(path))
    raw = apply_overrides(raw, overrides or {}, source=str(path))
    return config_from_dict(raw, source=str(path), secrets=secrets)
