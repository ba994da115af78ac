"""Starting or joining Ray, the dashboard, and where results are stored."""
from __future__ import annotations

import contextlib
import importlib
import inspect
import ipaddress
import logging
import logging.handlers
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from trainers.atomic import free_space
from tune_looped.space import SpaceError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# the URI schemes of pyarrow.fs.FileSystem.from_uri, which Ray reads --storage with, by the pyarrow module each
# needs; asking from_uri itself could connect (s3:// looks up a bucket's region)
PYARROW_SCHEMES = (("pyarrow.fs", ("file", "local")), ("pyarrow._s3fs", ("s3",)), ("pyarrow._gcsfs", ("gs", "gcs")),
                   ("pyarrow._hdfs", ("hdfs", "viewfs")), ("pyarrow._azurefs", ("abfs", "abfss")))
MIN_FREE_BYTES = 200 * 2**20
CONNECT_TIMEOUT_S = 5.0
# written into the session folder of every local Ray the runner starts, holding the runner's process_identity
RUNNER_MARK = "tune_looped_runner.pid"
# how far apart two reads of one process's create time may be, for a mark without start ticks (see runner_alive)
SAME_START_S = 1.5
# what an orphaned Ray process gets to exit after TERM, then after KILL. A trial's worker exits on TERM at once;
# Ray's two agents, their raylet gone, catch TERM in an event loop that no longer runs and only KILL ends them:
# every second of this grace is a second the next runner's start waits
TERM_GRACE_S = 1.0
KILL_WAIT_S = 1.0
# in the session's logs/ folder: Ray's own lines of the runner, which the terminal shows only with --verbose
RAY_LOG = "tune_looped_driver.log"
RAY_LOG_FORMAT = "%(asctime)s\t%(levelname)s %(name)s:%(lineno)s -- %(message)s"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def is_uri(storage: str) -> bool:
    return "://" in storage


def storage_schemes() -> list[str]:
    """The URI schemes this installation's pyarrow reads, without connecting anywhere."""
    schemes = []
    for module, names in PYARROW_SCHEMES:
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        schemes += names
    return schemes


def check_storage(storage: str) -> str:
    """Fail before anything starts when a local storage path cannot take results; of a URI only the scheme is
    checked, against those pyarrow knows: whether its bucket answers is Ray's to find out.

    Only the last folder of the path may be missing (Ray creates it): a mistyped parent fails here instead of
    growing a tree in an unexpected place. Nothing is left behind: the write check's file is deleted at once.
    """
    if is_uri(storage):
        scheme, schemes = storage.split("://", 1)[0], storage_schemes()
        if scheme not in schemes:
            raise SpaceError(f"--storage {storage}: expected a local path or a URI of a filesystem pyarrow knows "
                             f"({', '.join(f'{s}://' for s in schemes)}), got {scheme}://")
        return storage
    path = Path(storage).expanduser().absolute()
    if path.is_symlink() and not path.exists():
        raise SpaceError(f"--storage {storage}: a symbolic link to nothing, or a loop of them; give a folder")
    folder = path if path.exists() else path.parent
    if not folder.is_dir():
        where = "it" if folder == path else f"the parent {folder}"
        problem = "is not a folder" if folder.exists() else "does not exist; create it first"
        raise SpaceError(f"--storage {storage}: {where} {problem}")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_check_"):
            pass
    except OSError as err:
        raise SpaceError(f"--storage {storage}: cannot write in {folder} ({err.strerror or err})") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise SpaceError(f"--storage {storage}: {free / 2**20:.0f} MiB free on that disk, less than the "
                         f"{MIN_FREE_BYTES // 2**20} MiB a sweep needs for its checkpoints and results")
    return str(path.resolve())


