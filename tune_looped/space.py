"""Search-space files: a small grammar of hypotheses turned into the trials Ray Tune runs.

`SpaceFile` below is the file's schema; docs/CONFIG.md ("Search-space files") has an annotated example. Trials
are the union of the hypotheses' grids, times the seeds: a configuration that several hypotheses share runs
once, tagged with all of them. A space may `include` the hypotheses of other space files (`_declarations`). Grid,
sample and `quick.base` keys are dotted keys of the config schema.
"""
from __future__ import annotations

import functools
import itertools
import math
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field

from trainers.config import (
    MAX_SEED, SECRET_KEYS, Config, ConfigError, PositiveInt, WandbMode, apply_overrides, coerce_value,
    config_from_dict, key_field, parse_override_args, read_yaml, strip_secrets,
)
from trainers.dotted import first_difference, get_dotted
from trainers.flops import training_flops
from trainers.names import NAME_RULE, is_folder_name
from trainers.records import (EXPECTATIONS, METRIC_KEYS, SEED_KEY, TREND_DIRECTIONS, Evaluation, Hypothesis,
                              PlannedTrial, SpaceRecord, StudyRecord, Trend, trend_order, variant_label)
from trainers.schema import Section, allowed_if, validate
from trainers.yaml_file import load_yaml, yaml11_float

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
SCHEDULERS = {"fifo": (), "asha": ("max_t", "grace_period", "reduction_factor", "brackets")}
DISTRIBUTIONS = {"loguniform": 2, "uniform": 2, "randint": 2, "choice": 1}
# a share of a GPU chosen by the runner from the GPUs it finds (tune_looped.gpus)
GPU_AUTO = "auto"
# trials a space may ask for (grid points x seeds x num_samples), counted before any trial is built
MAX_TRIALS = 10_000


class SpaceError(ValueError):
    """A bad search-space file: one line naming the file, the key and what is allowed."""


NonEmptyText = Annotated[str, Field(min_length=1, description="a non-empty string")]
Seeds = Annotated[list[int], Field(min_length=1),
                  allowed_if(lambda seeds: all(0 <= seed <= MAX_SEED for seed in seeds))] | None
SEEDS_RULE = f"a non-empty list of integers from 0 to 2**64 - 1 ({MAX_SEED})"


class Resources(Section):
    cpu: Annotated[int | float, allowed_if(lambda v: v > 0), Field(description="a number of CPUs > 0")] = 1
    gpu: Annotated[int | float | Literal["auto"], allowed_if(lambda v: v == GPU_AUTO or 0 <= v <= 1),
                   Field(description=f"a GPU fraction between 0 and 1 (a trial uses one GPU) or {GPU_AUTO}")] = 0


class TrendSpec(Section):
    """A predicted ordering: the error rises or falls as the grid key grows (REPORT.md tests it apart)."""
    key: NonEmptyText
    error: Literal[TREND_DIRECTIONS]


class HypothesisSpec(Section):
    """A hypothesis as the file writes it, its grid untyped and its question called `description`, checked
    strictly for one-line errors; `_hypothesis` makes it the one `Hypothesis` of the record and the verdict."""
    name: NonEmptyText
    grid: dict[str, Any]
    description: str = ""
    reference: dict[str, Any] = {}
    expect: Literal[EXPECTATIONS] | None = None
    trend: TrendSpec | None = None


class QuickSpec(Section):
    """What `--quick` replaces: base keys (dotted, inline or in a file), grid values, seeds, samples, resources."""
    base: str | dict[str, Any] = Field({}, description="a file of dotted keys or a mapping of them")
    grid: dict[str, Any] = {}
    seeds: Seeds = Field(None, description=SEEDS_RULE)
    num_samples: PositiveInt | None = Field(None, description="a positive integer")
    resources: Resources | None = None


class WandbSpace(Section):
    enabled: bool = False
    project: str | None = None
    entity: str | None = None
    group: str | None = None
    mode: WandbMode = "auto"


PositiveNumber = Annotated[int | float, allowed_if(lambda v: v > 0), Field(description="a number > 0")]


class Budget(Section):
    """What a sequential study may spend: no round starts once the study has run this long or trained this much."""
    hours: PositiveNumber | None = None
    tflop: PositiveNumber | None = None


