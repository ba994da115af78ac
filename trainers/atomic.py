"""Files written whole or not at all: every file the project writes itself goes through `replacing`.

The content goes to a temporary file in the target's folder (a rename is atomic only within one filesystem),
is flushed to the disk, and is renamed over the target; the folder is then synced so that the rename itself
survives a power cut. A crash or a full disk leaves the earlier file, or none, never half of one.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

# a write refused for want of space: the disk's, or the user's quota on it
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem `path` (or its nearest existing parent) is on, as a full disk names it."""
    path = next(p for p in (path, *path.parents) if p.exists()).resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def free_space(role: str, path: Path, free: int) -> str:
    """How a full disk names a place: `the storage /x (the filesystem at /m): 0 MiB free`."""
    return f"{role} {path} (the filesystem at {mount_point(path)}): {free / 2**20:.0f} MiB free"


def _fsync(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(folder: Path) -> None:
    """Make the names in `folder` durable (a rename, a new file); a no-op where the platform cannot."""
    with contextlib.suppress(OSError):
        _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


@contextlib.contextmanager
def replacing(path):
    """Yields a temporary path beside `path` to write to; on leaving without an error it replaces `path`.

    The temporary name keeps the target's suffix, which writers such as matplotlib read the format from, and
    starts with a dot, so that a reader globbing for the target's name never sees it. On an error it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    # created here, not by mkstemp, so that the file gets the umask's permissions as a plain open would
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def write_bytes(path, data: bytes) -> Path:
    with replacing(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode())
