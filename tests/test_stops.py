"""A sweep or an analysis that stops short, and what it prints to go on: two Ctrl-C end the runner with exit 130,
its summary and the resume command; a full disk during the analysis (the sweep's, or `python -m analysis`) is
one `error: disk full:` line naming the filesystem and the command that redoes the analysis; and every command
printed (the resume, `--rebuild-state`, the analysis, `wandb sync`) pastes into a shell, whatever the
experiment's name. The full disks are small tmpfs mounts (as root; skipped otherwise)."""
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.__main__ import main as analysis_main
from analysis.__main__ import parser as analysis_parser
from helpers.disk import fill, small_disk
from helpers.experiments import write_experiment
from helpers.sweeps import (TINY_BASE, finished_trials, rows, run_printed, sweep_command, trial_dirs, wait_for,
                            write_space)
from trainers.config import apply_overrides
from tune_looped.run import _resume_command, parse_args

# names that a shell or argparse would take apart: a leading dash reads as a flag, a space as two words
ODD_NAMES = ["-dash", "a b", "-a b", "it's"]
ANALYSED = ("curves.parquet", "summary.parquet", "evaluation.parquet", "REPORT.md")


def command_after(text: str, heading: str) -> list[str]:
    """The command printed on the line after `heading`, split as a shell would."""
    return shlex.split(text.split(heading, 1)[1].strip().splitlines()[0])


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- commands that paste ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ODD_NAMES)
def test_the_resume_commands_give_back_the_name(name):
    argv = ["--space", "my space.yaml", "--storage", "/data/r x", f"--name={name}", "--no-report", "--resume"]
    for extra in ((), ("--rebuild-state",)):
        words = shlex.split(_resume_command(argv, name, *extra))
        assert words[:3] == [sys.executable, "-m", "tune_looped.run"]
        args = parse_args(words[3:])
        assert (args.name, args.space, args.storage) == (name, "my space.yaml", "/data/r x")
        assert args.resume and args.no_report and args.rebuild_state == bool(extra)


@pytest.mark.parametrize("name", ODD_NAMES)
def test_the_analysis_command_gives_back_the_folder(tmp_path, monkeypatch, name):
    from tune_looped.sweep import analysis_command

    monkeypatch.chdir(tmp_path)
    for command in ("all", "wandb"):
        words = shlex.split(analysis_command(command, Path(name)))
        assert words[:3] == [sys.executable, "-m", "analysis"]
        args = analysis_parser().parse_args(words[3:])
        assert (args.command, args.experiment_dir) == (command, str(tmp_path / name))


def test_the_wandb_sync_line_pastes_into_a_shell(tmp_path, monkeypatch, capsys):
    from tune_looped.sweep import _print_wandb_sync

    experiment = tmp_path / "-a b"
    runs = [experiment / "wandb" / "offline-run-1-x", experiment / "trial 0" / "wandb" / "offline-run-2-y"]
    for run in runs:
        run.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    _print_wandb_sync(Path("-a b"))  # as given: relative, and a name a shell or wandb would take apart
    line = capsys.readouterr().out.split("upload them with:\n", 1)[1].strip()
    assert line.startswith("wandb sync ")
    # the line as a user pastes it, elsewhere, into a shell whose `wandb` prints the arguments it got
    shell = subprocess.run(["bash", "-c", f'wandb() {{ printf "%s\\n" "$@"; }}; {line}'], cwd="/",
                           capture_output=True, text=True, timeout=30)
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines() == ["sync", *map(str, runs)]


# --- a full disk during the analysis ---------------------------------------------------------------------------

def test_a_refused_write_is_told_as_disk_full_by_the_analysis_cli(tmp_path, monkeypatch, capsys):
    """Without root: a write that the disk refuses (ENOSPC raised where the analysis' writer writes)."""
    import errno

    import analysis.pipeline

    experiment = write_experiment(tmp_path / "-a b", with_model=False)
    argv = ["export", str(experiment), "--format", "csv"]
    assert analysis_main(argv) == 0
    before = contents(experiment)

    @contextlib.contextmanager
    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        yield

    monkeypatch.setattr(analysis.pipeline, "replacing", full)
    capsys.readouterr()
    assert analysis_main(argv) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert re.fullmatch(rf"error: disk full: the output folder {re.escape(str(experiment))} \(the filesystem at "
                        r"/[^)]*\): \d+ MiB free; the trials and the files written before are kept; free some space, "
                        r"then redo the analysis with the command below", lines[0]), lines
    assert lines[1] == "redo it with:" and len(lines) == 3 and out == ""
    assert shlex.split(lines[2]) == [sys.executable, "-m", "analysis", *argv]
    assert contents(experiment) == before