class DecideSpec(Section):
    """A sequential study (`--until-decided`, docs/ANALYSIS.md "Sequential studies"): the design's keys left out
    take `analysis.sequential.Design`'s defaults; `max_seeds` alone gives the default looks up to it."""
    enabled: bool = False
    looks: Annotated[list[int], Field(min_length=1)] | None = Field(
        None, description="increasing seed counts a variant, e.g. [3, 5, 8, 12]")
    max_seeds: PositiveInt | None = Field(None, description="a positive integer")
    spending: str | None = None
    alpha: float | None = None
    smallest_effect: float | None = None
    budget: Budget = Budget()


class SpaceFile(Section):
    """The file's schema; the grid keys and values are checked against the config schema by `_grid`."""
    # the default experiment name, a folder under --storage
    name: Annotated[str | None, allowed_if(lambda v: v is None or is_folder_name(v)),
                    Field(description=NAME_RULE)] = None
    description: str = ""
    base: str | dict[str, Any] = Field(description="a config file path or a mapping of model:/training:/wandb:")
    # space files whose hypotheses this one has too, before its own (`_declarations`)
    include: Annotated[list[str], Field(min_length=1), allowed_if(lambda paths: all(paths))] = Field(
        None, description="a non-empty list of space files' paths, relative to this file")
    # `experiments` is the earlier spelling; one of the two (or `include`) is required (`_hypotheses_key`)
    hypotheses: Annotated[list[HypothesisSpec], Field(min_length=1)] = None
    experiments: Annotated[list[HypothesisSpec], Field(min_length=1)] = None
    sample: dict[str, Any] = {}
    num_samples: PositiveInt = 1
    seeds: Seeds = Field(None, description=SEEDS_RULE)
    resources: Resources = Resources()
    scheduler: str | dict[str, Any] = Field("fifo", description="fifo, asha or a mapping with a type")
    metric: Literal[METRIC_KEYS] = "eval/loss"
    mode: Literal["min", "max"] = "min"
    max_concurrent: PositiveInt | None = Field(None, description="a positive integer")
    wandb: WandbSpace = WandbSpace()
    decide: DecideSpec = DecideSpec()
    evaluation: Evaluation = Evaluation()
    quick: QuickSpec | None = None


@dataclass(frozen=True)
class Distribution:
    kind: str
    args: tuple


@dataclass(frozen=True)
class Space:
    path: Path
    name: str
    base: dict
    trials: tuple[PlannedTrial, ...]
    sample: dict[str, Distribution]
    num_samples: int
    resources: dict[str, float]
    scheduler: dict
    metric: str
    mode: str
    max_concurrent: int | None
    hypotheses: tuple[Hypothesis, ...] = ()
    wandb: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)  # `--set`'s dotted keys, already in the base
    decide: StudyRecord | None = None  # a sequential study's design; None: a fixed study
    evaluation: Evaluation = Evaluation()  # how the analysis scores the trials' checkpoints
    secrets: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def varying_keys(self) -> list[str]:
        return sorted({k for t in self.trials for k in t.values} | set(self.sample))

    @functools.cached_property
    def configurations(self) -> list[tuple[PlannedTrial, Config]]:
        """(trial, validated config) for the first trial of each configuration, at each end of every sampled
        distribution: every config the trials can have, up to the seed. A seed is checked where it is given (the
        schema, `--seeds`) and no rule across keys involves it, so one seed of a configuration stands for all."""
        seen, out = set(), []
        corners = _distribution_corners(self.sample)
        for trial in self.trials:
            configuration = tuple((k, v) for k, v in trial.values.items() if k != SEED_KEY)
            if configuration in seen:
                continue
            seen.add(configuration)
            source = f"{self.path}: trial {variant_label(trial.values)}"
            out += [(trial, trial_config(self.base, {**trial.values, **values}, source)) for values in corners]
        return out


