"""Search-space files: a small grammar of hypotheses turned into the trials Ray Tune runs.

```yaml
base: ../configs/base_loop.yaml        # or a mapping with model:/training:/wandb: inline
experiments:
  - name: information_flow
    grid: {model.n_last_tokens: [20, 25, 55, 75, -1]}
    reference: {model.n_last_tokens: -1}   # optional: the report's verdict compares every variant with it
    expect: worse                          # ... and predicts the others `worse` or `better`
sample: {training.learning_rate: loguniform(1e-4, 1e-3)}   # optional, drawn num_samples times
num_samples: 1
seeds: [0, 1, 2]
resources: {cpu: 1, gpu: 0.25}
scheduler: fifo                        # or {type: asha, grace_period: 1000, reduction_factor: 2}
metric: eval/loss
mode: min
max_concurrent: 4
wandb: {enabled: false, project: loop_tf, group: hypotheses}
quick: {base: configs/miniature.yaml, grid: {model.n_last_tokens: [8, 10, 23, 31, -1]}, seeds: [0, 1]}
```
Trials are the union of the experiments' grids (times seeds); a configuration that several experiments
share runs once, tagged with all of them.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from analysis.verdict import EXPECTATIONS
from trainers.config import (
    Config, ConfigError, apply_overrides, coerce_value, config_from_dict, config_to_dict, key_type, read_yaml, strip_secrets,
)

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
TOP_KEYS = ("name", "description", "base", "experiments", "sample", "num_samples", "seeds", "resources",
            "scheduler", "metric", "mode", "max_concurrent", "wandb", "quick")
SCHEDULERS = {"fifo": (), "asha": ("max_t", "grace_period", "reduction_factor", "brackets")}
DISTRIBUTIONS = {"loguniform": 2, "uniform": 2, "randint": 2, "choice": 1}
WANDB_SPACE_KEYS = ("enabled", "project", "entity", "group", "mode")
EXPERIMENT_KEYS = ("name", "grid", "description", "reference", "expect")


class SpaceError(ValueError):
    """A bad search-space file: one line naming the file, the key and what is allowed."""


@dataclass(frozen=True)
class Distribution:
    kind: str
    args: tuple


@dataclass(frozen=True)
class Trial:
    """One configuration to run: the dotted keys that vary across the space, and its experiments."""
    values: dict[str, Any]
    experiments: tuple[str, ...]


@dataclass(frozen=True)
class Experiment:
    """One hypothesis: its name and, for the report's verdict, its reference setting and predicted direction."""
    name: str
    description: str = ""
    reference: dict = field(default_factory=dict)
    expect: str | None = None


@dataclass(frozen=True)
class Space:
    path: Path
    name: str
    base: dict
    trials: tuple[Trial, ...]
    sample: dict[str, Distribution]
    num_samples: int
    resources: dict[str, float]
    scheduler: dict
    metric: str
    mode: str
    max_concurrent: int | None
    experiments: tuple[Experiment, ...] = ()
    wandb: dict = field(default_factory=dict)
    secrets: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def varying_keys(self) -> list[str]:
        keys = {k for t in self.trials for k in t.values} | set(self.sample)
        return sorted(keys)


def resolve_space_path(text: str) -> Path:
    """A path as given, else a bare name (with or without .yaml) in the package's search_spaces folder."""
    path = Path(text)
    if path.exists():
        if not path.is_file():
            raise SpaceError(f"{text}: not a file; give a space YAML file or a name from {SPACES_DIR}")
        return path
    for candidate in (SPACES_DIR / text, SPACES_DIR / f"{text}.yaml"):
        if "/" not in text and candidate.is_file():
            return candidate
    raise SpaceError(f"{text}: no such space file (nor in {SPACES_DIR})")


