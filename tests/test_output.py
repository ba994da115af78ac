"""What the runner shows a user: our warnings in one line each; a tiny real sweep's progress line, table, errors
and summary, with Ray's own lines (its start-up, each checkpoint's, Tune's repeated snapshot warning) in a log file
the run names, or on the terminal with --verbose; and TensorBoard's x-axis in training steps.

The dry run's storage check is a case of test_bad_input.py's table (`storage-dry-run`)."""
import importlib
import io
import logging
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.sweeps import REPO, TINY_BASE, rows, sweep_command, trial_dirs, write_space
from tune_looped import cluster

CHECKPOINT_LINE = "Checkpoint successfully created at"
SNAPSHOT_WARNING = "Experiment state snapshotting has been triggered multiple times"
RAY_STARTED = "Started a local Ray instance"
# a checkpoint every other step: Tune forces a snapshot every num_to_keep (2) checkpoints, many within 5 s
FAST_CHECKPOINTS = {**TINY_BASE, "training": {**TINY_BASE["training"], "train_steps": 40, "save_every_steps": 2}}


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def run_sweep(folder: Path, base: dict, *extra: str, dashboard: bool = True) -> subprocess.CompletedProcess:
    space = write_space(folder / "space.yaml", [{"name": "e", "grid": {"training.seed": [0]}}], base=base)
    # with the dashboard, as a user's runner starts: its lines are among those the terminal must not show
    return subprocess.run(sweep_command(space, folder / "r", "s", *extra, dashboard=dashboard), cwd=folder,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def tensorboard_steps(trial: Path, tag: str) -> list[int]:
    """The global steps of `tag`'s scalars in the trial's TensorBoard event file, read record by record (TFRecord
    framing: a length, its CRC, the event, its CRC); tensorboard's own reader is not installed."""
    from tensorboardX.proto.event_pb2 import Event

    [events] = trial.glob("events.out.tfevents.*")
    data, at, steps = events.read_bytes(), 0, []
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = Event.FromString(data[at + 12:at + 12 + length])
        at += 12 + length + 4
        steps += [event.step for value in event.summary.value if value.tag == tag]
    return steps


@pytest.fixture(scope="module")
def quiet_sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quiet")
    done = run_sweep(folder, FAST_CHECKPOINTS)
    return folder, done


@pytest.mark.slow
def test_the_terminal_shows_our_lines_and_ray_s_go_to_the_log_it_names(quiet_sweep):
    folder, done = quiet_sweep
    out, err = plain(done.stdout), plain(done.stderr)
    assert done.returncode == 0, err[-3000:]
    assert "progress: 100% of the training FLOPs" in out and "== 1 trials: 1 done" in out and "1 finished" in out
    # the trial's own first line, which says which configuration a worker runs, still comes through
    assert re.search(r"^\(run_trial pid=\d+\) trial \w+ \S+ hypotheses=e ", out, re.M), out
    terminal = out + err
    for ray_line in (CHECKPOINT_LINE, SNAPSHOT_WARNING, RAY_STARTED, "Token authentication", "Total run time"):
        assert ray_line not in terminal, ray_line
    assert not re.search(r"^\S+ \S+\t(INFO|WARNING) ", terminal, re.M), terminal
    named = re.findall(r"^Ray's own log lines: (\S+) \(--verbose shows them here\)$", err, re.M)
    assert len(named) == 1, err
    log = Path(named[0]).read_text()
    assert RAY_STARTED in log and SNAPSHOT_WARNING in log and "Total run time" in log


@pytest.mark.slow
def test_tensorboard_plots_against_the_training_steps(quiet_sweep):
    folder, done = quiet_sweep
    [trial] = trial_dirs(folder / "r" / "s")
    logged = rows(trial)
    assert len(logged) > 10 and logged[-1]["step"] == FAST_CHECKPOINTS["training"]["train_steps"] - 1
    # the steps trained when each row was logged: TensorBoard's x-axis ends at train_steps, not at the report count
    assert tensorboard_steps(trial, "ray/tune/overall_loss") == [row["step"] + 1 for row in logged]
    assert tensorboard_steps(trial, "ray/tune/eval/loss") == [row["step"] + 1 for row in logged if "eval/loss" in row]


@pytest.mark.slow
def test_verbose_shows_ray_s_own_lines_on_the_terminal(tmp_path):
    base = {**TINY_BASE, "training": {**TINY_BASE["training"], "train_steps": 10, "save_every_steps": 5}}
    # without the dashboard (its start costs 3-6 CPU-seconds): what --verbose must show is Ray's own lines
    done = run_sweep(tmp_path, base, "--verbose", dashboard=False)
    out, err = plain(done.stdout), plain(done.stderr)
    assert done.returncode == 0, err[-3000:]
    assert re.search(rf"^\(run_trial pid=\d+\) {CHECKPOINT_LINE}: Checkpoint\(", out + err, re.M), out + err
    assert RAY_STARTED in err and "Ray's own log lines" not in err
    assert "1 finished" in out


@pytest.fixture
def terminal():
    """A terminal handler of the test's own on Ray's logger, as `import ray` gives it one: Ray's own handler writes
    to the stream that was stderr when Ray was first imported, which pytest's capture of an earlier test may own."""
    importlib.import_module("ray")  # its import sets up the "ray" logger, which _RayLines then finds

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("ray")
    logger.addHandler(handler)
    yield stream
    logger.removeHandler(handler)


def test_ray_lines_held_while_ray_starts_are_shown_when_it_does_not(terminal):
    """A ray.init that fails before the session's log folder exists: what Ray said meanwhile reaches the
    terminal, and Ray's handlers are left as they were."""
    logger = logging.getLogger("ray.tune")
    handlers = {handler: handler.level for handler in logging.getLogger("ray").handlers}
    lines = cluster._RayLines()
    logger.warning("held while Ray starts")
    logger.error("an error, shown at once")
    assert terminal.getvalue() == "an error, shown at once\n"
    lines.restore()
    assert terminal.getvalue() == "an error, shown at once\nheld while Ray starts\n"
    assert {handler: handler.level for handler in logging.getLogger("ray").handlers} == handlers


def test_ray_lines_go_to_the_file_once_it_is_known(tmp_path, terminal):
    logger = logging.getLogger("ray.tune")
    lines = cluster._RayLines()
    logger.info("before the session")
    lines.to_file(tmp_path / "ray.log")
    logger.warning("during the sweep")
    lines.restore()
    logger.warning("after the sweep")
    log = (tmp_path / "ray.log").read_text().splitlines()
    assert [line.split(" -- ", 1)[1] for line in log] == ["before the session", "during the sweep"]
    assert "\tINFO ray.tune:" in log[0]
    assert terminal.getvalue() == "after the sweep\n"


@pytest.mark.slow
def test_a_warning_is_one_line(tmp_path):
    """The earlier `experiments:` key warns of its rename in one line, with no source line under it."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"name": "tiny", "base": TINY_BASE,
                                     "experiments": [{"name": "e", "grid": {"training.seed": [0]}}]}))
    done = subprocess.run([sys.executable, "-m", "tune_looped.run", "--space", str(space), "--dry-run",
                           "--storage", str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"warning: {space}: experiments: renamed to hypotheses; the old spelling still works for now"]
    assert not (tmp_path / "r").exists()
