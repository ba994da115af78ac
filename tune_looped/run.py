"""`python -m tune_looped.run --space hypotheses.yaml`: run every trial of a search space with Ray Tune.

Validates the whole space before Ray starts, runs on an embedded local Ray (or `--address` a cluster),
retries crashed trials from their last checkpoint, resumes interrupted sweeps (`--resume`), prints a
summary and ends with the analysis' frames, plots and report.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

from trainers.cli import OneLineArgumentParser
from trainers.config import MAX_SEED, ConfigError
from trainers.cpus import available_cpus
from trainers.dotted import set_dotted
from trainers.names import NAME_RULE, is_folder_name
from trainers.records import (ERROR, INCOMPLETE, SPACE_RECORD, RecordError, SpaceRecord, read_space_record,
                              variant_label, write_space_record)
from tune_looped.cluster import (MIN_FREE_BYTES, check_address, check_dashboard_host, check_storage, full_filesystems,
                                 is_uri, start_ray, warn, warn_if_local_storage_on_cluster)
from tune_looped.gpus import ASSUMED_GPU_MEMORY, describe_cpu_time, gpu_share, trial_memory
from tune_looped.lock import ExperimentLock
from tune_looped.rebuild import Rebuild, plan as plan_rebuild
from tune_looped.space import GPU_AUTO, Space, SpaceError, load_space, parse_resources, space_record, trial_config
from tune_looped.state import Repair, StateKeeper, apply_repair, plan_repair
from tune_looped.tables import print_summary, print_trial_table, summarise

# what Tune writes into the experiment folder: Tuner.restore needs both (ray.tune.tuner / tune_controller)
TUNE_STATE_FILES = ("tuner.pkl", "experiment_state-*.json")
PRETRAINED = "model.pretrained_path"
# a trial whose estimated memory is beyond this many times the machine's is refused, not merely warned of
ABSURD_MEMORY = 10
RUNNER_COMMAND = "python -m tune_looped.run"


def parse_args(argv):
    p = OneLineArgumentParser(prog="python -m tune_looped.run", description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help="space YAML: a path, or a name in the package's search_spaces/")
    p.add_argument("--quick", action="store_true", help="apply the space's quick: block (a CPU-sized study)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved trials and exit without Ray")
    p.add_argument("--seeds", type=_seed_list, help="comma-separated seeds to run every configuration with "
                                                   "(default: the space's seeds)")
    p.add_argument("--address", help="join a running cluster: auto, HOST:PORT or ray://HOST:PORT")
    p.add_argument("--storage", default="~/ray_results", help="results root: a path or a URI (default %(default)s)")
    p.add_argument("--name", help="experiment name (default: <space>[-quick]-<date-time>)")
    p.add_argument("--resume", action="store_true", help="continue the experiment --name under --storage")
    p.add_argument("--rebuild-state", action="store_true",
                   help="with --resume: Tune's state aside, run the trials whose folders show they did not end")
    p.add_argument("--cpus-per-trial", type=float, help="override the space's resources.cpu")
    p.add_argument("--gpus-per-trial", type=float, help="override the space's resources.gpu (0 < g <= 1)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial (default %(default)s)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    p.add_argument("--num-gpus", type=float, help="GPUs of the embedded local Ray (default: all)")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="dashboard bind address (default %(default)s)")
    p.add_argument("--wandb", action="store_true", help="log every trial to W&B (also: wandb.enabled in the space)")
    p.add_argument("--wandb-mode", choices=("online", "offline"), help="default: online when a key is available")
    p.add_argument("--no-report", action="store_true", help="skip the analysis at the end")
    return p.parse_args(argv)


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct integers separated by commas, like 0,1,2, got {text!r}")
    if not all(0 <= seed <= MAX_SEED for seed in seeds):
        raise argparse.ArgumentTypeError(f"expected seeds from 0 to 2**64 - 1 ({MAX_SEED}), got {text!r}")
    return seeds


def _check_flags(args) -> None:
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
    if args.rebuild_state and not args.resume:
        raise SpaceError("--rebuild-state: only with --resume, which names the experiment to rebuild")


def _local_gpus(args) -> float:
    """The GPUs of the embedded local Ray: `--num-gpus`, else the ones torch sees here."""
    if args.num_gpus is not None:
        return args.num_gpus
    # torch is imported only for a run that needs GPUs counted, never for a dry run
    import torch

    return torch.cuda.device_count()


def _auto_gpu_share(space: Space, args) -> float:
    """`resources.gpu: auto`: a share of a GPU from the trials' estimated memory, or the CPU with a warning of the
    projected time. The GPUs counted are this machine's (or `--num-gpus`); a quick study stays on the CPU."""
    if args.quick:
        return 0.0
    gpus = _local_gpus(args)
    configs = [trial_config(space.base, t.values) for t in space.trials]
    if not gpus:
        warn(describe_cpu_time(configs))
        return 0.0
    import torch

    memory = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else ASSUMED_GPU_MEMORY
    needed = max(trial_memory(c) for c in configs)
    share = gpu_share(needed, memory)
    print(f"resources.gpu auto: each trial gets {share:g} of a GPU: the largest trial needs about "
          f"{needed / 2**30:.1f} GiB (estimated) of its {memory / 2**30:.0f} GiB", file=sys.stderr)
    return share


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