def _number(value):
    """A bound as a finite number, reading YAML 1.1's dotless `1e-4` too; anything else comes back as None."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _bounds(kind: str, args) -> tuple | None:
    numbers = [_number(a) for a in args] if isinstance(args, list) and len(args) == 2 else [None]
    if None in numbers or not numbers[0] < numbers[1]:
        return None
    if kind == "loguniform" and numbers[0] <= 0:
        return None
    if kind == "randint":
        return tuple(int(n) for n in numbers) if all(float(n).is_integer() for n in numbers) else None
    return tuple(float(n) for n in numbers)


def parse_distribution(text: str, where: str) -> Distribution:
    """`loguniform(1e-4, 1e-3)`, `uniform(a, b)`, `randint(a, b)` (both ends included) or `choice([...])`."""
    match = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", str(text))
    if not match or match.group(1) not in DISTRIBUTIONS:
        raise SpaceError(f"{where}: expected one of {', '.join(f'{d}(...)' for d in DISTRIBUTIONS)}, got {text!r}")
    kind = match.group(1)
    try:
        args = yaml.safe_load(f"[{match.group(2)}]")
    except yaml.YAMLError:
        args = None
    if kind == "choice":
        ok = isinstance(args, list) and len(args) == 1 and isinstance(args[0], list) and args[0]
        parsed = tuple(args[0]) if ok else None
    else:
        parsed = _bounds(kind, args)
    if parsed is None:
        allowed = {"choice": "a non-empty list", "randint": "two integers low < high",
                   "loguniform": "two numbers low < high, low > 0, both finite"}.get(kind,
                                                                                    "two numbers low < high, both finite")
        raise SpaceError(f"{where}: {kind} takes {allowed}, got {text!r}")
    return Distribution(kind, parsed)


def _mapping(raw, where: str, allowed=None) -> dict:
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: expected a mapping, got {raw!r}")
    unknown = sorted(set(map(str, raw)) - set(allowed)) if allowed is not None else []
    if unknown:
        raise SpaceError(f"{where}{'.' if ': ' in where else ': '}{unknown[0]}: unknown key; allowed: {', '.join(allowed)}")
    return raw


def _check_key(dotted: str, where: str) -> None:
    try:
        key_type(dotted, where)
    except ConfigError as err:
        raise SpaceError(str(err)) from None


def _read_base(raw, path: Path, secrets: dict) -> dict:
    if raw is None:
        raise SpaceError(f"{path}: base: missing; give a config file path or a mapping of model:/training:/wandb:")
    try:
        base = read_yaml(path.parent / raw) if isinstance(raw, str) else dict(_mapping(raw, f"{path}: base"))
        base = strip_secrets(base, secrets)
        config_from_dict(base, str(path.parent / raw) if isinstance(raw, str) else f"{path}: base")
    except ConfigError as err:
        raise SpaceError(f"{path}: base: {err}" if isinstance(raw, str) else str(err)) from None
    return base


def _grid(raw, where: str) -> list[dict]:
    """The cross-product of one experiment's grid, as a list of {dotted: value}."""
    grid = _mapping(raw, where)
    if not grid:
        raise SpaceError(f"{where}: empty grid; give at least one key with a list of values")
    typed = {}
    for key, values in grid.items():
        _check_key(key, f"{where}.{key}")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}.{key}: expected a non-empty list of values, got {values!r}")
        try:
            # typed by the schema so that 1e-4 and 0.0001 are one configuration, not two
            typed[key] = [coerce_value(key, v, f"{where}.{key}") for v in values]
        except ConfigError as err:
            raise SpaceError(str(err)) from None
    keys = list(typed)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(typed[k] for k in keys))]


def _merge_trials(experiments: list[tuple[str, list[dict]]], base: dict, seeds: list | None) -> list[Trial]:
    """Union of the grids: each variant is completed with base values for every grid key, then deduplicated."""
    keys = sorted({k for _, variants in experiments for v in variants for k in v})
    defaults = config_to_dict(config_from_dict(base))
    by_values: dict[tuple, list[str]] = {}
    for name, variants in experiments:
        for variant in variants:
            full = {k: variant.get(k, _dotted_get(defaults, k)) for k in keys}
            tags = by_values.setdefault(tuple(full.items()), [])
            if name not in tags:
                tags.append(name)
    trials = [Trial(dict(values), tuple(tags)) for values, tags in by_values.items()]
    if seeds is not None:
        trials = [Trial({**t.values, "training.seed": s}, t.experiments) for t in trials for s in seeds]
    return trials


def _dotted_get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def quick_overrides(raw, path: Path) -> dict:
    """quick.base: a mapping of dotted keys, or a file of them beside the space (shared by several spaces)."""
    where = f"{path}: quick.base"
    if not isinstance(raw, str):
        return _mapping(raw, where)
    try:
        return _mapping(read_yaml(path.parent / raw), f"{path.parent / raw}")
    except ConfigError as err:
        raise SpaceError(f"{where}: {err}") from None