def check_dashboard_host(host: str) -> None:
    """An IP address or a host name (RFC 1123), as the dashboard binds to it; it is not looked up here."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(HOST_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise SpaceError(f"--dashboard-host: expected an IP address or a host name, got {host!r}")


def full_filesystems(places: dict[str, Path]) -> list[str]:
    """Of the places a sweep writes to (the storage, the temporary folder, Ray's folder), those whose filesystem
    has less than MIN_FREE_BYTES free, each filesystem once: `the storage /x (the filesystem at /m): 0 MiB free`."""
    seen, full = set(), []
    for role, path in places.items():
        try:
            device, free = path.stat().st_dev, shutil.disk_usage(path).free
        except OSError:
            continue
        if device not in seen and free < MIN_FREE_BYTES:
            full.append(free_space(role, path, free))
        seen.add(device)
    return full


def check_address(address: str | None) -> None:
    """A HOST:PORT nobody listens on fails here in seconds; Ray itself retries it for minutes before saying so."""
    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SpaceError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise SpaceError(f"--address {address}: no Ray cluster answers there ({reason}); start one with "
                         "`ray start --head`, or leave out --address for a local Ray") from None


class _RayLines:
    """Ray's own log lines in this process (its start-up and token-auth lines, Tune's bookkeeping and its repeated
    warnings) go to RAY_LOG in the session's log folder, held until ray.init has made it; the terminal keeps
    Ray's errors. The trials' own lines, which the workers print, still reach the terminal."""

    def __init__(self):
        self.logger = logging.getLogger("ray")
        self.levels = {handler: handler.level for handler in self.logger.handlers}
        for handler in self.levels:
            handler.setLevel(max(handler.level, logging.ERROR))
        self.held = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
        self.logger.addHandler(self.held)
        self.file: logging.Handler | None = None

    def to_file(self, path: Path) -> None:
        self.file = logging.FileHandler(path)
        self.file.setFormatter(logging.Formatter(RAY_LOG_FORMAT))
        self.held.setTarget(self.file)
        self.held.flush()
        self.logger.removeHandler(self.held)
        self.logger.addHandler(self.file)

    def restore(self) -> None:
        """Ray's handlers as they were; what is still held (Ray did not start) is shown, once."""
        self.logger.removeHandler(self.held)
        for handler, level in self.levels.items():
            handler.setLevel(level)
        for record in self.held.buffer:
            if record.levelno < logging.ERROR:
                self.logger.handle(record)
        self.held.buffer.clear()
        if self.file is not None:
            self.logger.removeHandler(self.file)
            self.file.close()


_ray_lines: _RayLines | None = None
# inside `ray_held`: the arguments and context of the Ray it holds ({} until a sweep starts one); else None
_held: dict | None = None


def start_ray(address: str | None, *, num_cpus=None, num_gpus=None, dashboard_host: str | None = "127.0.0.1",
              verbose: bool = True):
    """An embedded local Ray (the default), its dashboard on `dashboard_host` unless that is None, or a connection
    to a running cluster (`--address`); unless `verbose`, Ray's own lines go to a log file, which `stop_ray`
    closes. Inside `ray_held`, the Ray an earlier sweep started with the same arguments."""
    global _ray_lines
    import ray

    asked = (address, num_cpus, num_gpus, dashboard_host, verbose)
    if _held is not None and _held.get("asked") == asked:
        return _held["context"]
    if _held:
        stop_ray(keep=False)  # held with other arguments: this sweep's Ray replaces it
    _ray_lines = None if verbose else _RayLines()
    try:
        context = _init(ray, address, num_cpus, num_gpus, dashboard_host)
    except BaseException:
        _restore_ray_lines()
        raise
    session = Path(context.address_info["session_dir"])
    if _ray_lines is not None:
        log = session / "logs" / RAY_LOG
        _ray_lines.to_file(log)
        print(f"Ray's own log lines: {log} (--verbose shows them here)", file=sys.stderr)
    url = context.dashboard_url
    if url:
        print(f"Ray dashboard: http://{url}  (token auth: `ray get-auth-token` prints the token to paste,"
              f" or send it as 'Authorization: Bearer <token>')", file=sys.stderr)
    if _held is not None:
        _held.update(asked=asked, context=context)
    return context


@contextlib.contextmanager
def ray_held():
    """The Ray that the first sweep inside starts stays up for the sweeps after it, and is shut down at the end:
    a sequential study's rounds share one Ray (a tiny round then takes about 3 s and 3.5 CPU-seconds less on 2
    AVX-512 cores). Each round's trials still start workers of their own: Tune ends its actors with its run, and a
    Ray actor's process ends with it. A sweep asking for another Ray (other flags) replaces it.
    Inside another hold, that one decides."""
    global _held
    if _held is not None:
        yield
        return
    _held = {}
    try:
        yield
    finally:
        started, _held = bool(_held), None
        if started:
            _shut_down()


def _init(ray, address: str | None, num_cpus, num_gpus, dashboard_host: str | None):
    if address:
        try:
            return ray.init(address=address, log_to_driver=True)
        except ConnectionError as err:
            # something answers at the address, but not a Ray cluster's GCS
            raise SpaceError(f"--address {address}: {str(err).splitlines()[0]}; is it a Ray head's GCS port "
                             "(6379 by default)?") from None
    if dashboard_host is not None and dashboard_host not in LOOPBACK:
        warn(f"the dashboard listens on {dashboard_host}: anyone who reaches it can run code on this machine")
    dashboard = {"include_dashboard": False} if dashboard_host is None else \
        {"include_dashboard": True, "dashboard_host": dashboard_host}
    # Ray starts a worker a CPU for the first driver's tasks; Tune's trials are actors, which start workers of their
    # own, so those would only idle (about a CPU-second each to start, on 2 AVX2 cores)
    with _any_free_agent_port():
        context = ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                           _system_config={"prestart_worker_first_driver": False}, **dashboard)
    session = Path(context.address_info["session_dir"])
    end_orphaned_sessions(session.parent, keep=session)
    mark_session(session)
    return context