def resolve(args):
    """Everything that can be wrong with the input, checked before Ray starts or anything is written."""
    _check_flags(args)
    space = _with_absolute_pretrained(load_space(args.space, quick=args.quick, seeds=args.seeds))
    resources = dict(space.resources)
    if args.cpus_per_trial is not None:
        resources["cpu"] = args.cpus_per_trial
    if args.gpus_per_trial is not None:
        resources["gpu"] = args.gpus_per_trial
    resources = parse_resources(resources, "--cpus-per-trial/--gpus-per-trial")
    # a dry run counts GPUs only when --num-gpus says how many (a quick study needs none): counting them here
    # would import torch
    if resources["gpu"] == GPU_AUTO and not (args.dry_run and args.num_gpus is None and not args.quick):
        resources["gpu"] = _auto_gpu_share(space, args)
    _check_fits_local_ray(resources, args, space)
    _check_memory(space, resources, args)
    _check_pretrained_files(space)
    check_address(args.address)
    name = args.name or f"{space.name}{'-quick' if args.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    return space, resources, name


def _first_difference(saved, current, prefix: str = "") -> str | None:
    """The dotted key where two resolved space records first differ, or None when they are equal."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in [*saved, *(k for k in current if k not in saved)]:
            found = _first_difference(saved.get(key), current.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if saved == current else prefix.rstrip(".") or "top level"


def check_resumable(experiment_dir: Path, space: Space, quick: bool, rebuild: bool = False) -> None:
    """What a resume needs that no runner changes: the experiment, Tune's state files (unless rebuilding without
    them), a space that resolves as it did at the start. Whether Tune's state is whole is `_check_state`'s."""
    if not (experiment_dir / SPACE_RECORD).exists():
        raise SpaceError(f"--resume: no experiment at {experiment_dir}")
    if not rebuild and not all(any(experiment_dir.glob(pattern)) for pattern in TUNE_STATE_FILES):
        raise SpaceError(f"--resume: {experiment_dir} holds no saved Tune state (the sweep was stopped before Tune "
                         "first saved it), so there is nothing to resume; delete that folder and start again, or "
                         "add --rebuild-state to run the trials that did not end")
    try:
        saved = read_space_record(experiment_dir)
    except RecordError:
        raise SpaceError(f"--resume: {experiment_dir / SPACE_RECORD} is not the space record the runner writes"
                         ) from None
    # the base and grid come from the space file now, the trials' list from Tune's saved state: they must agree.
    # The current record goes through YAML as the saved one did, so that tuples and lists compare equal.
    current = SpaceRecord.model_validate(yaml.safe_load(yaml.safe_dump(space_record(space, quick).model_dump())))
    key = _first_difference(_resume_relevant(saved), _resume_relevant(current))
    if key:
        raise SpaceError(f"--resume: {key} differs from the experiment's {experiment_dir / SPACE_RECORD}; resume "
                         "with the space (and --quick) it started with")


def _resume_relevant(record: SpaceRecord) -> dict:
    """The record less what does not change a trial: the path the space was given as (which may differ between
    two shells) and the hypotheses' questions."""
    return record.model_dump(exclude={"source": True, "hypotheses": {"__all__": {"question"}}})


