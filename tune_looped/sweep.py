"""A sweep: every trial of a search space run with Ray Tune, summarised, then analysed.

`sweep` is one Tune run of the experiment and what the Python API (`tune_looped.rounds.run_space`) and
`python -m tune_looped.run` call, once or, for a sequential study, once a round. It validates the whole space before
Ray starts (`tune_looped.inputs`), runs on an embedded local Ray (or `address=` a cluster), retries crashed trials
from their last checkpoint, resumes interrupted sweeps, adds trials to one that ran (`extend=True`,
`tune_looped.extend`), prints a summary and ends with the analysis' frames, plots and report.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import tempfile
import threading
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from trainers.layout import FIRST_RUN, SPACE_RECORD, experiment_offline_runs
from trainers.records import ERROR, INCOMPLETE, write_space_record
from tune_looped import extend
from tune_looped.cluster import MIN_FREE_BYTES, full_filesystems, is_uri, start_ray, stop_ray, warn, \
    warn_if_local_storage_on_cluster
from tune_looped.inputs import (Options, Plan, Round, check_experiment, experiment_location, resolve,
                                resolve_gpu_share, wandb_settings)
from tune_looped.lock import ExperimentLock
from tune_looped.space import Space
from tune_looped.state import StateKeeper, apply_repair
from tune_looped.tables import print_summary, summarise

if TYPE_CHECKING:
    from ray.tune import ResultGrid

RUNNER_COMMAND = "python -m tune_looped.run"
# how a sweep that ran can fail (`SweepError.kind`)
INTERRUPTED, DISK_FULL, NOT_ASKED, MISSING, FAILED = "interrupted", "disk full", "not asked", "missing", "failed"
ANALYSIS_DISK_FULL = "disk full in the analysis"


class Sweep(NamedTuple):
    experiment_dir: Path
    results: ResultGrid  # of the last Tune run: the new trials of an extension, the restored ones of a resume


class SweepError(RuntimeError):
    """A sweep that ran but did not end with every trial asked for: interrupted, a full disk, trials that failed,
    or trials that are not those the space record asks for (`kind`); or whose trials ended but whose analysis met
    a full disk (`ANALYSIS_DISK_FULL`). The summary has been printed; `exit_status` is the command line's. An
    interrupted sweep, or one stopped by the disk, continues with `resume=True`; missing trials with
    `resume=True, rebuild_state=True`; the analysis with `analysis.run_all` (`analysis_command`)."""

    def __init__(self, kind: str, message: str, exit_status: int, sweep: Sweep):
        super().__init__(message)
        self.kind, self.exit_status, self.sweep = kind, exit_status, sweep


def sweep(args: Options, round: Round | None = None, then: Callable[[Path], bool] | None = None) -> Sweep:
    """One Tune run of checked options (or a sequential study's `round`), its summary and analysis.

    `then`: called with the experiment folder once the analysis is written and every trial ended well, the lock
    still held; when it returns True the report is written again (a sequential study's look, which it reports)."""
    space, resources, name, storage = resolve(args)
    experiment_dir = Path(storage) / name
    lock = ExperimentLock(experiment_location(storage, name), RUNNER_COMMAND)
    plan = check_experiment(args, space, name, storage, lock, round)
    created = not experiment_dir.exists()
    with _Signals() as signals:
        lock.acquire()
        try:
            for folder, repair in plan.repairs.items():
                for line in apply_repair(experiment_dir / folder, repair):
                    warn(line)
            return _run(args, plan, resources, name, storage, experiment_dir, signals, then)
        finally:
            lock.release()
            if created:
                # a sweep that failed before Tune wrote anything leaves no empty folder behind
                with contextlib.suppress(OSError):
                    experiment_dir.rmdir()


def analysis_command(command: str, experiment_dir: Path) -> str:
    """`python -m analysis COMMAND EXPERIMENT_DIR` as a line to paste into a shell."""
    return shlex.join([sys.executable, "-m", "analysis", command, str(Path(experiment_dir).absolute())])


def _print_wandb_sync(experiment_dir: Path) -> None:
    found = experiment_offline_runs(experiment_dir)
    if found:
        count = sum(len(runs) for runs in found.values())
        folder = shlex.quote(str(experiment_dir.absolute()))
        print(f"W&B: {count} offline runs; upload them with:\n  wandb sync "
              + " ".join(f"{folder}/{pattern}" for pattern in found))


class _Signals:
    """Ctrl-C (SIGINT) and SIGTERM (`kill PID`, a job scheduler) while a sweep runs, in the main thread.

    The first, while a Tune run listens, stops the sweep: Tune saves its state and stops the trials, then the
    summary and the resume command follow. Any later one is told in one line and waited out: Tune, left alone,
    lets a second Ctrl-C raise KeyboardInterrupt wherever the runner is (Tune's last save, Ray's shutdown), and the
    runner would die of it without the summary or the resume command. A signal before any has stopped a Tune run
    (Ray starting, the analysis) does what it did before the sweep. Tune catches only SIGINT, and once; it takes
    none here (TUNE_DISABLE_SIGINT_HANDLER) but is told through the handler it sets for SIGUSR1.
    """

    def __init__(self):
        self.received = 0
        self._previous: dict[int, Any] = {}
        self._before_tune: Any = None  # SIGUSR1's handler before the Tune run in progress, if any

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Give the signals back, before the sweep is over where it goes on to its analysis."""
        for signum, previous in self._previous.items():
            if previous is not None:  # None: a handler set outside Python, which cannot be put back from here
                signal.signal(signum, previous)
        self._previous = {}

    def fit(self, tuner):
        if not self._previous:
            return tuner.fit()
        for signum in self._previous:
            # again: ray.init puts a handler of its own in C under Python's for SIGTERM, which aborts the process
            signal.signal(signum, self._handle)
        self._before_tune = signal.getsignal(signal.SIGUSR1)
        disabled = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        try:
            return tuner.fit()
        finally:
            if disabled is None:
                del os.environ["TUNE_DISABLE_SIGINT_HANDLER"]
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = disabled
            if self._before_tune is not None:  # Tune leaves its handler behind, bound to this run
                signal.signal(signal.SIGUSR1, self._before_tune)
            self._before_tune = None

    def _tune(self):
        """Tune's own stop handler, once the Tune run in progress has set it."""
        if self._before_tune is None:
            return None
        handler = signal.getsignal(signal.SIGUSR1)
        return handler if callable(handler) and handler is not self._before_tune else None

    def _handle(self, signum, frame) -> None:
        tune = self._tune()
        if not self.received and tune is None:
            self._as_before(signum, frame)
            return
        self.received += 1
        if tune is not None:
            tune(signum, frame)  # sets Tune's stop event; again is harmless
        if self.received == 2:
            # os.write: a print here could land inside a print of the runner's own and fail as reentrant
            os.write(2, b"warning: already stopping: Tune saves its state and stops the trials, then the summary and "
                        b"the resume command follow (SIGKILL ends the runner at once, without them)\n")

    def _as_before(self, signum, frame) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def _build_tuner(space: Space, resources, name: str, storage: str, args: Options, restore: bool):
    """The Tuner of one Tune run of the experiment, the Tune experiment `name` in `storage`: restored, or new."""
    from ray import tune

    from tune_looped.trainable import run_trial

    # evaluation runs every eval_every_steps, not on every logged row; Tune must accept rows without it
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Tune's default output ignores a progress reporter; the classic one prints ours
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    from tune_looped.live import LiveTable
    from tune_looped.trials import TrialRecorder
    from tune_looped.tune_space import make_scheduler, param_space

    logging = wandb_settings(space, args)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=space.base, wandb_settings=logging,
                             results_dir=None if is_uri(storage) else str(Path(storage) / name),
                             verbose=args.verbose),
        resources=resources,
    )
    if restore:
        return tune.Tuner.restore(experiment_location(storage, name), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=param_space(space),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, scheduler=make_scheduler(space), num_samples=space.num_samples,
            max_concurrent_trials=args.max_concurrent or space.max_concurrent,
            # a worker runs one trial after another: a new process per trial cost 3-5 s of start-up and imports
            # on 2 cores (64 trials of 10 steps: 27 s in all, against about 260 s)
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, failure_config=tune.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2), progress_reporter=LiveTable(space), verbose=1,
            # on a URI storage the trials' offline W&B runs are in their working directories, which this uploads
            sync_config=tune.SyncConfig(sync_artifacts=bool(logging) and is_uri(storage)),
            # Tune keeps the run config in tuner.pkl, so a resumed sweep records its trials too
            callbacks=[TrialRecorder()],
        ),
    )


