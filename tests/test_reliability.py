"""Real faults a long sweep meets on a shared machine, injected into real sweeps on an embedded Ray: the driver
interrupted (SIGINT, SIGTERM, SIGKILL) and resumed, a diverging trial, 64 trials on 2 CPUs. Trials are tiny.

The tables of docs/RELIABILITY.md are rendered from FAULTS here and CASES in test_bad_input.py, and a test checks
that the file holds exactly that rendering; `python tests/test_reliability.py` prints it.
"""
import contextlib
import json
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis import load_curves, load_summary
from helpers.disk import fill, small_disk
from helpers.sweeps import (REPO, TIMING_COLUMNS, TINY_BASE, alive, auth_token, descendants, finish, finished_trials,
                    forked_sweep, process_name, processes_naming, ray_session_of, rss_mib, rows, run_printed,
                    start_sweep, sweep_command, trial_dirs, trial_workers, wait_for, write_space)
from test_bad_input import CASES, render_bad_input, snapshot
from trainers.checkpoint import load_checkpoint
from trainers.config import apply_overrides
from trainers.layout import newest_state, runner_folder, staging_folder, state_files
from trainers.models import build_model
from trainers.records import variant_label
from tune_looped.state import named_checkpoints

# Ray's two agents outlive a SIGKILLed driver by a minute or two (they notice the raylet is gone, then wait on
# the dead GCS before exiting) unless the next run ends them; the trials' workers must go at once
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


@dataclass(frozen=True)
class Fault:
    name: str
    injected: str
    checked: str
    test: str


LOAD_TRIALS = 64  # enough for a leak of a few MiB a trial to show between the first quarter and the last

