"""Everything that can be wrong with a sweep's input, checked before Ray starts or anything is written.

`Options` are the runner's settings, as `python -m tune_looped.run`'s flags or `tune_looped.run_space`'s keywords
give them; `resolve` turns them and the space file into the space to run, its resources and the experiment's name;
`check_experiment` reads the experiment folder a resume or an extension continues.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from trainers.config import MAX_SEED, ConfigError
from trainers.cpus import available_cpus
from trainers.dotted import first_difference, set_dotted
from trainers.names import NAME_RULE, is_folder_name
from trainers.layout import FIRST_RUN, SPACE_RECORD, restorable, set_aside_copies
from trainers.records import (SEED_KEY, PlannedTrial, RecordError, RunRecord, SpaceRecord, read_space_record,
                              trial_key, variant_label)
from trainers.wandb_log import WANDB_MODES, merged_settings
from tune_looped import extend
from tune_looped.cluster import check_address, check_dashboard_host, check_storage, is_uri, warn
from tune_looped.gpus import ASSUMED_GPU_MEMORY, auto_share, cluster_gpus, trial_memory
from tune_looped.lock import ExperimentLock
from tune_looped.rebuild import Rebuild, plan as plan_rebuild
from tune_looped.space import (GPU_AUTO, Space, SpaceError, check_overrides, load_space, parse_resources,
                               space_record, trial_config)
from tune_looped.state import Repair, plan_repair

PRETRAINED = "model.pretrained_path"
# a trial whose estimated memory is beyond this many times the machine's is refused, not merely warned of
ABSURD_MEMORY = 10
DEFAULT_STORAGE = "~/ray_results"
DEFAULT_MAX_FAILURES = 2
DEFAULT_DASHBOARD_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Options:
    """The runner's settings; the flags of `python -m tune_looped.run` by their names (`--max-concurrent` is
    `max_concurrent`), with `overrides` for `--set` and `report` for the opposite of `--no-report`."""
    space: str
    quick: bool = False
    seeds: list[int] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    address: str | None = None
    storage: str = DEFAULT_STORAGE
    name: str | None = None
    resume: bool = False
    rebuild_state: bool = False
    extend: bool = False
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    max_failures: int = DEFAULT_MAX_FAILURES
    num_cpus: int | None = None
    num_gpus: float | None = None
    dashboard_host: str = DEFAULT_DASHBOARD_HOST
    dashboard: bool = True
    wandb: bool = False
    wandb_mode: str | None = None
    report: bool = True
    dry_run: bool = False
    verbose: bool = False
    until_decided: bool = False


@dataclass(frozen=True)
class Round:
    """A round of a sequential study (`tune_looped.rounds`): the experiment's trials with the round's added, run as
    an extension whose run record names the look it brings seeds to."""
    trials: tuple[PlannedTrial, ...]
    look: int


def seeds_problem(seeds, shown: str | None = None) -> str | None:
    """What is wrong with `seeds` (distinct integers from 0 to 2**64 - 1, at least one), naming them as `shown`
    (default: their repr); None when nothing is."""
    shown = repr(seeds) if shown is None else shown
    if not isinstance(seeds, (list, tuple)) or not seeds or len(set(seeds)) != len(seeds) \
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        return f"expected distinct integers separated by commas, like 0,1,2, got {shown}"
    if not all(0 <= seed <= MAX_SEED for seed in seeds):
        return f"expected seeds from 0 to 2**64 - 1 ({MAX_SEED}), got {shown}"
    return None


def check_seeds(seeds, where: str = "--seeds") -> list[int]:
    problem = seeds_problem(seeds)
    if problem is not None:
        raise SpaceError(f"{where}: {problem}")
    return list(seeds)


def _check_flags(args: Options) -> None:
    checks = [
        ("--max-concurrent", args.max_concurrent, lambda v: v > 0, "a positive integer"),
        ("--max-failures", args.max_failures, lambda v: v >= 0, "an integer >= 0"),
        ("--num-cpus", args.num_cpus, lambda v: v > 0, "a positive integer"),
        ("--num-gpus", args.num_gpus, lambda v: v >= 0 and v.is_integer(), "a whole number >= 0"),
        ("--cpus-per-trial", args.cpus_per_trial, lambda v: v > 0, "a number of CPUs > 0"),
        ("--gpus-per-trial", args.gpus_per_trial, lambda v: 0 <= v <= 1,
         "a GPU fraction between 0 and 1 (a trial uses at most one GPU)"),
    ]
    for flag, value, ok, expected in checks:
        if value is not None and not ok(value):
            raise SpaceError(f"{flag}: expected {expected}, got {value:g}")
    if args.name is not None and not is_folder_name(args.name):
        raise SpaceError(f"--name: expected {NAME_RULE}, got {args.name!r}")
    if args.resume and not args.name:
        raise SpaceError("--resume: needs --name of the experiment to continue")
    check_dashboard_host(args.dashboard_host)
    if not args.dashboard and args.address:
        raise SpaceError("--no-dashboard: only for the embedded Ray; a cluster joined with --address has its head's")
    if not args.dashboard and args.dashboard_host != DEFAULT_DASHBOARD_HOST:
        raise SpaceError("--no-dashboard: not with --dashboard-host, which says where the dashboard listens")
    if args.rebuild_state and not args.resume:
        raise SpaceError("--rebuild-state: only with --resume, which names the experiment to rebuild")
    if args.extend and args.resume:
        raise SpaceError("--extend: not with --resume; --extend resumes the experiment's unfinished trials too")
    if args.extend and not args.name:
        raise SpaceError("--extend: needs --name of the experiment to add trials to")
    if args.extend and is_uri(args.storage):
        raise SpaceError(f"--extend: needs a local --storage (a path), got {args.storage}")
    if args.wandb_mode is not None and args.wandb_mode not in WANDB_MODES:
        raise SpaceError(f"--wandb-mode: expected one of {', '.join(WANDB_MODES)}, got {args.wandb_mode!r}")


def _check_sequential(args: Options) -> None:
    """What a sequential study (`--until-decided` or the space's decide.enabled) needs of the flags."""
    if not args.report:
        raise SpaceError("--no-report: not with a sequential study (--until-decided or decide.enabled), whose every "
                         "look reads the analysis' results")
    if is_uri(args.storage):
        raise SpaceError(f"--storage: a sequential study needs a local path, whose experiment its rounds extend, got "
                         f"{args.storage}")


def _local_gpus(args) -> float:
    """The GPUs of the embedded local Ray: `--num-gpus`, else the ones torch sees here."""
    if args.num_gpus is not None:
        return args.num_gpus
    # torch is imported only for a run that needs GPUs counted, never for a dry run
    import torch

    return torch.cuda.device_count()


def _configs(space: Space) -> list:
    return [trial_config(space.base, t.values) for t in space.trials]


def resolve_gpu_share(space: Space, resources: dict) -> dict:
    """The resources with `gpu: auto` sized from the GPUs of the nodes the running Ray can schedule on."""
    if resources["gpu"] != GPU_AUTO:
        return resources
    return {**resources, "gpu": auto_share(_configs(space), *cluster_gpus())}


def _check_fits_local_ray(resources: dict, args, space: Space) -> None:
    """A trial that asks for more than the embedded Ray has would wait forever; a cluster's size is Ray's to know."""
    if args.address:
        return
    for kind, flag, size_flag in (("cpu", "--cpus-per-trial", "--num-cpus"), ("gpu", "--gpus-per-trial", "--num-gpus")):
        unknown = kind == "gpu" and args.dry_run and args.num_gpus is None  # counted at start, by torch
        if resources[kind] == GPU_AUTO or not resources[kind] or unknown:
            continue
        have = (args.num_cpus or available_cpus()) if kind == "cpu" else _local_gpus(args)
        if resources[kind] > have:
            asked = flag if getattr(args, flag[2:].replace("-", "_")) is not None else f"{space.path}: resources.{kind}"
            raise SpaceError(f"{asked}: a trial needs {resources[kind]:g} {kind.upper()}(s) but the local Ray has "
                             f"{have:g} (set {size_flag}, or lower the request); no trial could ever start")


def _check_memory(space: Space, resources: dict, args) -> None:
    """A trial that cannot fit this machine's memory: refused when its estimate (tune_looped/gpus.py: the
    activations of its batch, parameters and Adam's state) is beyond ABSURD_MEMORY times the memory, else a
    warning for trials on the CPU. A cluster's nodes (`--address`) are Ray's to know."""
    if args.address:
        return
    total = psutil.virtual_memory().total
    needed, trial, config = max(((trial_memory(c), t, c) for t, c in space.configurations), key=lambda x: x[0])
    where = f"{space.path}: trial {variant_label(trial.values)}"
    estimate = f"an estimated {needed / 2**30:.3g} GiB (training.batch_size {config.training.batch_size})"
    if needed > ABSURD_MEMORY * total:
        raise SpaceError(f"{where}: training.batch_size: a trial must fit in {ABSURD_MEMORY} times this machine's "
                         f"memory ({total / 2**30:.1f} GiB), got {estimate}")
    if needed > total and resources["gpu"] == 0:
        warn(f"{where}: a trial needs {estimate}, more than this machine's {total / 2**30:.1f} GiB of memory")


def _with_absolute_pretrained(space: Space) -> Space:
    """Trials run in their own folders, so a relative `model.pretrained_path` is fixed against the folder the
    runner starts in, as a single run reads it."""
    def absolute(value):
        return str(Path(value).absolute()) if isinstance(value, str) and value else value

    base = space.base
    if isinstance(base.get("model"), dict) and base["model"].get("pretrained_path"):
        base = set_dotted(base, PRETRAINED, absolute(base["model"]["pretrained_path"]))
    trials = tuple(t.model_copy(update={"values": {**t.values, PRETRAINED: absolute(t.values[PRETRAINED])}})
                   if PRETRAINED in t.values else t for t in space.trials)
    if (base, trials) == (space.base, space.trials):
        return space  # which keeps the configs it has built
    return dataclasses.replace(space, base=base, trials=trials)


def _check_pretrained_files(space: Space) -> None:
    """Each distinct (file, model section) of the grid loads before Ray starts, instead of failing in every trial."""
    if not space.base.get("model", {}).get("pretrained_path") and not any(PRETRAINED in t.values
                                                                          for t in space.trials):
        return
    # torch, for a space that names a pretrained model only
    from trainers.checkpoint import check_pretrained

    seen = set()
    for trial in space.trials:
        config = trial_config(space.base, trial.values)
        if config.model.pretrained_path and config.model not in seen:
            seen.add(config.model)
            try:
                check_pretrained(config, f"{space.path}: trial {variant_label(trial.values)}")
            except ConfigError as err:
                raise SpaceError(str(err)) from None


def _load(args: Options) -> Space:
    """The space of the options. An extension's seeds are the recorded ones, then the new ones: a new grid value
    runs with every seed the experiment has. A sequential study continued keeps the design it started with."""
    overrides = check_overrides(args.overrides)
    space = load_space(args.space, quick=args.quick, seeds=args.seeds, overrides=overrides,
                       until_decided=args.until_decided)
    saved = _saved_record(args) if args.extend or args.resume else None
    if saved is not None and saved.decide is not None:
        return _with_absolute_pretrained(dataclasses.replace(space, decide=saved.decide))
    recorded = saved.seeds() if saved is not None and args.extend else []
    given = list(dict.fromkeys(t.values[SEED_KEY] for t in space.trials if SEED_KEY in t.values))
    seeds = [*recorded, *(s for s in given if s not in recorded)]
    if recorded and given and seeds != given:
        # a fixed study made sequential: its design's first look is at the seeds it has
        space = load_space(args.space, quick=args.quick, seeds=seeds, overrides=overrides,
                           until_decided=args.until_decided)
    return _with_absolute_pretrained(space)


def _saved_record(args: Options) -> SpaceRecord | None:
    """The space record of the experiment `--name` names, None where it has none (`check_experiment` says so)."""
    try:
        return read_space_record(Path(args.storage).expanduser() / args.name)
    except RecordError:
        return None


def resolve(args: Options):
    """Everything that can be wrong with the input, checked before Ray starts or anything is written, for a run
    and its dry run alike: (the space, its resources, the experiment's name, the storage checked)."""
    _check_flags(args)
    space = _load(args)
    if space.decide is not None:
        _check_sequential(args)
    resources = dict(space.resources)
    if args.cpus_per_trial is not None:
        resources["cpu"] = args.cpus_per_trial
    if args.gpus_per_trial is not None:
        resources["gpu"] = args.gpus_per_trial
    resources = parse_resources(resources, "--cpus-per-trial/--gpus-per-trial")
    # a quick study stays on the CPU; a dry run of the embedded Ray that --num-gpus sizes is resolved here; any
    # other `auto` once Ray runs, from the GPUs of the nodes it can schedule on (`tune_looped.gpus.auto_share`)
    if resources["gpu"] == GPU_AUTO and (args.quick or args.dry_run and args.num_gpus is not None
                                         and not args.address):
        resources["gpu"] = 0.0 if args.quick else auto_share(_configs(space), args.num_gpus, ASSUMED_GPU_MEMORY)
    _check_fits_local_ray(resources, args, space)
    _check_memory(space, resources, args)
    _check_pretrained_files(space)
    check_address(args.address)
    name = args.name or f"{space.name}{'-quick' if args.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    return space, resources, name, check_storage(args.storage)


def check_resumable(experiment_dir: Path, space: Space, quick: bool, rebuild: bool = False) -> SpaceRecord:
    """What a resume needs that no runner changes: the experiment, Tune's state files (unless rebuilding without
    them), a space that resolves as it did at the start, with trials among the recorded ones (an extension's
    command names only the seeds it added). Whether Tune's state is whole is `_check_state`'s."""
    saved = _read_record(experiment_dir, "--resume")
    runs = saved.run_list()
    for run in runs:
        _check_run_folder(experiment_dir, run.folder, "--resume")
    if len(runs) > 1 and not extend.saved_state(experiment_dir / runs[-1].folder):
        raise SpaceError(f"--resume: {runs[-1].folder} was stopped before Tune first saved its state; run its "
                         "--extend command again, which starts it afresh")
    if not rebuild and not all(restorable(experiment_dir / run.folder) for run in runs):
        raise SpaceError(f"--resume: {experiment_dir} holds no saved Tune state (the sweep was stopped before Tune "
                         "first saved it), so there is nothing to resume; delete that folder and start again, or "
                         "add --rebuild-state to run the trials that did not end")
    # the base and grid come from the space file now, the trials' list from Tune's saved state: they must agree.
    # The current record goes through YAML as the saved one did, so that tuples and lists compare equal.
    current = SpaceRecord.model_validate(yaml.safe_load(yaml.safe_dump(space_record(space, quick).model_dump())))
    key = first_difference(_resume_relevant(saved), _resume_relevant(current))
    if key is None:  # the same base: the recorded values make configs as they did
        recorded = {trial_key(current.base, t.values, hypotheses=t.hypotheses) for t in saved.trials}
        if not all(trial_key(current.base, t.values, hypotheses=t.hypotheses) in recorded for t in current.trials):
            key = "trials"
    if key:
        raise SpaceError(f"--resume: {key} differs from the experiment's {experiment_dir / SPACE_RECORD}; resume "
                         "with the space (and --quick) it started with, or add trials with --extend")
    return saved


def _check_run_folder(experiment_dir: Path, folder: str, flag: str) -> None:
    """A recorded Tune run whose folder is gone. Tune makes the folder when its Tuner is built, before the record
    names the run, so it was moved away: by hand, or by the repair of runners that set aside every unknown folder."""
    if (experiment_dir / folder).is_dir():
        return
    moved = set_aside_copies(experiment_dir, folder)
    where = f"; a repair set it aside in {moved[-1]}: move it back" if moved else ""
    raise SpaceError(f"{flag}: {experiment_dir / SPACE_RECORD} lists the Tune run {folder}, but "
                     f"{experiment_dir / folder} is not there{where}")


def _read_record(experiment_dir: Path, flag: str) -> SpaceRecord:
    if not (experiment_dir / SPACE_RECORD).exists():
        raise SpaceError(f"{flag}: no experiment at {experiment_dir}")
    try:
        return read_space_record(experiment_dir)
    except RecordError:
        raise SpaceError(f"{flag}: {experiment_dir / SPACE_RECORD} is not the space record the runner writes"
                         ) from None


def _resume_relevant(record: SpaceRecord) -> dict:
    """The record less what does not change a trial: the path the space was given as (which may differ between
    two shells), the hypotheses' questions, and the trials and runs, which `check_resumable` compares apart."""
    return record.model_dump(exclude={"source": True, "hypotheses": {"__all__": {"question"}}, "trials": True,
                                      "runs": True, "looks": True})


def wandb_settings(space, args) -> dict | None:
    """The trials' W&B settings, or None when W&B is off: the base config's `wandb:` section, then the space's
    `wandb:` block, then the flags, each over the one before."""
    settings = merged_settings(trial_config(space.base, {}, f"{space.path}: base").wandb, space.wandb, space.name)
    enabled = settings.pop("enabled")
    if not (args.wandb or enabled):
        return None
    if args.wandb_mode:
        settings["mode"] = args.wandb_mode
    return settings


def _check_state(experiment_dir: Path) -> Repair:
    """What the resume does about Tune's damaged state files; refused, the folder left as it is, when one of them
    has no good copy."""
    repair = plan_repair(experiment_dir)
    if repair.unrepairable:
        damaged = " and ".join(f"{file} is {problem}" for file, problem in repair.unrepairable)
        raise SpaceError(f"--resume: {damaged}, and no good copy was kept, so Tune cannot restore the experiment (it "
                         "would start a new one in its place); the folder is left as it is; --resume --rebuild-state "
                         "runs the trials that did not end, from the trial folders")
    return repair


def experiment_location(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}" if is_uri(storage) else str(Path(storage) / name)


@dataclass(frozen=True)
class Plan:
    """What the sweep does in the experiment folder, in order: put good copies of Tune's state in place
    (`repairs`, per run folder), restore the unfinished Tune runs (`restore`), then start the Tune run `start`
    (a folder of the experiment) with the trials of `start_space`. `space` holds every trial of the experiment,
    which the summary covers, against `record`, which is written before any run starts when `write_record`."""
    space: Space
    record: SpaceRecord
    restore: tuple[str, ...] = ()
    start: str | None = FIRST_RUN
    start_space: Space | None = None
    write_record: bool = False
    repairs: dict[str, Repair] = field(default_factory=dict)
    rebuild: Rebuild | None = None
    extension: extend.Extension | None = None


def check_experiment(args: Options, space: Space, name: str, storage: str, lock: ExperimentLock,
                     round: Round | None = None) -> Plan:
    """The experiment folder as the command needs it, read before the lock is taken so that a refusal writes
    nothing; `round`: a sequential study's next round, in place of the command's own trials."""
    experiment_dir = Path(storage) / name
    if round is not None:
        return _plan_extension(args, dataclasses.replace(space, trials=round.trials), experiment_dir, lock, round.look)
    if args.extend:
        return _plan_extension(args, space, experiment_dir, lock)
    if not args.resume:
        if experiment_dir.exists():
            lock.check_free(watch=False)
            raise SpaceError(f"--name {name}: {experiment_dir} exists; add --resume or choose another name")
        record = space_record(space, args.quick)
        first = RunRecord(started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), trials=record.trials,
                          look=1 if space.decide is not None else None)
        return Plan(space, record.model_copy(update={"runs": [first]}), start_space=space, write_record=True)
    saved = check_resumable(experiment_dir, space, args.quick, rebuild=args.rebuild_state)
    # a live runner first: its state may be half written this very moment
    lock.check_free()
    everything = dataclasses.replace(space, trials=tuple(saved.trials), hypotheses=tuple(saved.hypotheses))
    if args.rebuild_state:
        if len(saved.run_list()) > 1:
            raise SpaceError(f"--rebuild-state: {experiment_dir} was extended (--extend); a rebuild covers only an "
                             "experiment of one Tune run")
        rebuild = plan_rebuild(experiment_dir, space, saved)
        return Plan(everything, saved, start_space=rebuild.space(space), rebuild=rebuild)
    # a resume of an experiment that ended restores its last run, which ends at once and is summarised again
    restore = extend.unfinished_runs(experiment_dir, everything, saved) or [saved.run_list()[-1].folder]
    return Plan(everything, saved, restore=tuple(restore), start=None,
                repairs=_repairs(experiment_dir, restore, storage))