def _tune_runs(plan: Plan, name: str, storage: str):
    """(folder, Tune experiment name, the storage it is in, restore?, space) of each Tune run the plan makes, in
    order: the first run is the experiment `name` in `storage`, an extension `extend-N` inside the experiment."""
    inside = experiment_location(storage, name)
    for folder in plan.restore:
        tune_name, parent = (name, storage) if folder == FIRST_RUN else (folder, inside)
        yield folder, tune_name, parent, True, plan.space
    if plan.start == FIRST_RUN:
        yield FIRST_RUN, name, storage, False, plan.start_space
    elif plan.start is not None:
        yield plan.start, plan.start, inside, False, plan.start_space


def _run(args: Options, plan: Plan, resources: dict, name: str, storage: str, experiment_dir: Path,
         signals: _Signals, then: Callable[[Path], bool] | None) -> Sweep:
    """The sweep's Tune runs, its summary and its analysis, with the experiment's lock held."""
    space = plan.space
    if space.secrets.get("wandb.key") and wandb_settings(space, args):
        # workers inherit the driver's environment: the key never travels in a config or runtime_env
        os.environ.setdefault("WANDB_API_KEY", space.secrets["wandb.key"])
    context = start_ray(args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                        dashboard_host=args.dashboard_host if args.dashboard else None, verbose=args.verbose)
    session = Path(context.address_info["session_dir"])
    written_to = {"the storage": Path(storage), "the temporary folder": Path(tempfile.gettempdir()),
                  "Ray's folder": session.parent}
    failure, results, last, to_write, stopped = None, [], [], plan.write_record, True
    try:
        resources = resolve_gpu_share(space, resources)
        warn_if_local_storage_on_cluster(storage)
        if plan.rebuild is not None:
            aside = plan.rebuild.set_aside(experiment_dir)
            warn(f"--rebuild-state: kept {len(plan.rebuild.kept)} ended trial(s); set aside "
                 f"{len(plan.rebuild.replaced)} folder(s) and file(s) of the earlier Tune state in {aside}; running "
                 f"{len(plan.rebuild.remaining)} trial(s) from step 0")
        if plan.extension is not None:
            extend.set_aside_stale(plan.extension, experiment_dir)
        for folder, tune_name, tune_storage, restore, trials in _tune_runs(plan, name, storage):
            run_dir = experiment_dir / folder
            tuner = _build_tuner(trials, resources, tune_name, tune_storage, args, restore)
            # the record and the retags once the new run's Tuner was built (a Tune run refused at its start leaves
            # them as they were), or before the restores when there is no new run: earlier runs resume as recorded
            if to_write and (not restore or plan.start is None):
                experiment_dir.mkdir(parents=True, exist_ok=True)
                write_space_record(experiment_dir, plan.record)
                if plan.extension is not None:
                    extend.retag(plan.extension)
                    _announce(plan)
                to_write = False
            keeper = None if is_uri(storage) else StateKeeper(run_dir, session).start()
            try:
                last = signals.fit(tuner)
            except Exception as err:  # a full disk fails Tune on its own files: the error is told below
                failure, last = err, []
            finally:
                if keeper is not None:
                    keeper.stop()
            results += list(last)
            if failure is not None or any(row["status"] == INCOMPLETE for row in summarise(last, space)):
                break  # interrupted, or the disk: the runs after this one wait for the resume
        else:
            stopped = False
    finally:
        # a stopped sweep ends its Ray here, where a second Ctrl-C is waited out, even a Ray held for more rounds
        stop_ray(keep=not stopped)
    outcome = Sweep(experiment_dir, last)
    rows = summarise(results, space, None if is_uri(storage) else experiment_dir)
    full = full_filesystems(written_to) if failure or any(r["status"] == ERROR for r in rows) else []
    if failure is not None and not full:
        raise failure
    if full:
        print_summary(rows, experiment_dir)
        raise SweepError(DISK_FULL, f"disk full: {'; '.join(full)}; a sweep needs at least "
                         f"{MIN_FREE_BYTES // 2**20} MiB free there for its checkpoints and results; free some space, "
                         "then resume", 1, outcome)
    unasked, missing = print_summary(rows, experiment_dir, plan.record)
    if any(r["status"] == INCOMPLETE for r in rows):
        _print_wandb_sync(experiment_dir)
        raise SweepError(INTERRUPTED, "interrupted", 130, outcome)
    if unasked or missing:
        _print_wandb_sync(experiment_dir)
        # an analysis of other trials than those asked for would answer another question
        raise SweepError(MISSING if missing else NOT_ASKED,
                         f"the trials that ran are not those {SPACE_RECORD} asks for (above); no report is written", 1,
                         outcome)
    signals.release()
    if args.report:
        try:
            failed = any(r["status"] == ERROR for r in rows)
            _analyse(experiment_dir, wandb_settings(space, args), None if failed else then)
        except OSError as err:
            from analysis.pipeline import no_space

            told = no_space(err, experiment_dir, "the storage")
            full = full_filesystems(written_to) or ([told] if told else [])
            if not full:
                raise
            _print_wandb_sync(experiment_dir)
            raise SweepError(ANALYSIS_DISK_FULL, f"disk full: {'; '.join(full)}; the trials are kept, and the "
                             "analysis' files written before; free some space, then redo the analysis", 1,
                             outcome) from err
    _print_wandb_sync(experiment_dir)
    if any(r["status"] == ERROR for r in rows):
        raise SweepError(FAILED, "trials failed (above)", 1, outcome)
    return outcome