def _apply_quick(raw: dict, base: dict, path: Path) -> tuple[dict, dict]:
    """The space and base with the `quick:` block applied: base keys and grid values replaced."""
    where = str(path)
    quick = _mapping(raw.get("quick"), f"{where}: quick", ("base", "grid", "seeds", "num_samples", "resources"))
    overrides = quick_overrides(quick.get("base", {}), path)
    try:
        base = apply_overrides(base, overrides, f"{where}: quick.base")
        config_from_dict(base, f"{where}: quick.base")
    except ConfigError as err:
        raise SpaceError(str(err)) from None
    replaced = _mapping(quick.get("grid", {}), f"{where}: quick.grid")
    for key in replaced:
        _check_key(key, f"{where}: quick.grid.{key}")
    experiments = [
        {**e, "grid": {k: replaced.get(k, v) for k, v in e["grid"].items()}} if isinstance(e, dict)
        and isinstance(e.get("grid"), dict) else e for e in raw.get("experiments") or []
    ]
    extra = {k: quick[k] for k in ("seeds", "num_samples", "resources") if k in quick}
    return {**raw, "experiments": experiments, **extra}, base


def load_space(path, *, quick: bool = False, seeds: list[int] | None = None) -> Space:
    """The parsed, validated space; `seeds` replaces the space's own (and its quick block's) seeds."""
    path = resolve_space_path(str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    where = str(path)
    raw = _mapping(raw, where, TOP_KEYS)
    secrets: dict = {}
    base = _read_base(raw.get("base"), path, secrets)
    if quick:
        if "quick" not in raw:
            raise SpaceError(f"{where}: quick: --quick needs a quick: block in the space file")
        raw, base = _apply_quick(raw, base, path)
    experiments = raw.get("experiments")
    if not isinstance(experiments, list) or not experiments:
        raise SpaceError(f"{where}: experiments: expected a non-empty list of {{name, grid}}")
    grids, declared = [], []
    for i, exp in enumerate(experiments):
        exp = _mapping(exp, f"{where}: experiments[{i}]", EXPERIMENT_KEYS)
        if not isinstance(exp.get("name"), str) or not exp["name"]:
            raise SpaceError(f"{where}: experiments[{i}].name: expected a non-empty string")
        grid = _grid(exp.get("grid"), f"{where}: experiments[{i}].grid")
        grids.append((exp["name"], grid))
        declared.append(_experiment(exp, grid, f"{where}: experiments[{i}]"))
    seeds = raw.get("seeds") if seeds is None else seeds
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise SpaceError(f"{where}: seeds: expected a non-empty list of integers, got {seeds!r}")
    sample = {k: parse_distribution(v, f"{where}: sample.{k}") for k, v in _mapping(raw.get("sample", {}),
                                                                                    f"{where}: sample").items()}
    for key in sample:
        _check_key(key, f"{where}: sample.{key}")
    trials = _merge_trials(grids, base, seeds)
    for trial in trials:
        for values in _distribution_corners(sample):
            trial_config(base, {**trial.values, **values}, f"{where}: trial {trial_label(trial.values)}")
    space = Space(
        path=path, name=str(raw.get("name") or path.stem), base=base, trials=tuple(trials), sample=sample,
        num_samples=_positive_int(raw.get("num_samples", 1), f"{where}: num_samples"),
        resources=parse_resources(raw.get("resources", {}), f"{where}: resources"),
        scheduler=parse_scheduler(raw.get("scheduler", "fifo"), f"{where}: scheduler"),
        metric=_string(raw.get("metric", "eval/loss"), f"{where}: metric"),
        mode=_choice(raw.get("mode", "min"), ("min", "max"), f"{where}: mode"),
        max_concurrent=None if raw.get("max_concurrent") is None else _positive_int(
            raw["max_concurrent"], f"{where}: max_concurrent"),
        experiments=tuple(declared),
        wandb=dict(_mapping(raw.get("wandb", {}), f"{where}: wandb", WANDB_SPACE_KEYS)),
        secrets=secrets,
    )
    return space


def _experiment(exp: dict, grid: list[dict], where: str) -> Experiment:
    """The hypothesis' declaration; its reference must be one of the grid's own settings."""
    reference = _mapping(exp.get("reference", {}), f"{where}.reference")
    expect = exp.get("expect")
    if bool(reference) != (expect is not None):
        raise SpaceError(f"{where}: reference and expect go together; give both (expect: worse or better) or neither")
    if expect is not None:
        _choice(expect, EXPECTATIONS, f"{where}.expect")
    for key, value in reference.items():
        _check_key(key, f"{where}.reference.{key}")
        try:
            typed = coerce_value(key, value, f"{where}.reference.{key}")
        except ConfigError as err:
            raise SpaceError(str(err)) from None
        if key not in grid[0] or typed not in {variant[key] for variant in grid}:
            raise SpaceError(f"{where}.reference.{key}: {value!r} is not a value of the experiment's grid")
        reference[key] = typed
    return Experiment(exp["name"], str(exp.get("description") or ""), dict(reference), expect)


def _distribution_corners(sample: dict[str, Distribution]) -> list[dict]:
    """Values at the ends of every distribution, enough to type-check sampled keys before Ray starts."""
    if not sample:
        return [{}]
    options = {k: (d.args if d.kind == "choice" else (d.args[0], d.args[1])) for k, d in sample.items()}
    keys = list(options)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(options[k] for k in keys))]