def _plan_extension(args: Options, space: Space, experiment_dir: Path, lock: ExperimentLock,
                    look: int | None = None) -> Plan:
    saved = _read_record(experiment_dir, "--extend")
    if saved.decide is not None and look is None:
        raise SpaceError(f"--extend: {experiment_dir} is a sequential study (its design is in its {SPACE_RECORD}), "
                         "whose rounds add the seeds; --resume continues it, and other trials need a new experiment "
                         "(another --name); nothing was changed")
    for run in saved.run_list():
        _check_run_folder(experiment_dir, run.folder, "--extend")
    lock.check_free()
    # a fixed study made sequential: the trials it has bring the first look's seeds
    look = 1 if look is None and space.decide is not None else look
    extension = extend.plan(experiment_dir, space, saved, args.quick, look)
    restore = extend.unfinished_runs(experiment_dir, extension.space, extension.earlier)
    missing = [folder for folder in restore if not restorable(experiment_dir / folder)]
    if missing:
        raise SpaceError(f"--extend: {experiment_dir / missing[0]} has unfinished trials but no saved Tune state to "
                         "resume them from; resume it with --resume --rebuild-state first")
    if not extension.added and not restore:
        if extension.record.decide != saved.decide:
            # made sequential with nothing to run: its last run, restored, ends at once, and the first look follows
            restore = [saved.run_list()[-1].folder]
        else:
            raise SpaceError(f"--extend: nothing to add: every trial the space asks for is in {experiment_dir} and "
                             "has ended; add seeds (--seeds), grid values or hypotheses")
    return Plan(extension.space, extension.record, restore=tuple(restore),
                start=extension.folder if extension.added else None,
                start_space=extension.extension_space() if extension.added else None, write_record=True,
                repairs=_repairs(experiment_dir, restore, args.storage), extension=extension)


def extension_trials(args: Options, space: Space) -> Space:
    """What `--extend --dry-run` shows: the trials the extension would add, read from the experiment's record."""
    experiment_dir = Path(args.storage).expanduser() / args.name
    return extend.plan(experiment_dir, space, _read_record(experiment_dir, "--extend"), args.quick).extension_space()


def _repairs(experiment_dir: Path, folders, storage: str) -> dict[str, Repair]:
    return {} if is_uri(storage) else {folder: _check_state(experiment_dir / folder) for folder in folders}