@contextlib.contextmanager
def _any_free_agent_port():
    """ray.init gives the node's dashboard agent Ray's fixed port, 52365, which another local Ray (another runner, a
    notebook's) may hold: the agent then retries for 3.4 s while ray.init waits, and runs without its HTTP server.
    `ray start` takes the port as a flag; ray.init has none, so its start is given port 0 (any free one, which the
    agent supports) as the default of Ray's parameters. A Ray without that parameter starts as before."""
    try:
        from ray._private.parameter import RayParams
    except ImportError:
        yield
        return
    given = RayParams.__init__
    if "dashboard_agent_listen_port" not in inspect.signature(given).parameters:
        yield
        return

    def init(self, *args, **kwargs):
        kwargs.setdefault("dashboard_agent_listen_port", 0)
        given(self, *args, **kwargs)

    RayParams.__init__ = init
    try:
        yield
    finally:
        RayParams.__init__ = given


def stop_ray(keep: bool = True) -> None:
    """Shut Ray down, unless `ray_held` holds it for the next sweep and `keep`."""
    if _held and keep:
        return
    _shut_down()
    if _held:
        _held.clear()


def _shut_down() -> None:
    """Ray's log lines go back to where `start_ray` found them. The trials have ended by then, so what the
    workers print while Ray stops them (an idle worker's traceback from its SIGTERM) is Ray's own and goes to its
    log file too."""
    import ray

    try:
        _kill_monitor()
        with _workers_to_log():
            ray.shutdown()
    finally:
        _restore_ray_lines()


def _kill_monitor() -> None:
    """Kill the autoscaler's monitor of a Ray this process started, as `ray.shutdown` would a second later: Ray stops
    the GCS first, and the monitor's SIGTERM handler then waits on it until Ray's grace second runs out (1.0 of a
    tiny sweep's 1.4 s shutdown). Ray's internal names are read with defaults: a Ray without them shuts down as
    before."""
    from ray._private import ray_constants, worker

    node = worker._global_node
    for info in getattr(node, "all_processes", {}).get(getattr(ray_constants, "PROCESS_TYPE_MONITOR", None), []):
        if info.process.poll() is None:
            info.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):  # Ray's shutdown gives up on it likewise
                info.process.wait(KILL_WAIT_S)


@contextlib.contextmanager
def _workers_to_log():
    if _ray_lines is None or _ray_lines.file is None:
        yield
        return
    # Ray's log thread prints the workers' lines to whatever sys.stdout and sys.stderr are when each arrives
    with open(_ray_lines.file.baseFilename, "a") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        yield


def _restore_ray_lines() -> None:
    global _ray_lines
    if _ray_lines is not None:
        _ray_lines.restore()
        _ray_lines = None


def warn_if_local_storage_on_cluster(storage: str) -> None:
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1 and not is_uri(storage):
        warn(f"--storage {storage} is a local path on a {len(alive)}-node cluster: Ray needs storage every node "
             "can reach (a shared filesystem or s3://, gs://) for checkpoints and results")


def _session_processes(session: Path) -> list[psutil.Process]:
    """The live processes of one local Ray session: each names its session folder on its command line or, as the
    agents that retitle themselves `ray::...Agent` do, holds a file in it open."""
    me = os.getpid()
    # a zombie's command line cannot be read, so it has None here and is left out: it has ended already
    return [process for process in psutil.process_iter(["cmdline"])
            if process.pid != me and _names(process, session.name)]


def _names(process: psutil.Process, text: str) -> bool:
    """Whether `process` is one of Ray's processes (a `ray::` title or a program of the ray package: never, say, a
    `tail -f` of the session's logs) that names `text`."""
    command = " ".join(process.info["cmdline"] or ())
    if not (command.startswith("ray::") or "/site-packages/ray/" in command):
        return False
    if text in command:
        return True
    try:
        return any(text in file.path for file in process.open_files())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def process_identity(pid: int) -> str | None:
    """`pid:create time:start ticks`, which a later process reusing the pid does not share; None once it is gone (a
    zombie is). The time always has a fraction: a mark of older runners held /proc start ticks, a whole number. The
    ticks (clock ticks from the boot to the start, Linux's /proc/<pid>/stat) are empty where /proc has none."""
    try:
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE:
            return f"{pid}:{process.create_time():.2f}:{_start_ticks(pid)}"
    except psutil.NoSuchProcess:
        pass
    return None


