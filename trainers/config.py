"""Typed experiment configuration: the research's YAML schema as frozen pydantic models.

A config file has the sections `model`, `training` (with `curriculum.dims|points|loops`), `wandb` and `gpu`,
may `inherit:` other files, and can be changed by dotted overrides (`--model.n_layer 2`, `--model.n_layer=2`).
Everything is checked against the models below, so a typo fails before anything runs, as one line naming the
source and the dotted key. The W&B key is a secret: it never enters a model, only the caller's `secrets`.
"""
from __future__ import annotations

import functools
import warnings
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from trainers import schema
from trainers.names import NAME_RULE, is_folder_name
from trainers.schema import ConfigError, Section, allowed_if, rule, validate
from trainers.yaml_file import load_yaml, yaml11_float


PositiveInt = Annotated[int, Field(gt=0, description="a positive integer")]
Number = Annotated[float, BeforeValidator(yaml11_float)]
# torch.manual_seed takes -2**63 .. 2**64 - 1, but a negative seed wraps onto a positive one (-1 is 2**64 - 1),
# which would count one stream twice among a configuration's seeds
MAX_SEED = 2**64 - 1
# The registries of trainers.models and trainers.tasks; a test checks that they hold exactly these names.
ModelFamily = Literal["gpt2", "gpt2_loop"]
TaskName = Literal["linear_regression", "noisy_linear_regression", "sparse_linear_regression",
                   "relu_2nn_regression", "decision_tree"]
WandbMode = Literal["auto", "online", "offline", "disabled"]
LoopFunc = Literal["z=f(x+z)", "z=f(x*z)"]  # additive or multiplicative input injection; trainers.models uses both


class ModelConfig(Section):
    """The `model` section, which trainers.models's modules take whole. A new knob is a field here, read where it
    acts in trainers.models, and its row in trainers.knobs (how it is labelled and named)."""
    family: ModelFamily = "gpt2_loop"
    n_embd: PositiveInt = 256
    n_layer: PositiveInt = 1
    n_head: PositiveInt = 8
    n_dims: PositiveInt = 20
    n_positions: int = 101
    n_last_tokens: Annotated[int, Field(ge=-1, description="-1 (all tokens) or a count >= 0")] = -1
    use_lstm_layer: bool = False
    pred_type: Literal["regression"] = "regression"
    pretrained_path: str | None = None
    loop_func: LoopFunc = "z=f(x+z)"

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.n_embd % self.n_head:
            raise rule("n_head", f"a positive divisor of n_embd={self.n_embd}", self.n_head)
        return self


class Schedule(Section):
    start: PositiveInt
    end: int
    inc: Annotated[int, Field(ge=0, description="an integer >= 0")] = 1
    interval: PositiveInt = 1000

    @model_validator(mode="after")
    def _ends_after_start(self):
        if self.end < self.start:
            raise rule("end", f"at least start={self.start}", self.end)
        return self


class CurriculumConfig(Section):
    dims: Schedule = Schedule(start=20, end=20, inc=1, interval=20000)
    points: Schedule = Schedule(start=11, end=41, inc=2, interval=1000)
    loops: Schedule = Schedule(start=15, end=30, inc=2, interval=500)


class TrainingConfig(Section):
    task_name: TaskName = "linear_regression"
    batch_size: PositiveInt = 64
    learning_rate: Annotated[Number, Field(gt=0, allow_inf_nan=False, description="a finite number > 0")] = 1e-4
    weight_decay: Annotated[Number, Field(ge=0, allow_inf_nan=False, description="a finite number >= 0")] = 0.0
    train_steps: PositiveInt = 20001
    save_every_steps: PositiveInt = 1000
    keep_every_steps: Annotated[int, allowed_if(lambda v: v == -1 or v > 0),
                                Field(description="a positive integer, or -1 for never")] = -1
    eval_every_steps: PositiveInt = 1000
    eval_prompts: PositiveInt = 256
    n_loop_window: PositiveInt = 15
    seed: Annotated[int, Field(ge=0, le=MAX_SEED, description=f"an integer from 0 to 2**64 - 1 ({MAX_SEED})")] = 42
    sparsity: PositiveInt = 3
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Annotated[str, allowed_if(lambda v: v in ("auto", "cpu", "cuda") or v[:5] == "cuda:" and v[5:].isdigit()),
                      Field(description="auto, cpu, cuda or cuda:N")] = "auto"
    # speed options (docs/CONFIG.md)
    # the blocks' fp32 CPU products on oneDNN rather than MKL; auto: by the CPU type alone
    # (trainers.onednn.preferred_library), so the same command always trains the same kernels
    onednn_linear: Annotated[bool | Literal["auto"], Field(description="true, false or auto")] = "auto"
    compile: bool = False       # torch.compile the backbone
    cuda_graphs: bool = False   # replay each fixed-shape step from a CUDA graph; CUDA only
    curriculum: CurriculumConfig = CurriculumConfig()
    # Keys of the research's code's schema that this project accepts but does not use.
    use_ctx: bool = False
    add_inputs_embeds: bool = False
    resume_id: str | None = None
    use_fixed_dataset: bool = False
    train_size: int = 0
    test_size: int = 0
    test_idx: int = 0


