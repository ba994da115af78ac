"""`python -m tune_looped.run --space hypotheses.yaml`: run every trial of a search space with Ray Tune.

Validates the whole space before Ray starts, runs on an embedded local Ray (or `--address` a cluster),
retries crashed trials from their last checkpoint, resumes interrupted sweeps (`--resume`), prints a
summary and ends with the analysis' frames, plots and report.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import yaml

from tune_looped.cluster import check_storage, start_ray, warn_if_local_storage_on_cluster
from tune_looped.space import SpaceError, load_space, parse_resources, space_record
from tune_looped.tables import print_summary, print_trial_table, summarise

SPACE_RECORD = "space.yaml"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tune_looped.run", description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help="space YAML: a path, or a name in the package's search_spaces/")
    p.add_argument("--quick", action="store_true", help="apply the space's quick: block (a CPU-sized study)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved trials and exit without Ray")
    p.add_argument("--address", help="join a running cluster: auto, HOST:PORT or ray://HOST:PORT")
    p.add_argument("--storage", default="~/ray_results", help="results root: a path or a URI (default %(default)s)")
    p.add_argument("--name", help="experiment name (default: <space>[-quick]-<date-time>)")
    p.add_argument("--resume", action="store_true", help="continue the experiment --name under --storage")
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


def resolve(args):
    """Everything that can be wrong with the input, checked before Ray starts or anything is written."""
    if args.max_concurrent is not None and args.max_concurrent <= 0:
        raise SpaceError(f"--max-concurrent: expected a positive integer, got {args.max_concurrent}")
    if args.max_failures < 0:
        raise SpaceError(f"--max-failures: expected an integer >= 0, got {args.max_failures}")
    space = load_space(args.space, quick=args.quick)
    resources = dict(space.resources)
    if args.cpus_per_trial is not None:
        resources["cpu"] = args.cpus_per_trial
    if args.gpus_per_trial is not None:
        resources["gpu"] = args.gpus_per_trial
    resources = parse_resources(resources, "--cpus-per-trial/--gpus-per-trial")
    name = args.name or f"{space.name}{'-quick' if args.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume and not args.name:
        raise SpaceError("--resume: needs --name of the experiment to continue")
    return space, resources, name


def wandb_settings(space, args) -> dict | None:
    settings = dict(space.wandb)
    if not (args.wandb or settings.pop("enabled", False)):
        return None
    if args.wandb_mode:
        settings["mode"] = args.wandb_mode
    settings.setdefault("group", space.name)
    return settings


def resume_command(args, name: str) -> str:
    argv = ["python", "-m", "tune_looped.run", "--space", args.space, "--name", name, "--storage", args.storage,
            "--resume"] + (["--quick"] if args.quick else []) + (["--address", args.address] if args.address else [])
    return shlex.join(argv)


def build_tuner(space, resources, name, storage, args, experiment_dir: Path):
    from ray import tune

    from trainers.trainable import run_trial

    # evaluation runs every eval_every_steps, not on every logged row; Tune must accept rows without it
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    from tune_looped.tune_space import make_scheduler, param_space

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=space.base, wandb_settings=wandb_settings(space, args)),
        resources=resources,
    )
    if args.resume:
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
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        space, resources, name = resolve(args)
        if args.dry_run:
            print_trial_table(space)
            return 0
        storage = check_storage(args.storage)
        experiment_dir = Path(storage) / name
        if args.resume and not (experiment_dir / SPACE_RECORD).exists():
            raise SpaceError(f"--resume: no experiment at {experiment_dir}")
        if not args.resume and experiment_dir.exists():
            raise SpaceError(f"--name {name}: {experiment_dir} exists; add --resume or choose another name")
    except SpaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import ray

    if space.secrets.get("wandb.key") and wandb_settings(space, args):
        # workers inherit the driver's environment: the key never travels in a config or runtime_env
        os.environ.setdefault("WANDB_API_KEY", space.secrets["wandb.key"])
    start_ray(args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus, dashboard_host=args.dashboard_host)
    try:
        warn_if_local_storage_on_cluster(storage)
        tuner = build_tuner(space, resources, name, storage, args, experiment_dir)
        if not args.resume:
            experiment_dir.mkdir(parents=True, exist_ok=True)
            (experiment_dir / SPACE_RECORD).write_text(yaml.safe_dump(space_record(space, args.quick), sort_keys=False))
        results = tuner.fit()
    finally:
        ray.shutdown()
    rows = summarise(results, space)
    print_summary(rows, experiment_dir)
    if any(r["status"] not in ("finished", "diverged", "error") for r in rows):
        print(f"interrupted; resume with:\n  {resume_command(args, name)}", file=sys.stderr)
        return 130
    if not args.no_report:
        from analysis import run_all

        written = run_all(experiment_dir)
        plots = written.pop("plots")
        for label, path in written.items():
            print(f"{label}: {path}")
        print(f"plots: {len(plots)} figures in {plots[0].parent if plots else experiment_dir}")
    return 1 if any(r["status"] == "error" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