FAULTS = [
    Fault("worker killed", "SIGKILL (`os.kill`) of a running trial's process once its second checkpoint is logged "
          "(the first is then registered), held (SIGSTOP) where it was seen until the kill, well before its last of "
          "200 steps",
          "retried from its last checkpoint, exit 0; every logged step exactly once in `load_curves`; final "
          "parameters and `eval/loss` bit-identical to the same trial without the fault",
          "`test_runner.py::test_killed_worker_is_retried_from_its_checkpoint`"),
    Fault("driver interrupted", "SIGINT or SIGKILL of the runner once one trial has finished and Tune has taken a "
          "checkpoint of the next (its second, for SIGINT), and SIGTERM of the rebuild after the SIGKILL once its "
          "first trial has finished and Tune has taken a checkpoint of its last, each once Tune's saved state has "
          "both, the running trial held (SIGSTOP) from then until released with the signal; 3 trials of 300 steps, "
          "one at a time",
          "SIGINT and SIGTERM: exit 130, Ray shut down, and the printed resume command, its arguments run; SIGKILL: "
          "the trials' workers die with it, and the next run ends the rest of its Ray session (no process of it "
          "remains); then `--resume` exits 0, the finished trials' files are untouched (not re-run), and the curves "
          "and summary frames, less timing columns, equal an uninterrupted sweep's; the dashboard answers with the "
          "token and refuses without it",
          "SIGINT: `test_reliability.py::test_one_runner_and_a_resume_past_a_damaged_state_and_checkpoint`; SIGKILL, "
          "then SIGTERM: `test_reliability.py::test_a_damaged_state_without_a_copy_is_refused_then_rebuilt_and_a_"
          "terminated_rebuild_resumes`"),
    Fault("driver killed before Tune saved its state", "an experiment folder without Tune's state files",
          "`--resume` says there is nothing to resume: one line, exit 2", "`test_bad_input.py`, `resume-no-state`"),
    Fault("two runners", "a second runner, and a `--resume`, of an experiment while its runner runs; a lock whose "
          "holder's pid is gone (SIGKILL); one of another host whose clock is an hour behind, beating, and one whose "
          "clock is an hour ahead or behind, silent; one cut short, its file time 120 s old or an hour ahead; one "
          "released, or completed, while watched",
          "the second and the resume refused with one line naming the holder's pid, host and command, exit 2, the "
          "first runs on; a lock of a holder that is gone taken over with a warning (on another host, or unreadable, "
          "only after the lock was unchanged for the whole watch, by the watcher's clock); the beating holder keeps "
          "its lock; `upgrade` refused likewise",
          "`test_reliability.py::test_one_runner_and_a_resume_past_a_damaged_state_and_checkpoint`, "
          "`test_lock.py`, `test_trials.py::test_upgrade_waits_for_no_runner_and_skips_the_runners_folder`"),
    Fault("another local Ray", "a socket listening on Ray's fixed port for the dashboard agent (52365), as another "
          "runner's or a notebook's Ray holds it, while the runner's Ray starts",
          "the runner's agent listens on a free port and answers there; no bind retries in its log",
          "`test_cluster.py::test_the_dashboard_agent_takes_a_free_port_when_another_local_ray_holds_ray_s_own`"),
    Fault("damaged state and checkpoint", "after SIGINT, the newest `experiment_state-*.json` and every "
          "`checkpoint.pt` of the running trial but its first each cut to half its size",
          "`--resume` puts the runner's copy of the state back (one warning line) and the trial falls back to its "
          "first checkpoint (a line of its log for each damaged one it tried); exit 0, the finished trial untouched, "
          "the curves and summary equal an uninterrupted sweep's",
          "`test_reliability.py::test_one_runner_and_a_resume_past_a_damaged_state_and_checkpoint`"),
    Fault("damaged state, no copy", "after SIGKILL, the newest state file cut to half and the runner's copy deleted",
          "`--resume` refused with one line naming the file, exit 2, the folder byte for byte as it was; then "
          "`--resume --rebuild-state` keeps the finished trial's folder untouched, sets the other aside, runs the 2 "
          "remaining trials from step 0 (terminated, above, and resumed: exit 0), curves and summary equal an "
          "uninterrupted sweep's",
          "`test_reliability.py::test_a_damaged_state_without_a_copy_is_refused_then_rebuilt_and_a_terminated_"
          "rebuild_resumes`, `resume-state-damaged`"),
    Fault("damaged state beside an extension", "a first run with an errored trial (`--max-failures 0`) and its "
          "analysis, a finished `--extend --seeds 1`, a `wandb/` folder; the first run's newest state file cut to half",
          "`--resume` puts the copy back and sets nothing aside: `extend-1/`, `plots/`, `wandb/`, REPORT.md and the "
          "finished trials' files untouched; only the errored trial runs again, nothing missing; exit 1 (it fails "
          "again)",
          "`test_repair.py`, `test_state.py::test_the_repair_sets_aside_only_trial_folders_of_its_run_that_the_state_"
          "does_not_know`"),
    Fault("damaged files", "checkpoints cut short, emptied, with a flipped byte or an empty checksum; a restored "
          "checkpoint damaged and the one before it missing; state files and pickles cut short, a copy's save "
          "under way; a trial restarted from step 0",
          "each refused with one line; the trainable takes the newest checkpoint that loads, else step 0; the "
          "keeper copies only one save's whole pair; one curve row per step",
          "`test_checkpoint.py`, `test_trainable.py`, `test_state.py`, "
          "`test_analysis_frames.py::test_a_trial_restarted_from_step_0_has_one_history`"),
    Fault("disk full", "the storage on a 230 MiB tmpfs the test mounts (as root; skipped otherwise), filled while "
          "the running trial is held (SIGSTOP) at its second checkpoint, once the runner keeps a copy of Tune's "
          "state; then enlarged to 600 MiB with `mount -o remount`",
          "exit 1: one `error: disk full:` line naming the filesystem, its free space and the 200 MiB needed, the "
          "summary so far and the resume command; the resume, its printed arguments, exits 0 with every trial "
          "finished and every logged step once",
          "`test_reliability.py::test_a_full_disk_is_one_line_and_the_resume_completes`"),
    Fault("second Ctrl-C", "two SIGINTs 0.2 s apart to the runner's process group once a trial has reported, on an "
          "experiment whose name starts with - and holds a space",
          "exit 130, one warning line, no traceback, the summary and the resume command; the resume, as printed, "
          "exits 0 with every trial finished",
          "`test_stops.py::test_two_ctrl_c_end_the_runner_with_its_summary_and_the_resume_command`"),
    Fault("disk full in the analysis", "the storage on a tmpfs filled once the trials ended (the sweep's analysis), "
          "or before `python -m analysis all` reruns",
          "exit 1: one `error: disk full:` line naming the filesystem, the trials and the earlier outputs byte for "
          "byte as they were, then the command that redoes the analysis; as printed, it exits 0",
          "`test_stops.py` (the two full-disk tests)"),
    Fault("trials not asked for", "results of a bare trial (no hypotheses, no values), a trial run twice, a trial "
          "missing", "each a line of the runner's summary (not asked for, missing); the runner exits 1 and writes "
          "no report", "`test_summary.py`"),
    Fault("divergence", "`training.learning_rate` 1e30 beside 1e-3 in one grid, both starting from a relative "
          "`model.pretrained_path`: Adam's first step moves the weights by about 1e30, so the loss at step 1 "
          "overflows float32 on any CPU",
          "the diverging trial stops at step 1, its first non-finite loss, is not retried, and shows as diverged with "
          "its step in the runner's summary, `summary.parquet` and `REPORT.md`; the other finishes; exit 0",
          "`test_reliability.py::test_diverging_trial_is_stopped_and_reported`"),
    Fault("load", f"{LOAD_TRIALS} trials of 10 steps on 2 CPUs",
          f"all {LOAD_TRIALS} complete with every logged step; the driver's resident memory (VmRSS, sampled every "
          f"0.1 s) while the last {LOAD_TRIALS // 4} trials run is at most 25% above that once the first "
          f"{LOAD_TRIALS // 4} have started",
          "`test_reliability.py::test_many_trials_keep_the_driver_memory_flat`"),
    Fault("storage", "a path under a regular file, a missing parent folder, `/proc` (unwritable even for root), a "
          "full disk (the runner's free-space threshold raised above what is free)",
          "one line, exit 2, nothing written, Ray not started",
          "`test_bad_input.py`, `storage-*`"),
    Fault("untrusted pickles", "a `.pt` whose `__reduce__` would run code, given to the checkpoint loader, "
          "`load_research_checkpoint`, the analysis, the single run and the runner",
          "refused (weights_only); the code did not run",
          "`test_bad_input.py::test_code_pickles_are_refused_by_every_loader`, `pretrained-code`, `run-pretrained-code`"),
    Fault("bad input", f"{len(CASES)} cases below", "one `error:` line naming the file, key or flag; exit 2; no "
          "traceback; nothing written; no Ray session", "`test_bad_input.py`"),
]