def wandb_settings(space, args) -> dict | None:
    """The trials' W&B settings, or None when W&B is off: the base config's `wandb:` section, then the space's
    `wandb:` block, then the flags, each over the one before."""
    config = trial_config(space.base, {}, f"{space.path}: base").wandb
    settings = {key: getattr(config, key) for key in ("enabled", "mode", "project", "entity", "group")
                if getattr(config, key) is not None}
    settings.update(space.wandb)
    enabled = settings.pop("enabled")
    if not (args.wandb or enabled):
        return None
    if args.wandb_mode:
        settings["mode"] = args.wandb_mode
    settings.setdefault("group", space.name)
    return settings


def _resume_command(argv: list[str], name: str) -> str:
    """The command line that continues this sweep: the same flags, with the experiment's --name and --resume."""
    kept, skip = [], False
    for token in argv:
        if skip or token in ("--resume", "--rebuild-state", "--dry-run") or token.startswith("--name="):
            skip = False
            continue
        skip = token == "--name"
        if not skip:
            kept.append(token)
    return shlex.join([sys.executable, "-m", "tune_looped.run", *kept, "--name", name, "--resume"])


def _print_wandb_sync(experiment_dir: Path) -> None:
    offline = list(experiment_dir.glob("*/wandb/offline-run-*"))
    if offline:
        print(f"W&B: {len(offline)} offline runs; upload them with:\n  wandb sync "
              f"{shlex.quote(str(experiment_dir))}/*/wandb/offline-run-*")


