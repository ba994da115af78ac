"""`python -m tune_looped.run --space hypotheses.yaml`: run every trial of a search space with Ray Tune.

Validates the whole space before Ray starts, runs on an embedded local Ray (or `--address` a cluster),
retries crashed trials from their last checkpoint, resumes interrupted sweeps (`--resume`), adds trials to a
finished one (`--extend`), prints a summary and ends with the analysis' frames, plots and report. The sweep
itself is `tune_looped.rounds.run_study`, which `tune_looped.run_space` calls too.
"""
from __future__ import annotations

import argparse
import shlex
import sys

from trainers.cli import OneLineArgumentParser, one_line_warnings
from trainers.records import configuration_key
from trainers.wandb_log import WANDB_MODES
from tune_looped.inputs import (DEFAULT_DASHBOARD_HOST, DEFAULT_MAX_FAILURES, DEFAULT_STORAGE, Options,
                                extension_trials, resolve, seeds_problem)
from tune_looped.cost import calibrate, cost, stated
from tune_looped.space import GPU_AUTO, Space, SpaceError, parse_set, start_order, trial_config
from tune_looped.sweep import (ANALYSIS_DISK_FULL, DISK_FULL, FAILED, INTERRUPTED, MISSING, SweepError,
                               analysis_command)
from tune_looped.tables import print_trial_table


def parse_args(argv):
    p = OneLineArgumentParser(prog="python -m tune_looped.run", description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help="space YAML: a path, or a name in the package's search_spaces/")
    p.add_argument("--quick", action="store_true", help="apply the space's quick: block (a CPU-sized study)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved trials in run order with their cost, and exit without Ray")
    p.add_argument("--calibrate", action="store_true",
                   help="with --dry-run: estimate the times from a few steps of the largest trial timed here")
    p.add_argument("--seeds", type=_seed_list, help="comma-separated seeds to run every configuration with "
                                                   "(default: the space's seeds); with --extend, seeds to add")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set a dotted config key in the base of every trial, e.g. training.train_steps=50 (repeatable)")
    p.add_argument("--address", help="join a running cluster: auto, HOST:PORT or ray://HOST:PORT")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="results root: a path or a URI (default %(default)s)")
    p.add_argument("--name", help="experiment name (default: <space>[-quick]-<date-time>)")
    p.add_argument("--resume", action="store_true", help="continue the experiment --name under --storage")
    p.add_argument("--rebuild-state", action="store_true",
                   help="with --resume: Tune's state aside, run the trials whose folders show they did not end")
    p.add_argument("--extend", action="store_true",
                   help="add the trials the experiment --name lacks (new seeds, grid values, hypotheses) and run "
                        "only those, after resuming its unfinished ones")
    p.add_argument("--until-decided", action="store_true",
                   help="run as a sequential study (also the space's decide.enabled): seeds in rounds to the "
                        "comparisons still open, until each is decided or the space's seed cap or budget is reached")
    p.add_argument("--cpus-per-trial", type=float, help="override the space's resources.cpu")
    p.add_argument("--gpus-per-trial", type=float, help="override the space's resources.gpu (0 < g <= 1)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("--max-failures", type=int, default=DEFAULT_MAX_FAILURES,
                   help="retries of a crashed trial (default %(default)s)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    p.add_argument("--num-gpus", type=float, help="GPUs of the embedded local Ray (default: all)")
    p.add_argument("--dashboard-host", default=DEFAULT_DASHBOARD_HOST,
                   help="dashboard bind address (default %(default)s)")
    p.add_argument("--no-dashboard", action="store_true",
                   help="start the embedded Ray without its dashboard (a few seconds less at each start)")
    p.add_argument("--wandb", action="store_true", help="log every trial to W&B (also: wandb.enabled in the space)")
    p.add_argument("--wandb-mode", choices=WANDB_MODES, help="default: online when a key is available")
    p.add_argument("--no-report", action="store_true", help="skip the analysis at the end")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own log lines here (its start-up, each checkpoint's, Tune's warnings), not in "
                        "the log file the run names")
    return p.parse_args(argv)


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = None
    # the command line's own words: the text as typed, not the list it became
    problem = seeds_problem(seeds, repr(text))
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return seeds