def resolve_space_path(text: str) -> Path:
    """A path as given, else a bare name (with or without .yaml) in the package's search_spaces folder."""
    path = Path(text)
    # a link to nothing, or a loop of links, is the path given: load_yaml says which
    if path.exists() or path.is_symlink():
        if path.exists() and not path.is_file():
            raise SpaceError(f"{text}: not a file; give a space YAML file or a name from {SPACES_DIR}")
        return path
    for candidate in (SPACES_DIR / text, SPACES_DIR / f"{text}.yaml"):
        if "/" not in text and candidate.is_file():
            return candidate
    raise SpaceError(f"{text}: no such space file (nor in {SPACES_DIR})")


def _number(value):
    """A bound as a finite number (YAML 1.1's dotless `1e-4` too); anything else comes back as None."""
    value = yaml11_float(value)
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
                   "loguniform": "two numbers low < high, low > 0, both finite"}.get(
            kind, "two numbers low < high, both finite")
        raise SpaceError(f"{where}: {kind} takes {allowed}, got {text!r}")
    return Distribution(kind, parsed)


def _read_base(raw, path: Path, secrets: dict) -> dict:
    """The base config as a validated nested dict: a file beside the space, or inline."""
    try:
        base = strip_secrets(read_yaml(path.parent / raw) if isinstance(raw, str) else raw, secrets)
        config_from_dict(base, str(path.parent / raw) if isinstance(raw, str) else f"{path}: base")
    except ConfigError as err:
        raise SpaceError(f"{path}: base: {err}" if isinstance(raw, str) else str(err)) from None
    return base


def _grid(grid: dict, where: str) -> dict[str, list]:
    """One hypothesis' grid as each key's distinct values, typed by the schema so that 1e-4 and 0.0001 are one
    value, not two."""
    if not grid:
        raise SpaceError(f"{where}: empty grid; give at least one key with a list of values")
    for key, values in grid.items():
        key_field(key, f"{where}.{key}")
        if not isinstance(values, list) or not values:
            raise SpaceError(f"{where}.{key}: expected a non-empty list of values, got {values!r}")
    return {key: list(dict.fromkeys(coerce_value(key, v, f"{where}.{key}") for v in values))
            for key, values in grid.items()}


def _refuse_too_many(count: int, where: str, parts: list[str]) -> None:
    if count > MAX_TRIALS:
        raise SpaceError(f"{where}: at most {MAX_TRIALS} trials a space, got {count} ({' x '.join(parts)})")


def _repeats(seeds: list | None, num_samples: int) -> tuple[int, list[str]]:
    """How many trials each configuration makes, and its factors as a message shows them."""
    n_seeds = 1 if seeds is None else len(seeds)
    parts = [f"{n_seeds} seed{'s' * (n_seeds != 1)}"] if seeds is not None else []
    parts += [f"num_samples {num_samples}"] if num_samples > 1 else []
    return n_seeds * num_samples, parts


def _merge_trials(grids: list[tuple[str, dict[str, list]]], base: dict) -> list[PlannedTrial]:
    """Union of the grids' cross-products: each variant is completed with base values for every grid key, then
    deduplicated."""
    keys = sorted({k for _, grid in grids for k in grid})
    defaults = config_from_dict(base).model_dump()
    by_values: dict[tuple, list[str]] = {}
    for name, grid in grids:
        for combo in itertools.product(*grid.values()):
            variant = dict(zip(grid, combo))
            full = {k: variant.get(k, get_dotted(defaults, k)) for k in keys}
            tags = by_values.setdefault(tuple(full.items()), [])
            if name not in tags:
                tags.append(name)
    return [PlannedTrial(hypotheses=tags, values=dict(values)) for values, tags in by_values.items()]


def quick_overrides(raw, path: Path) -> dict:
    """quick.base: a mapping of dotted keys, or a file of them beside the space (shared by several spaces)."""
    if not isinstance(raw, str):
        return raw
    try:
        return read_yaml(path.parent / raw)
    except ConfigError as err:
        raise SpaceError(f"{path}: quick.base: {err}") from None


def _apply_quick(spec: SpaceFile, base: dict, path: Path, secrets: dict) -> tuple[SpaceFile, dict]:
    """The space's settings and base with the `quick:` block applied: base keys and settings replaced (grid
    values: `_declarations`). A W&B key among the base keys goes to `secrets`, as the base's own does."""
    quick = spec.quick
    if quick is None:
        raise SpaceError(f"{path}: quick: --quick needs a quick: block in the space file")
    overrides = strip_secrets(quick_overrides(quick.base, path), secrets)
    # `wandb: {key: ...}` leaves an empty section, which sets nothing
    overrides = {k: v for k, v in overrides.items() if v != {}}
    base = apply_overrides(base, overrides, f"{path}: quick.base")
    config_from_dict(base, f"{path}: quick.base")
    replaced = {k: getattr(quick, k) for k in ("seeds", "num_samples", "resources") if getattr(quick, k) is not None}
    return spec.model_copy(update=replaced), base