def _fit_stopping_on_sigterm(tuner):
    """`tuner.fit()`, where SIGTERM (`kill PID`, a job scheduler) stops the sweep as Ctrl-C does: Tune saves its
    state and the resume command is printed. Tune itself catches only SIGINT, and only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))
    try:
        return tuner.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _build_tuner(space, resources, name, storage, args, experiment_dir: Path):
    from ray import tune

    from tune_looped.trainable import run_trial

    # evaluation runs every eval_every_steps, not on every logged row; Tune must accept rows without it
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Tune's default output ignores a progress reporter; the classic one prints ours
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    from tune_looped.live import LiveTable
    from tune_looped.trials import TrialRecorder
    from tune_looped.tune_space import make_scheduler, param_space

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=space.base, wandb_settings=wandb_settings(space, args),
                             results_dir=None if is_uri(storage) else str(experiment_dir)),
        resources=resources,
    )
    if args.resume and not args.rebuild_state:
        return tune.Tuner.restore(str(experiment_dir), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=param_space(space),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, scheduler=make_scheduler(space), num_samples=space.num_samples,
            max_concurrent_trials=args.max_concurrent or space.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, failure_config=tune.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2), progress_reporter=LiveTable(space), verbose=1,
            # Tune keeps the run config in tuner.pkl, so a resumed sweep records its trials too
            callbacks=[TrialRecorder()],
        ),
    )


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


def _experiment_location(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}" if is_uri(storage) else str(Path(storage) / name)


def _check_experiment(args, space: Space, name: str, storage: str,
                      lock: ExperimentLock) -> tuple[Repair, Rebuild | None]:
    """The experiment folder as the command needs it, read before the lock is taken so that a refusal writes
    nothing: (Tune's damaged state files with their good copies, the rebuild's plan)."""
    experiment_dir = Path(storage) / name
    if not args.resume:
        if experiment_dir.exists():
            lock.check_free()
            raise SpaceError(f"--name {name}: {experiment_dir} exists; add --resume or choose another name")
        return Repair(), None
    check_resumable(experiment_dir, space, args.quick, rebuild=args.rebuild_state)
    # a live runner first: its state may be half written this very moment
    lock.check_free()
    if args.rebuild_state:
        return Repair(), plan_rebuild(experiment_dir, space, space_record(space, args.quick))
    return (Repair() if is_uri(storage) else _check_state(experiment_dir)), None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        space, resources, name = resolve(args)
        if args.dry_run:
            print_trial_table(space)
            if resources["gpu"] == GPU_AUTO:
                print(f"{space.path}: resources.gpu: auto (resolved at start, from the GPUs Ray finds)",
                      file=sys.stderr)
            return 0
        storage = check_storage(args.storage)
        experiment_dir = Path(storage) / name
        lock = ExperimentLock(_experiment_location(storage, name), RUNNER_COMMAND)
        repair, rebuild = _check_experiment(args, space, name, storage, lock)
        created = not experiment_dir.exists()
        lock.acquire()
    except SpaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        for line in apply_repair(experiment_dir, repair):
            warn(line)
        return _run(args, argv, space, resources, name, storage, experiment_dir, rebuild)
    finally:
        lock.release()
        if created:
            # a sweep that failed before Tune wrote anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                experiment_dir.rmdir()


def _run(args, argv, space: Space, resources: dict, name: str, storage: str, experiment_dir: Path,
         rebuild: Rebuild | None) -> int:
    """The sweep, its summary and its analysis, with the experiment's lock held."""
    record = space_record(space, args.quick)
    import ray

    if space.secrets.get("wandb.key") and wandb_settings(space, args):
        # workers inherit the driver's environment: the key never travels in a config or runtime_env
        os.environ.setdefault("WANDB_API_KEY", space.secrets["wandb.key"])
    try:
        context = start_ray(args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                            dashboard_host=args.dashboard_host)
    except SpaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    session = Path(context.address_info["session_dir"])
    written_to = {"the storage": Path(storage), "the temporary folder": Path(tempfile.gettempdir()),
                  "Ray's folder": session.parent}
    keeper = None if is_uri(storage) else StateKeeper(experiment_dir, session)
    failure = None
    try:
        warn_if_local_storage_on_cluster(storage)
        if rebuild is not None:
            aside = rebuild.set_aside(experiment_dir)
            warn(f"--rebuild-state: kept {len(rebuild.kept)} ended trial(s); set aside {len(rebuild.replaced)} "
                 f"folder(s) and file(s) of the earlier Tune state in {aside}; running {len(rebuild.remaining)} "
                 "trial(s) from step 0")
        tuner = _build_tuner(rebuild.space(space) if rebuild else space, resources, name, storage, args,
                             experiment_dir)
        if not args.resume:
            experiment_dir.mkdir(parents=True, exist_ok=True)
            write_space_record(experiment_dir, record)
        if keeper is not None:
            keeper.start()
        try:
            results = _fit_stopping_on_sigterm(tuner)
        except Exception as err:  # a full disk fails Tune on its own files: the error is told below
            failure, results = err, []
    finally:
        if keeper is not None:
            keeper.stop()
        ray.shutdown()
    rows = summarise(results, space, None if is_uri(storage) else experiment_dir)
    full = full_filesystems(written_to) if failure or any(r["status"] == ERROR for r in rows) else []
    if failure is not None and not full:
        raise failure
    if full:
        print_summary(rows, experiment_dir)
        print(f"error: disk full: {'; '.join(full)}; a sweep needs at least {MIN_FREE_BYTES // 2**20} MiB free "
              "there for its checkpoints and results; free some space, then resume with the command below",
              file=sys.stderr)
        print(f"resume with:\n  {_resume_command(argv, name)}", file=sys.stderr)
        return 1
    unasked, missing = print_summary(rows, experiment_dir, record)
    _print_wandb_sync(experiment_dir)
    if any(r["status"] == INCOMPLETE for r in rows):
        print(f"interrupted; resume with:\n  {_resume_command(argv, name)}", file=sys.stderr)
        return 130
    if unasked or missing:
        # an analysis of other trials than those asked for would answer another question
        print(f"the trials that ran are not those {SPACE_RECORD} asks for (above); no report is written",
              file=sys.stderr)
        if missing:
            print(f"run the missing ones with:\n  {_resume_command(argv, name)} --rebuild-state", file=sys.stderr)
        return 1
    if not args.no_report:
        from analysis import run_all

        written = run_all(experiment_dir)
        plots = written.pop("plots")
        for label, path in written.items():
            print(f"{label}: {path}")
        print(f"plots: {len(plots)} figures in {plots[0].parent if plots else experiment_dir}")
    return 1 if any(r["status"] == ERROR for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
