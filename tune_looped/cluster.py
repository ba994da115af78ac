"""Starting or joining Ray, the dashboard, and where results are stored."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from tune_looped.space import SpaceError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MIN_FREE_BYTES = 200 * 2**20
CONNECT_TIMEOUT_S = 5.0
# written into the session folder of every local Ray the runner starts, holding the runner's pid
RUNNER_MARK = "tune_looped_runner.pid"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def is_uri(storage: str) -> bool:
    return "://" in storage


def check_storage(storage: str) -> str:
    """Fail before anything starts when a local storage path cannot take results; URIs are Ray's to check.

    Only the last folder of the path may be missing (Ray creates it): a mistyped parent fails here instead of
    growing a tree in an unexpected place. Nothing is left behind: the write check's file is deleted at once.
    """
    if is_uri(storage):
        return storage
    path = Path(storage).expanduser().absolute()
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


def start_ray(address: str | None, *, num_cpus=None, num_gpus=None, dashboard_host: str = "127.0.0.1"):
    """An embedded local Ray (the default) or a connection to a running cluster (`--address`)."""
    import ray

    if address:
        try:
            context = ray.init(address=address, log_to_driver=True)
        except ConnectionError as err:
            # something answers at the address, but not a Ray cluster's GCS
            raise SpaceError(f"--address {address}: {str(err).splitlines()[0]}; is it a Ray head's GCS port "
                             "(6379 by default)?") from None
    else:
        if dashboard_host not in LOOPBACK:
            warn(f"the dashboard listens on {dashboard_host}: anyone who reaches it can run code on this machine")
        context = ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=True,
                           dashboard_host=dashboard_host)
        session = Path(context.address_info["session_dir"])
        end_orphaned_sessions(session.parent, keep=session)
        mark_session(session)
    url = context.dashboard_url
    if url:
        print(f"Ray dashboard: http://{url}  (token auth: `ray get-auth-token` prints the token to paste,"
              f" or send it as 'Authorization: Bearer <token>')", file=sys.stderr)
    return context


def warn_if_local_storage_on_cluster(storage: str) -> None:
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1 and not is_uri(storage):
        warn(f"--storage {storage} is a local path on a {len(alive)}-node cluster: Ray needs storage every node "
             "can reach (a shared filesystem or s3://, gs://) for checkpoints and results")


def session_processes(session: Path) -> list[int]:
    """The live processes of one local Ray session: each names its session folder on its command line or, as the
    agents that retitle themselves `ray::...Agent` do, holds a file in it open."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid != os.getpid() and _running(pid) and _names(proc, session.name):
            found.append(pid)
    return found


def _names(proc: Path, text: str) -> bool:
    """Whether `proc` is one of Ray's processes (a `ray::` title or a program of the ray package: never, say, a
    `tail -f` of the session's logs) that names `text`."""
    try:
        cmdline = (proc / "cmdline").read_bytes()
        if not (cmdline.startswith(b"ray::") or b"/site-packages/ray/" in cmdline):
            return False
        return text.encode() in cmdline or any(text in os.readlink(fd) for fd in (proc / "fd").iterdir())
    except OSError:
        return False


def process_identity(pid: int) -> str | None:
    """`pid:start time`, which a later process reusing the pid does not share; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else f"{pid}:{fields[19]}"


def _running(pid: int) -> bool:
    return process_identity(pid) is not None


def mark_session(session: Path) -> None:
    (session / RUNNER_MARK).write_text(process_identity(os.getpid()) or "")


def end_orphaned_sessions(root: Path, keep: Path) -> int:
    """End the Ray processes a SIGKILLed runner left behind (its agents outlive it): only in sessions a runner
    marked and whose runner is gone; a cluster from `ray start` or another live runner is never touched."""
    ended = 0
    for mark in root.glob(f"session_*/{RUNNER_MARK}"):
        session = mark.parent
        try:
            runner = mark.read_text().strip()
            if session == keep or process_identity(int(runner.split(":")[0])) == runner:
                continue
        except (OSError, ValueError):
            continue
        pids = session_processes(session)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5
            while sig == signal.SIGTERM and any(map(_running, pids)) and time.monotonic() < deadline:
                time.sleep(0.1)
            still = [p for p in pids if _running(p)]
            ended += len(pids) - len(still)
            pids = still
        mark.unlink(missing_ok=True)
    if ended:
        warn(f"ended {ended} Ray processes left behind by a killed runner")
    return ended