def render_reliability() -> str:
    lines = ["| fault | injected | checked | test |", "|---|---|---|---|"]
    lines += [f"| {f.name} | {f.injected} | {f.checked} | {f.test} |" for f in FAULTS]
    return "\n".join(lines) + "\n\n" + render_bad_input()


def test_docs_hold_the_rendered_tables():
    docs = (REPO / "docs" / "RELIABILITY.md").read_text()
    assert render_reliability() in docs, "docs/RELIABILITY.md's tables are stale: `python tests/test_reliability.py`"


def comparable_frames(experiment_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """curves and summary without what differs between two runs of the same trials (ids, wall-clock, node)."""
    def strip(frame):
        frame = frame.drop(columns=["trial_id", *TIMING_COLUMNS], errors="ignore")
        keys = [c for c in ("training.seed", "step") if c in frame]
        return frame[sorted(frame.columns)].sort_values(keys).reset_index(drop=True)
    return strip(load_curves(experiment_dir)), strip(load_summary(experiment_dir))


# A running trial is held (SIGSTOP) at its checkpoint until Tune has saved that the trial before it finished, and
# released as the driver is signalled: what it has left, at least 200 steps (0.6 s on a CPU three times faster
# than 2 AVX2 cores), is the margin the driver's stop must reach it in.
INTERRUPT_BASE = apply_overrides(TINY_BASE, {"training.train_steps": 300, "training.save_every_steps": 50,
                                             "training.eval_every_steps": 100, "wandb.log_every_steps": 50})
INTERRUPT_LAST = 299
INTERRUPT_LOGGED = list(range(0, INTERRUPT_LAST + 1, 50)) + [INTERRUPT_LAST]


def interrupt_space(folder: Path) -> Path:
    return write_space(folder / "space.yaml", [{"name": "i", "grid": {"training.seed": [0, 1, 2]}}], INTERRUPT_BASE,
                       resources={"cpu": 1}, max_concurrent=1)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, commands):
    folder = tmp_path_factory.mktemp("uninterrupted")
    done = forked_sweep(commands, folder, interrupt_space(folder))
    assert done.returncode == 0, done.stderr
    curves, summary = comparable_frames(folder / "r" / "s")
    assert all(group["step"].tolist() == INTERRUPT_LOGGED for _, group in curves.groupby("training.seed"))
    return curves, summary


def assert_as_uninterrupted(experiment_dir: Path, uninterrupted) -> None:
    """Every logged step once, every number as the uninterrupted sweep's."""
    curves, summary = comparable_frames(experiment_dir)
    pd.testing.assert_frame_equal(curves, uninterrupted[0], check_exact=True)
    pd.testing.assert_frame_equal(summary, uninterrupted[1], check_exact=True)


def saved_state(experiment_dir: Path) -> tuple[list[str], set[Path]]:
    """Tune's last saved experiment state, what a resume starts from: its trials' statuses and the checkpoints it
    names (relative to the experiment folder); nothing while there is none, or while it is being copied into place."""
    state = newest_state(experiment_dir)
    if state is None:
        return [], set()
    data = state.read_bytes()
    try:
        trials = json.loads(data)["trial_data"]
    except json.JSONDecodeError:
        return [], set()
    return [json.loads(trial)["status"] for trial, _ in trials], named_checkpoints(data)