def options(args: argparse.Namespace) -> Options:
    """The flags as the sweep's options; `--set`'s texts read as dotted keys and values."""
    flags = {k: v for k, v in vars(args).items() if k not in ("set", "no_report", "no_dashboard", "calibrate")}
    return Options(**flags, overrides=parse_set(args.set), report=not args.no_report,
                   dashboard=not args.no_dashboard)


def _resume_command(argv: list[str], name: str, *extra: str) -> str:
    """The command line that continues this sweep: the same flags, with the experiment's --name and --resume
    (an interrupted extension resumes as any sweep does)."""
    kept, skip = [], False
    for token in argv:
        if skip or token in ("--resume", "--rebuild-state", "--dry-run", "--extend") or token.startswith("--name="):
            skip = False
            continue
        skip = token == "--name"
        if not skip:
            kept.append(token)
    # a name that starts with a dash, given apart from its flag, would read as a flag of its own
    named = [f"--name={name}"] if name.startswith("-") else ["--name", name]
    return shlex.join([sys.executable, "-m", "tune_looped.run", *kept, *named, "--resume", *extra])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    with one_line_warnings():
        return _main(args, argv)


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        if args.calibrate and not args.dry_run:
            raise SpaceError("--calibrate: only with --dry-run, whose time estimates it measures")
        if args.dry_run:
            space, resources, _, _ = resolve(options(args))
            _print_dry_run(space, resources, args)
            if resources["gpu"] == GPU_AUTO:
                print(f"{space.path}: resources.gpu: auto (resolved at start, from the GPUs Ray finds)",
                      file=sys.stderr)
            return 0
        # the analysis, which the rounds read, only for a run: a dry run stays light
        from tune_looped.rounds import run_study

        run_study(options(args))
    except SpaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SweepError as err:
        _tell(err, argv)
        return err.exit_status
    return 0


def _print_dry_run(space: Space, resources: dict, args: argparse.Namespace) -> None:
    if space.decide is not None:
        looks = space.decide.looks
        configurations = len({configuration_key(space.base, t.values) for t in space.trials})
        print(f"sequential study: looks at {', '.join(map(str, looks))} seeds a variant (seeds "
              f"{', '.join(map(str, space.decide.seeds))}); below, the first look's trials; at most "
              f"{configurations * looks[-1]} trials if no comparison is decided early", file=sys.stderr)
    if args.extend:
        space = extension_trials(options(args), space)
        if not space.trials:
            print("--extend: nothing to add (the unfinished trials of earlier runs, if any, are resumed)",
                  file=sys.stderr)
            return
    cpus = resources["cpu"]
    throughput = (calibrate(trial_config(space.base, start_order(space)[0].values), max(1, int(cpus)))
                  if args.calibrate else stated(args.quick))
    print_trial_table(space, cost(space, throughput, cpus, args.max_concurrent or space.max_concurrent,
                                  args.num_cpus), throughput)


def _tell(err: SweepError, argv: list[str]) -> None:
    """What failed, and the command line that continues the sweep."""
    name = err.sweep.experiment_dir.name
    if err.kind == INTERRUPTED:
        print(f"{err}; resume with:\n  {_resume_command(argv, name)}", file=sys.stderr)
    elif err.kind == DISK_FULL:
        print(f"error: {err} with the command below\nresume with:\n  {_resume_command(argv, name)}", file=sys.stderr)
    elif err.kind == ANALYSIS_DISK_FULL:
        print(f"error: {err} with the command below\nredo the analysis with:\n  "
              f"{analysis_command('all', err.sweep.experiment_dir)}", file=sys.stderr)
    elif err.kind != FAILED:
        print(err, file=sys.stderr)
        if err.kind == MISSING:
            print(f"run the missing ones with:\n  {_resume_command(argv, name, '--rebuild-state')}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
