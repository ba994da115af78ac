"""Helpers shared by the end-to-end sweep tests (test_runner, test_reliability): tiny spaces, the runner as a
subprocess, one-machine clusters, Ray Tune's result layout, and the processes and memory of a running driver."""
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from trainers.layout import RESULT_FILE, TRIAL_RECORD, run_trial_folders

REPO = Path(__file__).resolve().parents[2]
TINY_BASE = {
    "model": {"family": "gpt2_loop", "n_embd": 16, "n_layer": 1, "n_head": 2, "n_dims": 3, "n_positions": 6},
    "training": {
        "batch_size": 8, "train_steps": 30, "save_every_steps": 10, "eval_every_steps": 10, "eval_prompts": 16,
        "n_loop_window": 2, "onednn_linear": True,  # fixed, not auto: oneDNN's products on every CPU type
        "curriculum": {"dims": {"start": 3, "end": 3, "inc": 1, "interval": 100},
                       "points": {"start": 4, "end": 6, "inc": 1, "interval": 10},
                       "loops": {"start": 2, "end": 3, "inc": 1, "interval": 10}},
    },
    "wandb": {"log_every_steps": 5},
}
# what differs between two runs of the same trials: wall-clock figures and where they ran
TIMING_COLUMNS = ["elapsed_s", "steps_per_s", "prompts_per_s", "time_total_s", "wall_time", "node_id", "wall_time_s"]


# the runners' analyses score each trial on a tenth of the research's 1280 fresh prompts: the same code, a tenth of
# the work (about 0.4 CPU-seconds a tiny trial on 2 AVX-512 cores)
TINY_EVALUATION = {"n_prompts": 128}


def local_cluster(**head):
    """A `ray.cluster_utils.Cluster` on this machine, its head started with `head`, its dashboard on the first free
    port from 8265 up, as `ray.init` gives it. Cluster's own default names 8265 outright: two heads started in the
    same second (one on each test worker) both pass Ray's check that it is free, and the head that loses the bind
    waits out Ray's 60 s dashboard timeout before its node starts."""
    from ray.cluster_utils import Cluster

    return Cluster(initialize_head=True, head_node_args={"dashboard_port": None, **head})


def write_space(path: Path, hypotheses, base=None, **extra) -> Path:
    path.write_text(yaml.safe_dump({"name": "tiny", "base": base or TINY_BASE, "hypotheses": hypotheses,
                                    "evaluation": TINY_EVALUATION, **extra}))
    return path


def trial_dirs(experiment_dir: Path) -> list[Path]:
    """The trial folders of the experiment's first run."""
    return run_trial_folders(experiment_dir)


def rows(trial_dir: Path) -> list[dict]:
    """result.json's rows; a line the trial is still writing is left out."""
    path = trial_dir / RESULT_FILE
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def record(trial_dir: Path) -> dict:
    """The runner's record of the trial: its trial_id, hypotheses and dotted values."""
    return json.loads((trial_dir / TRIAL_RECORD).read_text())


def finished_trials(experiment_dir: Path, last_step: int) -> list[Path]:
    return [t for t in trial_dirs(experiment_dir) if (r := rows(t)) and r[-1]["step"] == last_step]


def sweep_command(space: Path, storage: Path, name: str, *extra, report: bool = False,
                  dashboard: bool = False, cpus: int = 1) -> list[str]:
    """The runner's command line; without the dashboard unless the test looks at it (its start costs about 5 of
    a start's 12 s on 2 busy cores). One CPU unless the test runs trials side by side: the trials then take turns
    in one worker, whose start (imports, and torch._dynamo's at the optimizer's first call) costs 8-9 CPU-seconds
    on 2 AVX2 cores, more than a tiny trial's training."""
    return [sys.executable, "-m", "tune_looped.run", "--space", str(space), "--storage", str(storage),
            "--name", name, "--num-cpus", str(cpus), *([] if report else ["--no-report"]),
            *([] if dashboard else ["--no-dashboard"]), *extra]


def start_sweep(tmp_path: Path, space: Path, *extra, name: str = "s", report: bool = False,
                dashboard: bool = False, cpus: int = 1, commands=None) -> subprocess.Popen:
    """The runner as a subprocess in `tmp_path`, its output in `tmp_path/<name>.out|.err` (a pipe nobody reads
    could fill and stall it); results under `tmp_path/r/<name>`. Given the command server (`commands`), forked
    from it, whose imports are done (as `forked_sweep`): for a runner that the test signals or watches, but whose
    import-time output and first memory nobody checks."""
    cmd = sweep_command(space, tmp_path / "r", name, *extra, report=report, dashboard=dashboard, cpus=cpus)
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    if commands is not None:
        return commands.start(cmd[1:], tmp_path, out, err, env=commands.environment(PYTHONUNBUFFERED="1"))
    with open(out, "w") as out_file, open(err, "w") as err_file:
        return subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out_file,
                                stderr=err_file, text=True)