def staged_trial(worker: int, trial: Path) -> Path | None:
    """Tune's own folder of the trial's driver-side files, in the Ray session the worker works in; None until Tune
    has made it. Tune writes a row into its result.json as it takes the result; the trial's folder gets a copy at
    Tune's next save, a second or more later."""
    cwd = Path(os.readlink(f"/proc/{worker}/cwd"))
    session = next((folder for folder in cwd.parents if folder.name.startswith("session_")), None)
    staging = staging_folder(session, trial.parent.name) if session is not None else None
    return staging / trial.name if staging is not None else None


def taken_checkpoints(staged: Path) -> list[str]:
    """The checkpoints Tune has taken from the trial's reports, oldest first: it registers each as it writes the
    row that names it, and lets the trial report again only after that. A checkpoint's folder exists earlier, from
    before the report reaches Tune."""
    return [row["checkpoint_dir_name"] for row in rows(staged) if row.get("checkpoint_dir_name")]


def hold_trial(sweep_pid: int, experiment_dir: Path, checkpoints: int,
               ended=()) -> tuple[int, Path, str] | None:
    """Hold (SIGSTOP) the worker running a trial, not among `ended`, of which Tune has taken `checkpoints`
    checkpoints: (its pid, the trial's folder, the last of those checkpoints), or None while there is no such
    trial or its worker is not seen yet."""
    workers = {folder: pid for pid, folder in trial_workers(sweep_pid).items()}
    for trial in trial_dirs(experiment_dir):
        if trial in ended or trial.name not in workers:
            continue
        try:
            staged = staged_trial(workers[trial.name], trial)
        except OSError:  # the worker has just ended
            continue
        taken = taken_checkpoints(staged) if staged is not None else []
        if len(taken) >= checkpoints:
            os.kill(workers[trial.name], signal.SIGSTOP)
            return workers[trial.name], trial, taken[checkpoints - 1]
    return None


class Interruptible:
    """The moment to interrupt a sweep of `interrupt_space`: `finished` trials have finished, Tune has taken
    `checkpoints` checkpoints of the next, and its saved state has both. The next is held (SIGSTOP) from then, so
    that Tune's save, every second in these runs (`TUNE_GLOBAL_CHECKPOINT_S`), comes before it ends on any CPU.
    Held as soon as its checkpoint's folder was seen instead, it could be held, and the driver signalled, before
    Tune took that checkpoint: the resume then started it from an older one (seen once in a `.ci/run`)."""

    def __init__(self, sweep: subprocess.Popen, experiment_dir: Path, checkpoints: int = 1, finished: int = 1):
        self.sweep, self.experiment_dir, self.checkpoints, self.finished = sweep, experiment_dir, checkpoints, finished
        self.held: int | None = None
        self.trial: Path | None = None
        self.checkpoint: str | None = None

    def wait(self) -> tuple[Path, Path]:
        """(finished trial, held trial), polled often: the hold lands soon after the checkpoints, with most of the
        trial's steps left."""
        return wait_for(self._reached, 240, every=0.05)

    def _reached(self):
        done = finished_trials(self.experiment_dir, INTERRUPT_LAST)
        if self.trial in done:  # held after its last report, before the driver wrote it: it has ended
            os.kill(self.held, signal.SIGCONT)
            self.held = self.trial = self.checkpoint = None
        if len(done) < self.finished:
            return None
        if self.held is None:
            found = hold_trial(self.sweep.pid, self.experiment_dir, self.checkpoints, done)
            if found is None:
                return None
            self.held, self.trial, self.checkpoint = found
        statuses, named = saved_state(self.experiment_dir)
        saved = [path.name for path in named if path.parent.name == self.trial.name]
        return (done[0], self.trial) if "TERMINATED" in statuses and any(name >= self.checkpoint for name in saved) \
            else None

    def signal(self, signum: int) -> None:
        """The driver signalled, the held trial released: the stop reaches it with most of its steps left."""
        os.kill(self.sweep.pid, signum)
        with contextlib.suppress(ProcessLookupError):  # a SIGKILLed driver's trial may be gone already
            os.kill(self.held, signal.SIGCONT)


@pytest.fixture
def save_state_often(monkeypatch):
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")


def files_of(trial_dir: Path) -> dict:
    return {str(p.relative_to(trial_dir)): p.read_bytes() for p in sorted(trial_dir.rglob("*")) if p.is_file()}