class WandbConfig(Section):
    project: str = "loop_tf"
    entity: str | None = None
    group: str | None = None
    notes: str | None = None
    # names a single run's folder under out_dir, and W&B runs
    name: Annotated[str | None, allowed_if(lambda v: v is None or is_folder_name(v)),
                    Field(description=NAME_RULE)] = None
    log_every_steps: PositiveInt = 100
    timestamp: str | None = None
    enabled: bool = False
    mode: WandbMode = "auto"


class GpuConfig(Section):
    cuda: bool = True
    n_gpu: Annotated[int, Field(ge=0, description="an integer >= 0")] = 1


class Config(Section):
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    wandb: WandbConfig = WandbConfig()
    gpu: GpuConfig = GpuConfig()
    out_dir: str | None = None
    debug_mode: bool = False

    @model_validator(mode="after")
    def _curriculum_fits_the_model(self):
        m, c = self.model, self.training.curriculum
        if c.dims.end > m.n_dims:
            raise rule("training.curriculum.dims.end", f"at most model.n_dims={m.n_dims}", c.dims.end)
        if c.points.end > m.n_positions:
            raise rule("training.curriculum.points.end", f"at most model.n_positions={m.n_positions}", c.points.end)
        return self


IGNORED_KEYS = (
    "debug_mode", "training.use_ctx", "training.add_inputs_embeds", "training.resume_id",
    "training.use_fixed_dataset", "training.train_size", "training.test_size", "training.test_idx",
    "wandb.timestamp",
)
SECRET_KEYS = ("wandb.key",)
# built once: a space validates thousands of configs
_DEFAULT = Config()
_IGNORED_GETTERS = [(key, attrgetter(key)) for key in IGNORED_KEYS]


def config_from_dict(raw: dict, source: str = "<config>", secrets: dict | None = None) -> Config:
    """Validate a nested dict (a loaded YAML) into a Config; `wandb.key` goes to `secrets`, never the Config."""
    cfg = validate(Config, strip_secrets(raw, secrets), source)
    for key, get in _IGNORED_GETTERS:
        if get(cfg) != get(_DEFAULT):
            warnings.warn(f"{source}: {key}: accepted for compatibility with the research's code and ignored",
                          stacklevel=2)
    return cfg


def strip_secrets(raw, secrets: dict | None = None):
    """`raw` without `wandb.key`, nested (`wandb: {key: ...}`) or dotted (`wandb.key: ...`, as overrides give it);
    a real key (not the reference's placeholder) is put into `secrets`, the dotted one winning as it would as an
    override."""
    if not isinstance(raw, dict):
        return raw
    keys = []
    if isinstance(raw.get("wandb"), dict) and "key" in raw["wandb"]:
        wandb_section = dict(raw["wandb"])
        keys.append(wandb_section.pop("key"))
        raw = {**raw, "wandb": wandb_section}
    if "wandb.key" in raw:
        keys.append(raw["wandb.key"])
        raw = {k: v for k, v in raw.items() if k != "wandb.key"}
    for key in keys:
        if secrets is not None and isinstance(key, str) and key and key != "your_api_key":
            secrets["wandb.key"] = key
    return raw


def config_to_dict(cfg: Config) -> dict:
    """A plain nested dict (YAML/JSON-safe); it never holds a secret because the Config never does."""
    return cfg.model_dump()


def read_yaml(path: Path, _seen: tuple = ()) -> dict:
    """Read a config YAML, merging the files it `inherit:`s (relative paths, in order) beneath it."""
    path = Path(path)
    # read first: it refuses a loop of symbolic links, which resolve() would raise RuntimeError for
    raw = load_yaml(path, "config file")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: inherit: cycle through {' -> '.join(str(p) for p in (*_seen, path))}")
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level: expected a mapping of sections, got {type(raw).__name__}")
    parents = raw.pop("inherit", None) or []
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = _deep_merge(merged, read_yaml(path.parent / parent, (*_seen, path.resolve())))
    return _deep_merge(merged, raw)


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


key_field = functools.partial(schema.key_field, Config)
coerce_value = functools.partial(schema.coerce_value, Config)


def apply_overrides(raw: dict, overrides: dict[str, Any], source: str = "override") -> dict:
    return schema.apply_overrides(Config, raw, overrides, source, unchecked=SECRET_KEYS)


def parse_override_args(args: list[str]) -> dict[str, Any]:
    """`--model.n_layer 2 --wandb.name=x` -> {"model.n_layer": 2, "wandb.name": "x"}, typed by the schema."""
    return schema.parse_override_args(Config, args, unchecked=SECRET_KEYS)


def load_config(path, overrides: dict[str, Any] | None = None, secrets: dict | None = None) -> Config:
    raw = read_yaml(Path(path))
    raw = apply_overrides(raw, overrides or {}, source=str(path))
    return config_from_dict(raw, source=str(path), secrets=secrets)
