"""Command lines (`python -m module ...`, `python -c code ...`) run as a fresh interpreter runs them, at a fraction
of the cost: one server process imports the project's entry modules once (torch, pandas and scikit-learn take
5-12 s of every fresh interpreter), then forks a child per command line, which takes the command's working folder,
environment and argv, runs the module as `__main__`, and exits with the status the interpreter would give.

What a fork cannot show is what the imports themselves print (a warning at import time is printed once, by the
server): the server reports anything its imports wrote, and `Commands` refuses to start if there was any, so that
a warning a fresh command would print before its one error line is not hidden.

Run as a script, this file is the server; `Commands` in the test process talks to it over its stdin and stdout,
one JSON line per request: a batch of commands to run to their end, a command to start and leave running (for a
test that signals it), or a wait for a started one.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# Not the trainable, whose Ray Tune import a forked sweep would be spared (0.6 CPU-seconds on an AVX-512 CPU): with
# Ray imported before the fork, a forked runner's own new Ray refused its driver ("InvalidAuthToken ... RAY_AUTH_MODE
# is currently 'disabled'")
PRELOAD = ("tune_looped.run", "trainers.train", "analysis.__main__", "benchmarks.step", "benchmarks.sweep")


class Commands:
    """The server, started in `scratch` (where each command's stdout and stderr are kept until read back)."""

    def __init__(self, scratch: Path, preload=PRELOAD):
        self.scratch = Path(scratch)
        # matplotlib reads its cache folder once, at import: the server's is the one every command gets
        self.env = {**os.environ, "MPLCONFIGDIR": str(self.scratch / "matplotlib")}
        self.server = subprocess.Popen([sys.executable, __file__, str(self.scratch), *preload], cwd=self.scratch,
                                       env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(self.server.stdout.readline() or "null")
        if ready != {"printed": ""}:
            self.close()
            raise AssertionError(f"importing {', '.join(preload)} printed something a fresh command would print "
                                 f"too: {ready}")

    def run_many(self, commands: list[dict], parallel: int = 2) -> list[subprocess.CompletedProcess]:
        """Each command a dict: args (after `python`), cwd, env (the whole environment), timeout in seconds;
        `parallel` of them at a time. A command over its time raises `subprocess.TimeoutExpired`."""
        self.server.stdin.write(json.dumps({"commands": commands, "parallel": parallel}) + "\n")
        self.server.stdin.flush()
        answers = json.loads(self.server.stdout.readline())
        done = []
        for command, answer in zip(commands, answers):
            args = [sys.executable, *command["args"]]
            if answer["rc"] is None:
                raise subprocess.TimeoutExpired(args, command["timeout"])
            done.append(subprocess.CompletedProcess(args, answer["rc"], answer["stdout"], answer["stderr"]))
        return done

    def run(self, args, cwd, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
        command = {"args": [str(a) for a in args], "cwd": str(cwd), "env": self.env if env is None else env,
                   "timeout": timeout}
        return self.run_many([command], parallel=1)[0]

    def environment(self, **extra) -> dict:
        """This process's environment as it is now (a test may have changed it since the server started), with
        the server's own settings and `extra`."""
        return {**self.env, **os.environ, **extra}

    def start(self, args, cwd, out: Path, err: Path, env=None) -> "Started":
        """A command line forked and left running, its stdout and stderr written to `out` and `err` as it goes
        (line by line where `env` sets PYTHONUNBUFFERED): for a test that signals it or reads its output while it
        runs. What comes back answers as a `subprocess.Popen` does. `env` by default: `environment()`."""
        command = {"args": [str(a) for a in args], "cwd": str(cwd), "env": self.environment() if env is None else env,
                   "out": str(out), "err": str(err)}
        for path in (out, err):  # there when this returns, as a Popen's files are
            Path(path).write_bytes(b"")
        return Started(self, self._ask({"start": command})["pid"], [sys.executable, *command["args"]])

    def _ask(self, request: dict) -> dict:
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        return json.loads(self.server.stdout.readline())

    def close(self):
        self.server.stdin.close()
        self.server.wait(timeout=30)


class Started:
    """A command that `Commands.start` forked: the server, its parent, is the one that can wait for it."""

    def __init__(self, commands: Commands, pid: int, args: list[str]):
        self._commands, self.pid, self.args = commands, pid, args
        self.returncode = None

    def poll(self):
        return self._wait(0)

    def wait(self, timeout: float | None = None) -> int:
        if self._wait(timeout) is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def _wait(self, timeout: float | None):
        if self.returncode is None:
            self.returncode = self._commands._ask({"wait": self.pid, "timeout": timeout})["rc"]
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# --- the server -------------------------------------------------------------------------------------------------

def _serve(scratch: Path, preload: list[str]) -> None:
    import importlib

    protocol = os.fdopen(os.dup(1), "w")
    printed = scratch / "preload.out"
    with open(printed, "w") as capture:
        saved = os.dup(2)
        for fd in (1, 2):
            os.dup2(capture.fileno(), fd)
        try:
            for module in preload:
                importlib.import_module(module)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the protocol's pipe is kept for the protocol
            os.dup2(saved, 2)
    protocol.write(json.dumps({"printed": printed.read_text()}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if "start" in request:
            answer = {"pid": _fork(request["start"], Path(request["start"]["out"]), Path(request["start"]["err"]))}
        elif "wait" in request:
            answer = {"rc": _wait(request["wait"], request["timeout"])}
        else:
            answer = _run_batch(scratch, request["commands"], request["parallel"])
        protocol.write(json.dumps(answer) + "\n")
        protocol.flush()


def _fork(command: dict, out: Path, err: Path) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(command, out, err)
    return pid


def _wait(pid: int, timeout: float | None) -> int | None:
    """The exit status of a started command, once it has ended within `timeout` seconds (None: however long)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _run_batch(scratch: Path, commands: list[dict], parallel: int) -> list[dict]:
    answers = [None] * len(commands)
    waiting = list(enumerate(commands))
    running = {}  # pid -> (index, deadline)
    while waiting or running:
        while waiting and len(running) < parallel:
            index, command = waiting.pop(0)
            running[_fork(command, scratch / f"{index}.out", scratch / f"{index}.err")] = (
                index, time.monotonic() + command["timeout"])
        pid, status = 0, 0
        for child in running:  # this batch's own: a started command is reaped when the test waits for it
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                break
        if pid == 0:
            for late, (index, deadline) in list(running.items()):
                if time.monotonic() > deadline:
                    os.killpg(late, 9)
                    os.waitpid(late, 0)
                    del running[late]
                    answers[index] = {"rc": None}
            time.sleep(0.005)
            continue
        index, _ = running.pop(pid)
        out, err = scratch / f"{index}.out", scratch / f"{index}.err"
        answers[index] = {"rc": os.waitstatus_to_exitcode(status), "stdout": out.read_text(errors="replace"),
                          "stderr": err.read_text(errors="replace")}
        out.unlink()
        err.unlink()
    return answers


def _child(command: dict, out: Path, err: Path) -> None:
    """Become the command: never returns."""
    import atexit
    import runpy
    import tempfile

    code = 1
    try:
        os.setpgid(0, 0)  # the server ends a command over its time with everything it started
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        os.chdir(command["cwd"])
        os.environ.clear()
        os.environ.update(command["env"])
        if os.environ.get("PYTHONUNBUFFERED"):  # as far as a stream that exists can follow `python -u`
            sys.stdout.reconfigure(line_buffering=True, write_through=True)
        tempfile.tempdir = None  # found again from TMPDIR, as a fresh interpreter would
        sys.path[0] = os.getcwd()  # `python -m` and `python -c` put the working folder first
        flag, target, *argv = command["args"]
        try:
            if flag == "-m":
                for name in (target, f"{target}.__main__"):
                    sys.modules.pop(name, None)  # run afresh as __main__, as `python -m` does
                sys.argv = [target, *argv]
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            elif flag == "-c":
                sys.argv = ["-c", *argv]
                exec(compile(target, "<string>", "exec"), {"__name__": "__main__"})
            else:
                raise ValueError(f"only -m and -c command lines, got {flag}")
            code = 0
        except SystemExit as stop:
            code = _exit_status(stop.code)
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _exit_status(code) -> int:
    """The exit status `sys.exit(code)` gives."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), sys.argv[2:])