def check_dashboard(err_file: Path) -> None:
    url = wait_for(lambda: re.search(r"Ray dashboard: (http://\S+)", err_file.read_text()), 90).group(1)
    request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {auth_token()}"})
    assert json.loads(urllib.request.urlopen(request, timeout=10).read())["ray_version"]
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(urllib.request.Request(f"{url}/api/version"), timeout=10)


def stopped_gracefully(sweep: subprocess.Popen, tmp_path: Path, processes) -> list[str]:
    """After SIGINT or SIGTERM: exit 130, Ray shut down, and the resume command the runner printed."""
    out, err = finish(sweep, tmp_path, timeout=120)
    assert sweep.returncode == 130, err
    wait_for(lambda: not alive(processes), 30)
    command = shlex.split(err.split("resume with:")[1].strip().splitlines()[0])
    assert command[-3:] == ["--name", "s", "--resume"] and "--no-report" in command
    return command


def restarts(trial_dir: Path) -> list[int]:
    """The steps at which the trial continued from a checkpoint (its first row after a restore)."""
    return [r["step"] for r in rows(trial_dir) if r["iterations_since_restore"] == 1 and r["training_iteration"] > 1]


def refused_runner(commands, tmp_path: Path, space: Path, *extra) -> subprocess.CompletedProcess:
    """A runner that is refused before it starts Ray, forked from the command server (no imports to wait for)."""
    return forked_sweep(commands, tmp_path, space, *extra, timeout=120)