@dataclass(frozen=True)
class _Declared:
    """A hypothesis as a space file declares it (its grid as --quick leaves it), and where, for messages."""
    spec: HypothesisSpec
    file: Path
    key: str  # `hypotheses[i]`, or the earlier `experiments[i]`

    @property
    def where(self) -> str:
        return f"{self.file}: {self.key}"


def _declarations(spec: SpaceFile, path: Path, section: str, base: dict, quick: bool, seen: dict[Path, str],
                  chain: tuple[Path, ...]) -> list[_Declared]:
    """The hypotheses of the space at `path`: those of the files it includes first, in the order given, then its
    own. An included file gives its hypotheses and, under --quick, its quick.grid values (the includer's quick.grid
    over them); its base must be the includer's, as its hypotheses are written against it, and its other settings
    are for its own runs. `chain`: the files that include this one, outermost first; `seen`: every included
    file so far, by where it was included."""
    declared, chain = [], (*chain, path)
    for i, name in enumerate(spec.include or ()):
        included = path.parent / name
        child = _included(included, f"{path}: include[{i}]", base, seen, chain)
        declared += _declarations(child, included, _hypotheses_key(child, str(included)), base, quick, seen, chain)
    declared += [_Declared(h, path, f"{section}[{i}]") for i, h in enumerate(_declared_hypotheses(spec))]
    if not quick or spec.quick is None:
        return declared
    grid = spec.quick.grid
    for key in grid:
        key_field(key, f"{path}: quick.grid.{key}")
    return [replace(d, spec=d.spec.model_copy(update={"grid": {k: grid.get(k, v) for k, v in d.spec.grid.items()}}))
            for d in declared]


def _included(path: Path, where: str, base: dict, seen: dict[Path, str], chain: tuple[Path, ...]) -> SpaceFile:
    """The space file an include names (`where`), read and checked: in no cycle, included once, on `base`."""
    if not (path.exists() or path.is_symlink()):
        raise SpaceError(f"{where}: no such file {path}; expected the path of a space file, relative to the "
                         f"including file's folder {chain[-1].parent}")
    try:
        # read before resolve(), which raises RuntimeError on a loop of symbolic links that load_yaml names
        spec = validate(SpaceFile, load_yaml(path, "space file"), str(path))
    except ConfigError as err:
        raise SpaceError(f"{where}: {err}") from None
    resolved = path.resolve()
    if resolved in {p.resolve() for p in chain}:
        raise SpaceError(f"{where}: cycle through {' -> '.join(map(str, (*chain, path)))}; a space may not "
                         "include itself, nor a file that includes it")
    if resolved in seen:
        raise SpaceError(f"{where}: {path} is included already, by {seen[resolved]}; include each file once")
    seen[resolved] = where
    ours, theirs = (config_from_dict(b).model_dump() for b in (base, _read_base(spec.base, path, {})))
    key = first_difference(ours, theirs)
    if key is not None:
        raise SpaceError(f"{where}: {path}'s base sets {key} to {get_dotted(theirs, key)!r}, this file's to "
                         f"{get_dotted(ours, key)!r}; an included space must have the including one's base")
    return spec


def parse_set(texts: list[str]) -> dict[str, Any]:
    """`--set training.train_steps=50 --set model.n_embd=16` -> {dotted key: value}, each value read as on the
    single run's command line (`--training.train_steps=50`); `check_overrides` types them."""
    overrides: dict[str, Any] = {}
    for text in texts:
        key, equals, value = text.partition("=")
        if not equals or "." not in key:
            raise SpaceError(f"--set {text}: expected KEY=VALUE with a dotted config key, like training.train_steps=50")
        if key in overrides:
            raise SpaceError(f"--set {key}: given twice; give each key once")
        try:
            overrides |= parse_override_args([f"--{key}={value}"])
        except ConfigError as err:
            raise _set_error(err, key, f"argument --{key}") from None
    return overrides


