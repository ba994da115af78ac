"""Full disks for real: a small tmpfs of the test's own (as root; the test is skipped otherwise), filled by a file."""
import contextlib
import os
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(folder: Path, size: str):
    """A tmpfs of `size` mounted at `folder`, unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a tmpfs of its own, which only root can mount")
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed ({mounted.stderr.strip()}): no privilege to mount here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write into `folder` until its filesystem refuses; the file that holds the space."""
    filler = folder / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 2**20)
            f.flush()
    return filler