def trial_config(base: dict, values: dict[str, Any], source: str = "trial") -> Config:
    """The full, validated config of one trial: the base with the trial's dotted values applied."""
    try:
        return config_from_dict(apply_overrides(base, values, source), source)
    except ConfigError as err:
        raise SpaceError(str(err)) from None


# a share of a GPU chosen by the runner from the GPUs it finds (tune_looped.gpus)
GPU_AUTO = "auto"


def parse_resources(raw, where: str) -> dict:
    raw = _mapping(raw, where, ("cpu", "gpu"))
    cpu, gpu = raw.get("cpu", 1), raw.get("gpu", 0)
    if not isinstance(cpu, (int, float)) or isinstance(cpu, bool) or cpu <= 0:
        raise SpaceError(f"{where}.cpu: expected a number of CPUs > 0, got {cpu!r}")
    if gpu != GPU_AUTO and (not isinstance(gpu, (int, float)) or isinstance(gpu, bool) or not 0 <= gpu <= 1):
        raise SpaceError(f"{where}.gpu: expected a GPU fraction between 0 and 1 (a trial uses one GPU) or "
                         f"{GPU_AUTO}, got {gpu!r}")
    return {"cpu": cpu, "gpu": gpu}


def parse_scheduler(raw, where: str) -> dict:
    spec = {"type": raw} if isinstance(raw, str) else dict(_mapping(raw, where))
    kind = spec.pop("type", None)
    if kind not in SCHEDULERS:
        raise SpaceError(f"{where}: expected one of {', '.join(SCHEDULERS)}, got {kind!r}")
    for key, value in spec.items():
        if key not in SCHEDULERS[kind]:
            raise SpaceError(f"{where}.{key}: unknown {kind} option; allowed: {', '.join(SCHEDULERS[kind]) or 'none'}")
        _positive_int(value, f"{where}.{key}")
    return {"type": kind, **spec}


def _positive_int(value, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SpaceError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _string(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpaceError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _choice(value, allowed, where: str) -> str:
    if value not in allowed:
        raise SpaceError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def trial_label(values: dict[str, Any]) -> str:
    return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items()) or "base"


def space_record(space: Space, quick: bool) -> dict:
    """What is saved beside the results: the resolved space with its base inlined (no secrets)."""
    return {
        "name": space.name, "source": str(space.path), "quick": quick, "base": space.base,
        "experiments": [dataclasses.asdict(e) for e in space.experiments],
        "trials": [{"experiments": list(t.experiments), "values": t.values} for t in space.trials],
        "sample": {k: f"{d.kind}({list(d.args) if d.kind == 'choice' else ', '.join(map(str, d.args))})"
                   for k, d in space.sample.items()},
        "num_samples": space.num_samples, "resources": space.resources, "scheduler": space.scheduler,
        "metric": space.metric, "mode": space.mode, "max_concurrent": space.max_concurrent, "wandb": space.wandb,
    }