def _set_error(err: ConfigError, key: str, source: str) -> SpaceError:
    """The schema's message about `key` (given as from `source`), as `--set KEY: what is wrong`: an unknown key's
    message names the key after the source once more."""
    return SpaceError(str(err).replace(f"{source}: {key}:", f"--set {key}:", 1).replace(source, f"--set {key}", 1))


def check_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted config keys and their values, typed by the config schema; no secret, which would reach the record."""
    if not isinstance(overrides, dict):
        raise SpaceError(f"overrides: expected a mapping of dotted config keys to values, got {overrides!r}")
    checked = {}
    for key, value in overrides.items():
        if key in SECRET_KEYS:
            raise SpaceError(f"--set {key}: a secret never goes into the space record; set WANDB_API_KEY instead")
        try:
            checked[key] = coerce_value(key, value, f"--set {key}")
        except ConfigError as err:
            raise _set_error(err, key, f"--set {key}") from None
    return checked


def load_space(path, *, quick: bool = False, seeds: list[int] | None = None,
               overrides: dict[str, Any] | None = None, until_decided: bool = False) -> Space:
    """The parsed, validated space; `seeds` replaces the space's own (and its quick block's) seeds; `overrides`
    (dotted keys, `parse_set`) are set in the base of every trial, after the quick block. A sequential study
    (`until_decided`, or the space's `decide.enabled`) has its design and runs its first look's seeds."""
    path = resolve_space_path(str(path))
    try:
        return _load_space(path, quick, seeds, overrides or {}, until_decided)
    except ConfigError as err:
        raise SpaceError(str(err)) from None


def _apply_overrides(base: dict, overrides: dict[str, Any], swept: set[str], where: str) -> dict:
    """The base with `--set`'s keys; a key a trial sets itself would be overridden by the trial, so it is refused."""
    for key in overrides:
        if key in swept:
            raise SpaceError(f"--set {key}: {where} sweeps this key (a grid, sample or seed key), so every trial sets "
                             "it; change it in the space file instead")
    base = apply_overrides(base, overrides, "--set")
    config_from_dict(base, "--set")
    return base


def _load_space(path: Path, quick: bool, seeds: list[int] | None, overrides: dict[str, Any],
                until_decided: bool) -> Space:
    where = str(path)
    spec = validate(SpaceFile, load_yaml(path, "space file"), where)
    section = _hypotheses_key(spec, where)
    secrets: dict = {}
    base = _read_base(spec.base, path, secrets)
    declared = _declarations(spec, path, section, base, quick, {}, ())
    if quick:
        spec, base = _apply_quick(spec, base, path, secrets)
    if overrides:
        swept = {k for d in declared for k in d.spec.grid} | set(spec.sample)
        if seeds is not None or spec.seeds is not None:
            swept.add(SEED_KEY)
        base = _apply_overrides(base, overrides, swept, where)
    if seeds is None:
        seeds = spec.seeds
    else:
        for seed in seeds:
            coerce_value(SEED_KEY, seed, "seeds")
    decide = None
    if until_decided or spec.decide.enabled:
        decide = _study(spec, seeds or [config_from_dict(base, where).training.seed], where)
        seeds = decide.seeds[:decide.looks[0]]
    repeats, repeated_by = _repeats(seeds, spec.num_samples)
    grids, hypotheses, names = [], [], {}
    for d in declared:
        here = d.where
        if d.spec.name in names:
            first = names[d.spec.name]
            raise SpaceError(f"{here}.name: must differ from every other hypothesis' name, got {d.spec.name!r} "
                             f"(the name of {first.key}{'' if first.file == d.file else f' in {first.file}'})")
        names[d.spec.name] = d
        grid = _grid(d.spec.grid, f"{here}.grid")
        _refuse_too_many(math.prod(map(len, grid.values())) * repeats, f"{here}.grid",
                         [" x ".join(f"{len(v)} {k}" for k, v in grid.items()), *repeated_by])
        grids.append((d.spec.name, grid))
        hypotheses.append(_hypothesis(d.spec, grid, here))
    sample = {k: parse_distribution(v, f"{where}: sample.{k}") for k, v in spec.sample.items()}
    for key in sample:
        key_field(key, f"{where}: sample.{key}")
    trials = _merge_trials(grids, base)
    _refuse_too_many(len(trials) * repeats, f"{where}: {section}", [f"{len(trials)} configurations", *repeated_by])
    if seeds is not None:
        trials = [PlannedTrial(hypotheses=t.hypotheses, values={**t.values, SEED_KEY: seed})
                  for t in trials for seed in seeds]
    space = Space(
        path=path, name=spec.name or path.stem, base=base, trials=tuple(trials), sample=sample,
        num_samples=spec.num_samples, resources=spec.resources.model_dump(),
        scheduler=_parse_scheduler(spec.scheduler, f"{where}: scheduler"), metric=spec.metric, mode=spec.mode,
        max_concurrent=spec.max_concurrent, hypotheses=tuple(hypotheses),
        wandb=spec.wandb.model_dump(exclude_unset=True), secrets=secrets, overrides=dict(overrides), decide=decide,
        evaluation=spec.evaluation,
    )
    # builds, and so validates, every trial's config; the runner's later checks reuse them
    space.configurations
    return space


def _study(spec: SpaceFile, seeds: list[int], where: str) -> StudyRecord:
    """The sequential study's design, its seeds (the space's, then the next integers up to the cap) and budget."""
    # the statistics' module only where a study is sequential: a dry run of a fixed one stays light
    from analysis.sequential import Design

    given = spec.decide
    if spec.sample or spec.num_samples > 1:
        raise SpaceError(f"{where}: decide: a sequential study compares the same configurations seed by seed; "
                         "remove sample: and num_samples, or run it as a fixed study")
    if _parse_scheduler(spec.scheduler, f"{where}: scheduler")["type"] != "fifo":
        raise SpaceError(f"{where}: decide: a sequential study needs every trial's final error, so its scheduler "
                         "must be fifo (an early-stopping scheduler leaves trials without one)")
    looks = given.looks
    if given.max_seeds is not None and given.max_seeds < max(len(seeds), Design.looks[0]):
        raise SpaceError(f"{where}: decide.max_seeds: must be at least the first look's seeds "
                         f"({max(len(seeds), Design.looks[0])}), got {given.max_seeds}")
    if looks is None:
        cap = given.max_seeds or Design.looks[-1]
        # the default looks up to the cap, the first at the seeds the space runs (a fixed study made sequential)
        first = max(len(seeds), Design.looks[0])
        looks = [first, *(n for n in Design.looks if first < n < cap), *([cap] if cap > first else [])]
    elif given.max_seeds is not None and looks[-1] != given.max_seeds:
        raise SpaceError(f"{where}: decide.max_seeds: must be the last look's seeds ({looks[-1]}) when both are "
                         f"given, got {given.max_seeds}")
    chosen = {"looks": looks, "spending": given.spending, "alpha": given.alpha,
              "smallest_effect": given.smallest_effect}
    try:
        design = Design(**{key: value for key, value in chosen.items() if value is not None})
    except ValueError as err:
        raise SpaceError(f"{where}: decide: {err}") from None
    if len(seeds) > design.looks[0]:
        raise SpaceError(f"{where}: decide.looks: the first look takes {design.looks[0]} seeds a variant, but the "
                         f"space runs {len(seeds)} ({', '.join(map(str, seeds))}); give the first look's seeds only, "
                         f"or start the looks at {len(seeds)}")
    study, following = list(seeds), max(seeds) + 1
    while len(study) < design.looks[-1]:
        if following not in study:
            study.append(following)
        following += 1
    return StudyRecord(**design.to_record(), seeds=study, budget_hours=given.budget.hours,
                       budget_tflop=given.budget.tflop)


def _hypotheses_key(spec: SpaceFile, where: str) -> str:
    """The key the file lists its own hypotheses under: `hypotheses`, or the earlier `experiments` with a warning;
    a file that includes others may have none."""
    if spec.hypotheses is not None and spec.experiments is not None:
        raise SpaceError(f"{where}: experiments: the earlier spelling of hypotheses; give one of the two")
    if spec.experiments is not None:
        warnings.warn(f"{where}: experiments: renamed to hypotheses; the old spelling still works for now",
                      FutureWarning, stacklevel=3)
        return "experiments"
    if spec.hypotheses is None and not spec.include:
        raise SpaceError(f"{where}: hypotheses: missing; expected a non-empty list of hypotheses, or an include of "
                         "space files that have them")
    return "hypotheses"


def _declared_hypotheses(spec: SpaceFile) -> list[HypothesisSpec]:
    return spec.hypotheses if spec.hypotheses is not None else spec.experiments or []


def _hypothesis(exp: HypothesisSpec, grid: dict[str, list], where: str) -> Hypothesis:
    """The hypothesis' declaration; its reference must be one of the grid's own settings."""
    if bool(exp.reference) != (exp.expect is not None):
        raise SpaceError(f"{where}: reference and expect go together; give both (expect: worse or better) or neither")
    reference = {}
    for key, value in exp.reference.items():
        typed = coerce_value(key, value, f"{where}.reference.{key}")
        if typed not in grid.get(key, ()):
            raise SpaceError(f"{where}.reference.{key}: {value!r} is not a value of the hypothesis' grid")
        reference[key] = typed
    return Hypothesis(name=exp.name, question=exp.description, reference=reference, expect=exp.expect,
                      trend=_trend(exp.trend, grid, where))


def _trend(trend: TrendSpec | None, grid: dict[str, list], where: str) -> Trend | None:
    """The trend's key must be one the hypothesis' grid varies, with values that sort along a line."""
    if trend is None:
        return None
    if trend.key not in grid:
        raise SpaceError(f"{where}.trend.key: {trend.key!r} is not a key of the hypothesis' grid; "
                         f"its keys: {', '.join(grid)}")
    values = grid[trend.key]
    try:
        [trend_order(trend.key, value) for value in values]
    except (TypeError, ValueError):
        raise SpaceError(f"{where}.trend.key: {trend.key} must take numbers or true/false to sort along, "
                         f"got {values!r}") from None
    if len(values) < 2:
        raise SpaceError(f"{where}.trend.key: {trend.key} needs at least 2 values in the grid, got {values!r}")
    return Trend(key=trend.key, error=trend.error)


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


def start_order(space: Space) -> list[PlannedTrial]:
    """The trials by training FLOPs, most first (ties keep the space's order): Tune starts grid trials in
    order, so the longest ones no longer run alone at the end of a sweep while the other slots stand idle."""
    return sorted(space.trials, key=lambda t: -training_flops(trial_config(space.base, t.values)))


def parse_resources(raw, where: str) -> dict:
    try:
        return validate(Resources, raw, where).model_dump()
    except ConfigError as err:
        raise SpaceError(str(err)) from None


def _parse_scheduler(raw, where: str) -> dict:
    spec = {"type": raw} if isinstance(raw, str) else dict(raw)
    kind = spec.pop("type", None)
    if kind not in SCHEDULERS:
        raise SpaceError(f"{where}: expected one of {', '.join(SCHEDULERS)}, got {kind!r}")
    for key, value in spec.items():
        if key not in SCHEDULERS[kind]:
            raise SpaceError(f"{where}.{key}: unknown {kind} option; allowed: {', '.join(SCHEDULERS[kind]) or 'none'}")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise SpaceError(f"{where}.{key}: expected a positive integer, got {value!r}")
    return {"type": kind, **spec}


def space_record(space: Space, quick: bool) -> SpaceRecord:
    """What is saved beside the results: the resolved space with its base inlined (no secrets)."""
    return SpaceRecord(
        # absolute: the commands a report names run from any folder
        name=space.name, source=str(Path(space.path).absolute()), quick=quick, base=space.base, hypotheses=list(space.hypotheses),
        trials=list(space.trials),
        sample={k: f"{d.kind}({list(d.args) if d.kind == 'choice' else ', '.join(map(str, d.args))})"
                for k, d in space.sample.items()},
        num_samples=space.num_samples, resources=space.resources, scheduler=space.scheduler, metric=space.metric,
        mode=space.mode, max_concurrent=space.max_concurrent, wandb=space.wandb, overrides=space.overrides,
        evaluation=space.evaluation, decide=space.decide,
    )