@pytest.mark.slow
def test_a_full_disk_in_python_m_analysis_is_one_line_and_the_redo_completes(tmp_path, commands):
    with small_disk(tmp_path / "disk", "16m") as disk:
        experiment = write_experiment(disk / "-a b")
        analyse = [sys.executable, "-m", "analysis", "all", str(experiment), "--n-prompts", "8"]
        first = commands.run(analyse[1:], cwd=tmp_path, timeout=300)
        assert first.returncode == 0, first.stderr
        before = contents(experiment)
        filler = fill(disk)
        started = time.monotonic()
        again = commands.run(analyse[1:], cwd=tmp_path, timeout=300)
        assert again.returncode == 1, again.stderr
        assert "Traceback" not in again.stderr, again.stderr[-3000:]
        errors = [line for line in again.stderr.splitlines() if line.startswith("error:")]
        assert errors == [f"error: disk full: the output folder {experiment} (the filesystem at {disk}): 0 MiB free; "
                          "the trials and the files written before are kept; free some space, then redo the analysis "
                          "with the command below"], again.stderr[-3000:]
        # the trials and the earlier outputs as they were, and no temporary file left behind
        assert contents(experiment) == before
        redo = command_after(again.stderr, "redo it with:")
        filler.unlink()
        redone = commands.run(redo[1:], cwd="/", timeout=300)
        assert redone.returncode == 0, redone.stderr
        assert all((experiment / name).stat().st_size > 0 for name in ANALYSED)
        print(f"\ndisk full in python -m analysis: {errors[0]}; told in {time.monotonic() - started:.1f} s")


@pytest.mark.slow
def test_a_full_disk_in_the_sweeps_analysis_is_one_line_and_the_redo_completes(tmp_path, monkeypatch, capsys,
                                                                                 commands):
    import analysis

    from tune_looped.run import main

    import ray

    analyse = analysis.run_all
    filled, ray_up = [], []

    def fill_then_analyse(*args, **kwargs):
        # the trials have ended and Ray is down (a worker's line of its stopping cannot reach the terminal during
        # the analysis): only the analysis meets the full disk
        ray_up.append(ray.is_initialized())
        filled.append(fill(disk))
        return analyse(*args, **kwargs)

    monkeypatch.setattr(analysis, "run_all", fill_then_analyse)
    space = write_space(tmp_path / "space.yaml", [{"name": "d", "grid": {"training.seed": [0, 1]}}],
                        resources={"cpu": 1})
    with small_disk(tmp_path / "disk", "230m") as disk:
        name = "-a b"
        rc = main(["--space", str(space), "--storage", str(disk), f"--name={name}", "--num-cpus", "1",
                   "--no-dashboard"])
        out, err = capsys.readouterr()
        experiment = disk / name
        assert rc == 1, err[-3000:]
        assert filled and ray_up == [False] and "Traceback" not in err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert errors == [f"error: disk full: the storage {disk} (the filesystem at {disk}): 0 MiB free; the trials "
                          "are kept, and the analysis' files written before; free some space, then redo the analysis "
                          "with the command below"], err[-3000:]
        assert "2 finished" in out and f"results: {experiment}" in out
        assert len(finished_trials(experiment, 29)) == 2 and all(len(rows(t)) == 7 for t in trial_dirs(experiment))
        redo = command_after(err, "redo the analysis with:")
        assert redo == [sys.executable, "-m", "analysis", "all", str(experiment)]
        filled[0].unlink()
        redone = commands.run(redo[1:], cwd="/", timeout=300)
        assert redone.returncode == 0, redone.stderr
        assert all((experiment / name).stat().st_size > 0 for name in ANALYSED)


# --- two Ctrl-C --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_ctrl_c_end_the_runner_with_its_summary_and_the_resume_command(tmp_path, commands):
    # the Ctrl-Cs land 0.2 s after the first trial's first row is seen: the sweep would have to train the rest of
    # that trial and all of the second, about 200 steps, before they do for nothing to be left incomplete
    base = apply_overrides(TINY_BASE, {"training.train_steps": 100, "training.save_every_steps": 25,
                                       "training.eval_every_steps": 50, "wandb.log_every_steps": 25})
    space = write_space(tmp_path / "space.yaml", [{"name": "i", "grid": {"training.seed": [0, 1]}}], base,
                        resources={"cpu": 1}, max_concurrent=1)
    name = "-a b"
    command = sweep_command(space, tmp_path / "r", "s")
    command[command.index("--name"):command.index("--name") + 2] = [f"--name={name}"]
    experiment = tmp_path / "r" / name
    # a session of its own, as a terminal gives a command: Ctrl-C signals the whole process group
    with open(tmp_path / "s.out", "w") as out, open(tmp_path / "s.err", "w") as err:
        sweep = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out,
                                 stderr=err, text=True, start_new_session=True)
    try:
        wait_for(lambda: any(rows(t) for t in trial_dirs(experiment)), 240, every=0.05)
        os.killpg(sweep.pid, signal.SIGINT)
        time.sleep(0.2)  # a second Ctrl-C, as a user gives it, a moment after the first
        os.killpg(sweep.pid, signal.SIGINT)
        stopping = time.monotonic()
        sweep.wait(timeout=120)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
    stopped = time.monotonic() - stopping
    out, err = (tmp_path / "s.out").read_text(), (tmp_path / "s.err").read_text()
    assert sweep.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert re.search(r"\b\d incomplete\b", out) and f"results: {experiment}" in out, out[-2000:]
    resume = command_after(err, "interrupted; resume with:")
    assert parse_args(resume[3:]).name == name
    # its printed arguments, forked: what two Ctrl-C leave must resume (test_study.py runs a printed resume in a
    # fresh interpreter)
    resumed = run_printed(commands, resume, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 finished" in resumed.stdout
    assert len(finished_trials(experiment, 99)) == 2
    print(f"\ntwo Ctrl-C 0.2 s apart: exit {sweep.returncode} {stopped:.1f} s after the second")
