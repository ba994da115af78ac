"""One runner per experiment: a lock file, `<experiment>/.tune_looped/lock`, that every command changing the
experiment holds while it runs (`python -m tune_looped.run`, its `--resume`, `python -m tune_looped.upgrade`).

The lock holds its holder's pid, host, command, start time and a heartbeat, which a daemon thread refreshes
every HEARTBEAT_S seconds. A command that finds the lock held by a live holder is refused with one line naming
it. Whether the holder lives is the pid's to say on the holder's own host (psutil: the same pid with the same
create time), where a runner suspended or slow to beat keeps its lock. On another host only the heartbeat can
say, and its times are that host's clock, which may be hours off this one's: so they are never compared with
this host's clock. The reader watches the lock instead, on its own monotonic clock: a change is a heartbeat and
the holder lives; a lock unchanged for STALE_S seconds of watching is taken over, with a warning. A single read
never finds a lock stale, so taking over a dead holder of another host costs about STALE_S seconds of waiting.

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
from trainers.layout import RUNNER_DIR
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

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        if self.host != socket.gethostname():
            # the times are the other host's clock: the heartbeat's age by this one's would be off by their skew
            return f"pid {self.pid} on {self.host} ({self.command}, started {started} by its clock)"
        return (f"pid {self.pid} on {self.host} ({self.command}, started {started}, last heartbeat "
                f"{max(0.0, time.time() - self.heartbeat):.0f} s ago)")


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
        # the lock text this runner watches, when it first read it (its own monotonic clock), and whether it said
        # it waits: kept from check_free to acquire, so that a runner does not wait out a dead holder twice
        self._watched: str | None = None
        self._since = 0.0
        self._told = False

    def check_free(self, watch: bool = True) -> None:
        """SpaceError naming the live holder of the lock, if it has one; nothing is written. A holder on another
        host is watched until it beats (refused) or STALE_S seconds pass without a beat (free); with `watch`
        false it is let be, for a command that is refused anyway and need not wait to say so."""
        text = self._store.read()
        if text is None:
            return
        holder = _parse(text)
        if watch or (holder is not None and holder.host == socket.gethostname()):
            self._why_free(text)

    def _why_free(self, text: str) -> str | None:
        """Why the lock holding `text` is free (its holder gone), or None when it was released meanwhile;
        SpaceError naming the holder while it lives."""
        holder = _parse(text)
        if holder is not None and holder.host == socket.gethostname():
            if runner_alive(holder.identity):
                raise self._in_use(holder.describe())
            return f"pid {holder.pid} is gone"
        return self._watch(text)

    def _watch(self, text: str) -> str | None:
        """Why the lock holding `text` (of another host, or unreadable) is free: it stayed as it is for STALE_S
        seconds of this runner's watch; None when it was released meanwhile, SpaceError when it changed."""
        if text != self._watched:
            self._watched, self._since, self._told = text, time.monotonic(), False
        holder = _parse(text)
        while (silent := time.monotonic() - self._since) < STALE_S:
            if not self._told and silent > 2 * HEARTBEAT_S:
                # a live holder beats within HEARTBEAT_S: from here on it looks dead, and the wait is the cost
                what = f"the heartbeat of {holder.describe()}" if holder else "the lock, which does not read,"
                warn(f"{self.location}: {what} has not changed for {silent:.0f} s; a lock of another host is taken "
                     f"over only once it has not changed for {STALE_S:.0f} s of watching, as that host's clock "
                     f"cannot be compared with this one's: waiting {STALE_S - silent:.0f} s more")
                self._told = True
            time.sleep(min(HEARTBEAT_S / 5, STALE_S - silent))
            current = self._store.read()
            if current is None:
                return None
            if current != text:
                new = _parse(current)
                raise self._in_use(f"{new.describe()}, whose heartbeat this runner saw change" if new
                                   else "a runner writing its lock at this moment")
        if holder is None:
            return f"the lock does not read and did not change in {silent:.0f} s"
        return f"its heartbeat did not change in {silent:.0f} s"

    def _in_use(self, described: str) -> SpaceError:
        return SpaceError(f"{self.location}: the experiment is in use by {described}; wait for it to end, "
                          "or stop it")

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
            if gone is None:  # released while this runner watched it
                continue
            if self._store.take_over(current, text):
                holder = _parse(current)
                warn(f"{self.location}: took over the lock of "
                     f"{holder.describe() if holder else 'an unreadable holder'}: {gone}")
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