def _analyse(experiment_dir: Path, settings: dict | None, then: Callable[[Path], bool] | None = None) -> None:
    """The analysis' files, then, with W&B on, its answers in the experiment's W&B analysis run."""
    from analysis import log_results, report_experiment, run_all

    written = run_all(experiment_dir)
    if then is not None and then(experiment_dir):
        written["report"] = report_experiment(experiment_dir)
    plots = written.pop("plots")
    for label, path in written.items():
        print(f"{label}: {path}")
    print(f"plots: {len(plots)} figures in {plots[0].parent if plots else experiment_dir}")
    if settings is None:
        return
    try:
        offline = log_results(experiment_dir, settings)
    except Exception as err:  # the report is written: W&B failing (a server away) must not lose the sweep
        first_line = (str(err).splitlines() or [""])[0]
        warn(f"W&B: the analysis run was not logged ({type(err).__name__}: {first_line}); log it later with: "
             f"{analysis_command('wandb', experiment_dir)}")
        return
    print(f"W&B: the answers are in the analysis run{f' {offline}' if offline else ''}")


def _announce(plan: Plan) -> None:
    extension = plan.extension
    seeds = plan.record.seeds()
    print(f"--extend: {len(extension.added)} new trial(s) in {extension.folder}/"
          f"{f', {len(plan.restore)} earlier run(s) resumed' if plan.restore else ''}"
          f"{f', {len(extension.retagged)} trial record(s) given a new hypothesis or key' if extension.retagged else ''}"
          f"; seeds now {','.join(map(str, seeds)) or 'none'}", file=sys.stderr)
