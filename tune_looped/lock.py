"""One runner per experiment: a lock file, `<experiment>/.tune_looped/lock`, that every command changing the
experiment holds while it runs (`python -m tune_looped.run`, its `--resume`, `python -m tune_looped.upgrade`).

The lock holds its holder's pid, host, command, start time and a heartbeat, which a daemon thread refreshes
every HEARTBEAT_S seconds. A command that finds the lock held by a live holder is refused with one line naming
it. Whether the holder lives is the pid's to say on the holder's own host (psutil: the same pid with the same
create time), where a runner suspended or slow to beat keeps its lock; on another host, only the heartbeat can
say, and one older than STALE_S seconds is taken over, with a warning.

On a local path the lock is created with O_CREAT | O_EXCL, so of two runners started together exactly one gets
it. A URI (s3://, gs://) has no atomic create: there the lock is a best-effort marker, written after a check
that none is held, and two runners started within the same second may both pass the check.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from trainers import atomic
from trainers.records import RUNNER_DIR
from tune_looped.cluster import is_uri, process_identity, runner_alive, warn
from tune_looped.space import SpaceError

LOCK_FILE = "lock"
HEARTBEAT_S = 5.0
STALE_S = 60.0


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    identity: str  # cluster.process_identity: the pid and its create time
    command: str
    started: float
    heartbeat: float
    token: str  # tells this holder's lock from a later one of the same process

    def describe(self, now: float) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return (f"pid {self.pid} on {self.host} ({self.command}, started {started}, last heartbeat "
                f"{max(0.0, now - self.heartbeat):.0f} s ago)")


def _parse(text: str | None) -> Holder | None:
    try:
        return Holder(**json.loads(text))
    except (TypeError, ValueError):
        return None


class _LocalFile:
    """The lock on a local filesystem: an exclusive create, replaced whole on each heartbeat."""

    def __init__(self, path: str):
        self.path = Path(path)

    def create(self, text: str) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        atomic.sync_folder(self.path.parent)
        return True

    def read(self) -> str | None:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):
            return ""

    def age(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def replace(self, text: str) -> None:
        atomic.write_text(self.path, text)

    def take_over(self, stale: str, text: str) -> bool:
        """Move the stale lock aside and create ours; False when another runner changed the lock meanwhile."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale.{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return self.create(text)
        if aside.read_text(errors="replace") != stale:
            # a runner that took the stale lock over a moment before this one: its lock goes back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink()
            return False
        aside.unlink()
        return self.create(text)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # only when the runner keeps nothing else there


class _Marker:
    """The lock on a URI (pyarrow's filesystems): check, then write; there is no exclusive create."""

    def __init__(self, uri: str):
        import pyarrow.fs

        self._fs, self.path = pyarrow.fs.FileSystem.from_uri(uri)
        self._not_found = pyarrow.fs.FileType.NotFound

    def create(self, text: str) -> bool:
        if self._fs.get_file_info(self.path).type != self._not_found:
            return False
        self.replace(text)
        return True

    def read(self) -> str | None:
        if self._fs.get_file_info(self.path).type == self._not_found:
            return None
        with self._fs.open_input_stream(self.path) as f:
            return f.read().decode(errors="replace")

    def age(self) -> float:
        modified = self._fs.get_file_info(self.path).mtime
        return time.time() - modified.timestamp() if modified else 0.0

    def replace(self, text: str) -> None:
        self._fs.create_dir(posixpath.dirname(self.path))
        with self._fs.open_output_stream(self.path) as f:
            f.write(text.encode())

    def take_over(self, stale: str, text: str) -> bool:
        self.replace(text)
        return True

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self._fs.delete_file(self.path)


def lock_location(experiment: str) -> str:
    """Where the lock of the experiment folder (a path or a URI) lives."""
    return f"{experiment.rstrip('/')}/{RUNNER_DIR}/{LOCK_FILE}" if is_uri(experiment) \
        else str(Path(experiment) / RUNNER_DIR / LOCK_FILE)


class ExperimentLock:
    """`with ExperimentLock(experiment, command):` runs the block as the experiment's one holder, or raises
    SpaceError naming the live holder."""

    def __init__(self, experiment, command: str):
        location = lock_location(str(experiment))
        self.location = location
        self._store = _Marker(location) if is_uri(location) else _LocalFile(location)
        self._command = command
        self._holder: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_free(self) -> None:
        """SpaceError naming the live holder of the lock, if it has one; nothing is written."""
        text = self._store.read()
        if text is not None:
            self._why_free(text)

    def _why_free(self, text: str) -> str:
        """Why the lock holding `text` is free (its holder gone); SpaceError naming the holder while it lives."""
        holder = _parse(text)
        gone = self._gone(holder, self._store.age())
        if gone is None:
            described = holder.describe(time.time()) if holder else "a runner writing its lock at this moment"
            raise SpaceError(f"{self.location}: the experiment is in use by {described}; wait for it to end, "
                             "or stop it")
        return gone

    def _gone(self, holder: Holder | None, age: float) -> str | None:
        """Why the holder of a lock is gone, or None while it lives."""
        if holder is None:
            # cut short while it was written: only its age can tell a runner starting now from one that died
            return f"the lock does not read and was written {age:.0f} s ago" if age > STALE_S else None
        if holder.host == socket.gethostname():
            return None if runner_alive(holder.identity) else f"pid {holder.pid} is gone"
        silent = time.time() - holder.heartbeat
        return f"no heartbeat for {silent:.0f} s" if silent > STALE_S else None

    def acquire(self) -> ExperimentLock:
        now = time.time()
        self._holder = Holder(pid=os.getpid(), host=socket.gethostname(), identity=process_identity(os.getpid()),
                              command=self._command, started=now, heartbeat=now, token=secrets.token_hex(8))
        text = json.dumps(asdict(self._holder))
        for _ in range(3):
            if self._store.create(text):
                break
            current = self._store.read()
            if current is None:  # released since the create failed
                continue
            gone = self._why_free(current)
            if self._store.take_over(current, text):
                holder = _parse(current)
                warn(f"{self.location}: took over the lock of "
                     f"{holder.describe(time.time()) if holder else 'an unreadable holder'}: {gone}")
                break
        else:
            raise SpaceError(f"{self.location}: other runners are taking this experiment's lock over; try again")
        self._thread = threading.Thread(target=self._beat, name="experiment-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            # a full disk or a storage that does not answer fails a beat; the lock keeps its older heartbeat, and
            # the next beat tries again
            with contextlib.suppress(OSError):
                if not self._owned():
                    warn(f"{self.location}: another runner took this experiment's lock over; its heartbeat stops")
                    return
                self._holder = Holder(**{**asdict(self._holder), "heartbeat": time.time()})
                self._store.replace(json.dumps(asdict(self._holder)))

    def _owned(self) -> bool:
        current = _parse(self._store.read())
        return current is not None and self._holder is not None and current.token == self._holder.token

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(OSError):
            if self._owned():
                self._store.remove()
        self._holder = None

    def __enter__(self) -> ExperimentLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