def truncate(file: Path) -> int:
    """Cut `file` to half its size, as a copy a full disk or a kill stopped; the size it had."""
    size = file.stat().st_size
    file.write_bytes(file.read_bytes()[: size // 2])
    return size


def trial_log(out: str) -> list[str]:
    """The trials' own lines, as the driver echoes them (`(run_trial pid=N) ...`), without the prefix."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    return [line.split(") ", 1)[1] for line in plain.splitlines() if line.startswith("(run_trial pid=")]


@pytest.mark.slow
@pytest.mark.usefixtures("save_state_often")
def test_one_runner_and_a_resume_past_a_damaged_state_and_checkpoint(tmp_path, uninterrupted, commands):
    """Also the driver interrupted by SIGINT: the dashboard's token, Ray shut down, the printed resume command."""
    space = interrupt_space(tmp_path)
    sweep = start_sweep(tmp_path, space, dashboard=True, commands=commands)
    experiment = tmp_path / "r" / "s"
    check_dashboard(tmp_path / "s.err")
    wait_for(lambda: state_files(experiment), 120)
    for extra in ((), ("--resume",)):
        refused = refused_runner(commands, tmp_path, space, *extra)
        assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
        assert refused.stderr.startswith(f"error: {experiment / '.tune_looped' / 'lock'}: the experiment is in use "
                                         f"by pid {sweep.pid} on {socket.gethostname()} (python -m tune_looped.run")
    assert sweep.poll() is None, "the first runner stopped"
    moment = Interruptible(sweep, experiment, checkpoints=2)
    done, running = moment.wait()
    processes = descendants(sweep.pid)
    session = ray_session_of(processes)
    moment.signal(signal.SIGINT)
    resume = stopped_gracefully(sweep, tmp_path, processes)
    done_files = files_of(done)
    state = newest_state(experiment)
    truncate(state)
    # all but the first: the checkpoint Tune's saved state names may be older than the newest, which the trial
    # wrote as the stop reached it
    damaged = [folder for folder in sorted(running.glob("checkpoint_*"))[1:] if (folder / "checkpoint.pt").exists()]
    for folder in damaged:
        truncate(folder / "checkpoint.pt")
    resumed = run_printed(commands, resume, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not processes_naming(session), "a process of the interrupted runner's Ray remains"
    restored = [line for line in resumed.stderr.splitlines() if "restored the copy" in line]
    assert len(restored) == 1 and restored[0].startswith(f"warning: {state} was cut short or not JSON ("), restored
    log = trial_log(resumed.stdout)
    assert damaged and all(any(line.startswith(f"checkpoint {folder} does not load (damaged checkpoint: ") and
                               line.endswith("; trying the one before it") for line in log) for folder in damaged), log
    print(f"\nSIGINT, damaged state and checkpoint: {restored[0]}\n"
          f"{next(line for line in log if 'does not load' in line)}")
    assert restarts(running), "the running trial did not continue from a checkpoint"
    assert "3 finished" in resumed.stdout and files_of(done) == done_files
    # the fallback trained again from the checkpoint before: the same numbers, every logged step once
    assert_as_uninterrupted(experiment, uninterrupted)


@pytest.mark.slow
@pytest.mark.usefixtures("save_state_often")
def test_a_damaged_state_without_a_copy_is_refused_then_rebuilt_and_a_terminated_rebuild_resumes(tmp_path,
                                                                                                uninterrupted,
                                                                                                commands):
    """Also the driver killed (SIGKILL): its trials' workers die with it, and the next run ends the rest of its Ray
    session. Then the driver terminated (SIGTERM): the rebuild, once its first trial has finished and its last has
    a checkpoint; its resume ends the rebuild's Ray too."""
    space = interrupt_space(tmp_path)
    sweep = start_sweep(tmp_path, space, commands=commands)
    experiment = tmp_path / "r" / "s"
    moment = Interruptible(sweep, experiment)
    done, running = moment.wait()
    processes = descendants(sweep.pid)
    session = ray_session_of(processes)
    moment.signal(signal.SIGKILL)
    finish(sweep, tmp_path, timeout=60)
    rebuild = None
    try:
        assert sweep.returncode == -signal.SIGKILL
        # the workers must not go on writing into the experiment the resume is about to continue
        wait_for(lambda: all(process_name(p).startswith(RAY_AGENTS) for p in alive(processes)), 30)
        state = newest_state(experiment)
        size = truncate(state)
        # a runner of an earlier version kept no copy
        for copy in state_files(runner_folder(experiment)):
            copy.unlink()
        before, done_files = snapshot(experiment), files_of(done)
        refused = refused_runner(commands, tmp_path, space, "--resume")
        assert refused.returncode == 2 and refused.stderr.splitlines() == [
            f"error: --resume: {state} is cut short or not JSON ({size // 2} bytes), and no good copy was kept, so "
            "Tune cannot restore the experiment (it would start a new one in its place); the folder is left as it "
            "is; --resume --rebuild-state runs the trials that did not end, from the trial folders"]
        assert snapshot(experiment) == before, "the refused resume changed the experiment"
        # its output replaces the killed runner's, which finish() above has read
        rebuild = start_sweep(tmp_path, space, "--resume", "--rebuild-state", commands=commands)
        rebuilt = Interruptible(rebuild, experiment, finished=2)
        _, last = rebuilt.wait()
        lingering = alive(processes)
        rebuild_processes = descendants(rebuild.pid)
        rebuild_session = ray_session_of(rebuild_processes)
        rebuilt.signal(signal.SIGTERM)
        resume = stopped_gracefully(rebuild, tmp_path, rebuild_processes)
    finally:
        for pid in alive(processes):
            os.kill(pid, signal.SIGKILL)
        if rebuild is not None and rebuild.poll() is None:  # a check above failed while it ran
            rebuild.kill()
    assert not lingering and not processes_naming(session), "a process of the killed runner's Ray remains"
    rebuilt_err = (tmp_path / "s.err").read_text()
    # the killed runner's lock: its pid is gone, so the rebuild took it over
    assert f"took over the lock of pid {sweep.pid} on {socket.gethostname()}" in rebuilt_err
    assert "--rebuild-state: kept 1 ended trial(s)" in rebuilt_err
    assert "running 2 trial(s) from step 0" in rebuilt_err
    aside = experiment / ".tune_looped" / "replaced"
    assert [p.name for p in aside.glob(f"*/{running.name}")] == [running.name] and not running.exists()
    ended = {folder: files_of(folder) for folder in finished_trials(experiment, INTERRUPT_LAST)}
    assert len(ended) == 2 and ended[done] == done_files
    resumed = run_printed(commands, resume, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not processes_naming(rebuild_session), "a process of the terminated rebuild's Ray remains"
    assert restarts(last), "the running trial did not continue from its checkpoint"
    print(f"\nSIGTERM: exit {rebuild.returncode}; the running trial's first row after the resume: step "
          f"{restarts(last)[0]}")
    assert "3 finished" in resumed.stdout
    assert all(files_of(folder) == files for folder, files in ended.items()), "a finished trial ran again"
    assert_as_uninterrupted(experiment, uninterrupted)


@pytest.mark.slow
@pytest.mark.usefixtures("save_state_often")
def test_a_full_disk_is_one_line_and_the_resume_completes(tmp_path, commands):
    with small_disk(tmp_path / "disk", "230m") as disk:
        base = apply_overrides(TINY_BASE, {"training.train_steps": 60, "training.save_every_steps": 10,
                                           "wandb.log_every_steps": 10})
        space = write_space(tmp_path / "space.yaml", [{"name": "d", "grid": {"training.seed": [0, 1]}}], base,
                            resources={"cpu": 1}, max_concurrent=1)
        command = sweep_command(space, disk, "s", "--max-failures", "0")
        sweep = commands.start(command[1:], tmp_path, tmp_path / "s.out", tmp_path / "s.err")
        experiment = disk / "s"
        # the running trial is held (SIGSTOP) at its second checkpoint until the runner keeps a good copy of Tune's
        # state and the disk is full: on a fast CPU both trials ended before the copy was made (3 runs in 8)
        held, _, _ = wait_for(lambda: hold_trial(sweep.pid, experiment, 2), 120, every=0.05)
        try:
            wait_for(lambda: state_files(runner_folder(experiment)), 120)
            fill(disk)
        finally:
            os.kill(held, signal.SIGCONT)
        out, err = finish(sweep, tmp_path, timeout=300)
        assert sweep.returncode == 1, err[-3000:]
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert errors == [f"error: disk full: the storage {disk} (the filesystem at {disk}): 0 MiB free; a sweep "
                          "needs at least 200 MiB free there for its checkpoints and results; free some space, then "
                          "resume with the command below"], errors
        assert f"results: {experiment}" in out
        resume = shlex.split(err.split("resume with:")[1].strip().splitlines()[0])
        assert resume[-3:] == ["--name", "s", "--resume"]
        assert subprocess.run(["mount", "-o", "remount,size=600m", str(disk)]).returncode == 0
        resumed = run_printed(commands, resume, tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "2 finished" in resumed.stdout
        warnings = [line for line in resumed.stderr.splitlines() if line.startswith("warning: ")]
        print(f"\ndisk full: {errors[0]}\nthe resume: {warnings}")
        logged = list(range(0, 60, 10)) + [59]
        curves = load_curves(experiment)
        assert all(group["step"].tolist() == logged for _, group in curves.groupby("training.seed"))


# Divergence by construction, not by a CPU's rounding or kernels. A learning rate of 10 kept the loss below 1e7 and
# met a nan in the backward pass of step 20 on an AMD EPYC (AVX2), from how some kernel treats extreme values, and
# none within 30 steps on an Intel CPU with AVX-512 and AMX. Adam's first step moves each weight by lr * g / (|g| +
# 1e-8), about lr whatever the gradient g once |g| is well above 1e-8; the step-0 gradients of the read-out's and the
# final LayerNorm's weights are 8e-4 and more (measured), and rounding changes them by a few parts in a million. So at
# step 1 those weights are about 1e30 and their products, about 1e60, overflow float32 (at most 3.4e38) to inf, or nan
# where infinities meet: the loss at step 1 is not finite on any IEEE CPU, whichever kernels it takes, while step 0 is
# the reference model's finite loss. Not larger: Adam's step size, lr / (1 - beta1), must itself fit float32, or torch
# raises an error.
DIVERGING_LR = 1e30


@pytest.mark.slow
def test_diverging_trial_is_stopped_and_reported(tmp_path, commands):
    torch.save({"model": build_model(TINY_BASE["model"]).state_dict()}, tmp_path / "ref.pt")
    base = apply_overrides(TINY_BASE, {"model.pretrained_path": "ref.pt"})  # relative: trials run elsewhere
    space = write_space(tmp_path / "space.yaml",
                        [{"name": "lr", "grid": {"training.learning_rate": [DIVERGING_LR, 1e-3]}}], base)
    done = forked_sweep(commands, tmp_path, space, report=True)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    experiment = tmp_path / "r" / "s"
    by_lr = {json.loads((t / "params.json").read_text())["variant"]["training.learning_rate"]: t
             for t in trial_dirs(experiment)}
    diverged, healthy = rows(by_lr[DIVERGING_LR]), rows(by_lr[1e-3])
    step = diverged[-1]["step"]
    assert [r["step"] for r in diverged] == [0, 1] and diverged[-1]["diverged"] is True, diverged
    assert math.isfinite(diverged[0]["overall_loss"]) and not math.isfinite(diverged[-1]["overall_loss"])
    assert healthy[-1]["step"] == 29
    assert not any(r.get("diverged") for r in diverged[:-1]), "stopped at the first non-finite loss"
    assert all(r["iterations_since_restore"] == r["training_iteration"] for r in diverged), "retried"
    assert not list(by_lr[DIVERGING_LR].glob("error.*"))
    assert "1 finished, 1 diverged" in out and f"at step {step} (loss not finite)" in out
    summary = load_summary(experiment).set_index("training.learning_rate")
    assert summary.loc[DIVERGING_LR, "status"] == "diverged" and summary.loc[DIVERGING_LR, "last_step"] == step
    assert summary.loc[1e-3, "status"] == "finished"
    report = (experiment / "REPORT.md").read_text()
    label = re.escape(variant_label({"training.learning_rate": DIVERGING_LR}))
    # the diverged trial is not ranked on the checkpoint it left; its status says where it stopped
    assert re.search(rf"\| – \| `{label}` \| 0 \|", report)
    assert re.search(rf"\| `{label}` \|.*\| 1 diverged at step {step} \|", report)
    state = load_checkpoint(sorted(by_lr[1e-3].glob("checkpoint_*"))[-1])
    assert state["config"]["model"]["pretrained_path"] == str(tmp_path / "ref.pt")
    print(f"\ndivergence: learning rate {DIVERGING_LR:g} stopped at step {step} of 30 (loss "
          f"{diverged[-1]['overall_loss']}); exit 0")


def trials_started(out_file: Path) -> int:
    """The trials whose first log line the driver has echoed: a count that keeps up with trials of a second, where
    the storage's copies of their results lag behind."""
    return sum(line.startswith("trial ") for line in trial_log(out_file.read_text()))


@pytest.mark.slow
def test_many_trials_keep_the_driver_memory_flat(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")  # each trial's first line echoed, not folded into its neighbours'
    base = apply_overrides(TINY_BASE, {"training.train_steps": 10, "training.save_every_steps": 10,
                                       "training.eval_every_steps": 10, "wandb.log_every_steps": 5})
    space = write_space(tmp_path / "space.yaml",
                        [{"name": "load", "grid": {"training.seed": list(range(LOAD_TRIALS))}}], base,
                        resources={"cpu": 1})
    started = time.monotonic()
    sweep = start_sweep(tmp_path, space, cpus=2)
    experiment = tmp_path / "r" / "s"
    samples = []  # (trials started, driver RSS in MiB)
    while sweep.poll() is None:
        rss = rss_mib(sweep.pid)
        if rss is not None:
            samples.append((trials_started(tmp_path / "s.out"), rss))
        time.sleep(0.1)
    out, err = finish(sweep, tmp_path)
    took = time.monotonic() - started
    assert sweep.returncode == 0, err
    assert f"{LOAD_TRIALS} finished" in out
    trials = trial_dirs(experiment)
    assert len(trials) == LOAD_TRIALS and all([r["step"] for r in rows(t)] == [0, 5, 9] for t in trials)
    early_window, late_window = memory_windows(samples, LOAD_TRIALS)
    early, late = max(rss for _, rss in early_window), max(rss for _, rss in late_window)
    peak = max(rss for _, rss in samples)
    quarter = LOAD_TRIALS // 4
    print(f"\nload: {LOAD_TRIALS} trials on 2 CPUs in {took:.0f} s; driver RSS {early:.0f} MiB after {quarter} "
          f"started, {late:.0f} MiB over the last {quarter}, peak {peak:.0f} MiB ({len(samples)} samples; windows "
          f"at {sorted({done for done, _ in early_window})} and {sorted({done for done, _ in late_window})} started)")
    assert late <= 1.25 * early


def memory_windows(samples, total: int):
    """(early, late) samples of (trials started, RSS): early once the first quarter of the `total` trials started
    (for 64: 16..23), late while the last quarter runs (48..63). A sampler that a busy machine held
    up past a whole window takes the sample nearest to it instead (the first at a quarter or more, the last before
    all `total`), so neither window is ever empty."""
    quarter = total // 4
    early = [s for s in samples if quarter <= s[0] < quarter + quarter // 2] or \
        [next(s for s in samples if s[0] >= quarter)]
    late = [s for s in samples if total - quarter <= s[0] < total] or [[s for s in samples if s[0] < total][-1]]
    return early, late


def test_memory_windows_are_never_empty():
    steady = [(done, 100.0 + done) for done in range(0, 65, 2)]
    assert memory_windows(steady, 64) == ([(16, 116.0), (18, 118.0), (20, 120.0), (22, 122.0)],
                                          [(done, 100.0 + done) for done in range(48, 64, 2)])
    assert memory_windows(steady, 40) == ([(10, 110.0), (12, 112.0), (14, 114.0)],
                                          [(done, 100.0 + done) for done in range(30, 40, 2)])
    # the sampler missed 16..23 and 48..63: counts jumped from 10 to 30 and from 40 to 64
    held_up = [(0, 90.0), (10, 100.0), (30, 101.0), (40, 102.0), (64, 103.0)]
    assert memory_windows(held_up, 64) == ([(30, 101.0)], [(40, 102.0)])


if __name__ == "__main__":
    print(render_reliability())