def forked_sweep(commands, tmp_path: Path, space: Path, *extra, name: str = "s", report: bool = False,
                 cpus: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """The runner to its end, forked from the command server (helpers/commands.py) in `tmp_path`, with this
    process's environment as it is now; results under `tmp_path/r/<name>`. Its imports are done: about 4 of a
    tiny sweep's 27 CPU-seconds on 2 AVX2 cores. Only for a runner that the test does not signal or watch while it
    runs, and whose import-time output nobody checks."""
    command = sweep_command(space, tmp_path / "r", name, *extra, report=report, cpus=cpus)
    return commands.run(command[1:], cwd=tmp_path, env=commands.environment(), timeout=timeout)


def run_printed(commands, command: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """A runner's command line as it printed it (`<this python> -m tune_looped.run ...`), forked from the command
    server with this process's environment: the printed arguments, without a fresh interpreter's imports (about 4
    CPU-seconds on 2 AVX2 cores). test_study.py runs its resume as printed, in a fresh interpreter."""
    assert command[0] == sys.executable, command
    return commands.run(command[1:], cwd=cwd, env=commands.environment(), timeout=timeout)


def finish(sweep: subprocess.Popen, tmp_path: Path, name: str = "s", timeout: float = 300) -> tuple[str, str]:
    """Wait for a sweep started by `start_sweep`; (stdout, stderr)."""
    try:
        sweep.wait(timeout=timeout)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    return (tmp_path / f"{name}.out").read_text(), (tmp_path / f"{name}.err").read_text()


def wait_for(condition, timeout=120.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError("condition not met in time")


def auth_token() -> str:
    return Path("~/.ray/auth_token").expanduser().read_text().strip()


def descendants(pid: int) -> dict[int, str]:
    """Every live process below `pid`, with its name (Ray names its workers and agents `ray::...`)."""
    found = {}
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = children.read_text().split()
        except OSError:
            continue
        for kid in map(int, kids):
            found[kid] = process_name(kid)
            found.update(descendants(kid))
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def trial_workers(pid: int) -> dict[int, str]:
    """The processes below `pid` that run a trial (Tune's `ray::ImplicitFunc` actors), each with the name of its
    working folder, which Tune makes the trial's folder."""
    found = {}
    for kid, name in descendants(pid).items():
        if name.startswith("ray::ImplicitFunc"):
            try:
                found[kid] = Path(os.readlink(f"/proc/{kid}/cwd")).name
            except OSError:
                continue
    return found


class TrialBarrier:
    """Holds (SIGSTOP) each trial process of the Ray below this process as it appears, until `parties` are held,
    then releases them all: that many trials run together however short they are, on any CPU, with no margin of
    steps. Polled every 0.05 s by a thread; after `patience` seconds short of `parties` (a runner that never runs
    that many at once) the held ones are released, so that the sweep ends and the test's own check fails."""

    def __init__(self, parties: int, patience: float = 120):
        self.parties, self.patience = parties, patience
        self.held: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()

    def _hold(self):
        deadline = time.monotonic() + self.patience
        while not self._done.is_set() and len(self.held) < self.parties and time.monotonic() < deadline:
            for pid in trial_workers(os.getpid()):
                if pid not in self.held and len(self.held) < self.parties:
                    os.kill(pid, signal.SIGSTOP)
                    self.held.append(pid)
            time.sleep(0.05)
        for pid in self.held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def ray_session_of(pids) -> str:
    """The Ray session (`session_<date>_<time>_<id>_<pid>`) named on the command lines of these processes."""
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        found = re.search(r"session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+", cmdline)
        if found:
            return found.group(0)
    raise AssertionError("no process names a Ray session")


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line or open files name `text` (Ray's agents retitle themselves, but keep
    their session's log files open)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            named = text.encode() in (proc / "cmdline").read_bytes() or any(
                text in os.readlink(fd) for fd in (proc / "fd").iterdir())
        except OSError:
            continue
        if named and alive([int(proc.name)]):
            found.append(int(proc.name))
    return found


def alive(pids) -> list[int]:
    """Those of `pids` still running (a zombie waiting for its parent counts as gone)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            out.append(pid)
    return out


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process (VmRSS), or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class TrialEvents:
    """A Tune callback, added to the runner's RunConfig, that records the controller's trial starts and ends in
    the order the controller saw them: the concurrency Ray allowed, read without wall clocks."""

    def __init__(self):
        from ray import tune

        events = self.events = []

        class Recorder(tune.Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                events.append(("start", trial.trial_id))

            def on_trial_complete(self, iteration, trials, trial, **info):
                events.append(("end", trial.trial_id))

            def on_trial_error(self, iteration, trials, trial, **info):
                events.append(("end", trial.trial_id))

        self.callback = Recorder()

    def install(self, monkeypatch):
        """The runner's `tune.RunConfig(...)` gets the recorder among its callbacks; a subclass, because Tune
        checks that the run config is a RunConfig."""
        from ray import tune

        recorder = self.callback

        class RecordingRunConfig(tune.RunConfig):
            def __init__(self, **kwargs):
                callbacks = list(kwargs.pop("callbacks", None) or [])
                super().__init__(**kwargs, callbacks=callbacks + [recorder] * (recorder not in callbacks))

        monkeypatch.setattr(tune, "RunConfig", RecordingRunConfig)

    def max_running(self) -> int:
        running = best = 0
        for kind, _ in self.events:
            running += 1 if kind == "start" else -1
            best = max(best, running)
        return best