def _identity_fields(identity: str) -> tuple[str, str, str]:
    """A `process_identity`'s pid, create time and start ticks; an older runner's mark (`pid:ticks`) has its ticks
    where the time goes, and empty ticks."""
    pid, _, rest = identity.partition(":")
    started, _, ticks = rest.partition(":")
    return pid, started, ticks


def _start_ticks(pid: int) -> str:
    try:
        # the fields after the command's name, which may hold spaces and parentheses; the 22nd field is the 20th here
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _same_process(identity: str) -> psutil.Process | None:
    """The process a `process_identity` of this host names, if it still runs: the same pid and start ticks. None
    when in doubt (no ticks to compare), as another process may have taken the pid."""
    pid, _, ticks = _identity_fields(identity)
    try:
        now = process_identity(int(pid))
        if ticks and now is not None and _identity_fields(now)[2] == ticks:
            return psutil.Process(int(pid))
    except (ValueError, psutil.Error):
        pass
    return None


def runner_alive(mark: str) -> bool:
    """Whether the runner whose identity `mark` (a `process_identity` of this host) holds still runs; ValueError
    for a mark that holds none.

    Doubt counts as alive, as ending a live runner's Ray is the worse mistake: a process we may not inspect, and
    a live pid under an older runner's mark, whose start ticks cannot be compared with a create time."""
    pid, started, ticks = _identity_fields(mark)
    try:
        now = process_identity(int(pid))
    except psutil.AccessDenied:
        return True
    if now is None:
        return False
    if "." not in started:
        return True
    _, now_started, now_ticks = _identity_fields(now)
    if ticks and now_ticks:
        # ticks count from the boot on the kernel's clock, which no change of the wall clock moves
        return ticks == now_ticks
    # psutil dates a start from the boot time, which Linux gives in whole seconds and moves when the clock is
    # stepped (NTP, a virtual machine paused and resumed): two reads of one process may differ by a second or more,
    # and a reused pid started after the runner died, which is several seconds after its start at least
    return abs(float(now_started) - float(started)) <= SAME_START_S


def mark_session(session: Path) -> None:
    """The runner's identity, then that of each process of its session found now: an agent that exits on its own
    once its raylet has died closes its log files first, and may then take seconds on a busy machine, while no
    file it holds names the session any more."""
    found = (process_identity(process.pid) for process in _session_processes(session))
    (session / RUNNER_MARK).write_text("\n".join([process_identity(os.getpid()) or "", *filter(None, found)]))


def _ended(process: psutil.Process) -> bool:
    """Gone, its pid reused, or a zombie: that has exited, only its parent (not always init) has not reaped it."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def _still_running(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of `processes` that have not ended within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        # in short rounds: wait_procs would wait out the whole timeout on a zombie whose parent is not this process
        processes = [p for p in psutil.wait_procs(processes, timeout=0.1)[1] if not _ended(p)]
        if not processes or time.monotonic() >= deadline:
            return processes


def _end(processes: list[psutil.Process]) -> int:
    """TERM, then KILL for those still running after TERM_GRACE_S; how many ended."""
    alive = processes
    for stop, wait in ((psutil.Process.terminate, TERM_GRACE_S), (psutil.Process.kill, KILL_WAIT_S)):
        for process in alive:
            # psutil signals no process that took over a pid since it was listed: that raises NoSuchProcess
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                stop(process)
        alive = _still_running(alive, wait)
    return len(processes) - len(alive)


def end_orphaned_sessions(root: Path, keep: Path) -> int:
    """End the Ray processes a SIGKILLed runner left behind (its agents outlive it): only in sessions a runner
    marked and whose runner is gone; a cluster from `ray start` or another live runner is never touched. Those
    that name the session, and those its mark recorded that still run."""
    ended = 0
    for mark in root.glob(f"session_*/{RUNNER_MARK}"):
        session = mark.parent
        try:
            runner, *recorded = mark.read_text().splitlines()
            if session == keep or runner_alive(runner):
                continue
        except (OSError, ValueError):
            continue
        found = {process.pid: process for process in _session_processes(session)}
        for process in filter(None, map(_same_process, recorded)):
            found.setdefault(process.pid, process)
        ended += _end(list(found.values()))
        mark.unlink(missing_ok=True)
    if ended:
        warn(f"ended {ended} Ray processes left behind by a killed runner")
    return ended
