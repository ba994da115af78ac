"""Tune's saved state of an experiment, checked before `--resume` hands it to Tune, and a good copy kept.

Tune saves its state into the experiment folder as `experiment_state-<session>.json` (every 10 s or so, and when
trials checkpoint) and `tuner.pkl` (once, at the start), copying them from its staging folder without an
atomic rename. A kill or a full disk can leave the newest state file cut short, and Tune, which restores from
the newest, then starts the experiment again as a new one with a bare trial. So while a sweep runs, `StateKeeper`
copies each state file that parses, and tuner.pkl, into `<experiment>/.tune_looped/` (whole or not at all); a
resume that finds the folder's file damaged puts the copy back in its place, and refuses when there is none.

Only a local experiment folder is checked and copied: on a URI, Tune's own files are all there is.
"""
from __future__ import annotations

import contextlib
import json
import pickletools
import threading
import time
from pathlib import Path

from trainers import atomic
from trainers.records import RUNNER_DIR

STATE_PATTERN = "experiment_state-*.json"
TUNER_FILE = "tuner.pkl"
KEEP_EVERY_S = 2.0


def newest_state(folder: Path) -> Path | None:
    """The state file Tune restores from: the greatest name, as Tune picks it (the names hold a date)."""
    return max(folder.glob(STATE_PATTERN), default=None)


def damage(file: Path, data: bytes | None = None) -> str | None:
    """Why Tune could not restore from `file` (a state file or tuner.pkl), or None when it can.

    tuner.pkl is walked opcode by opcode (pickletools), which finds a pickle cut short without running it."""
    try:
        data = file.read_bytes() if data is None else data
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if not data:
        return "empty (0 bytes)"
    if file.name == TUNER_FILE:
        try:
            for _ in pickletools.genops(data):
                pass
        except ValueError:
            return f"cut short ({len(data)} bytes, not a whole pickle)"
        return None
    try:
        state = json.loads(data)
    except ValueError:
        return f"cut short or not JSON ({len(data)} bytes)"
    if not (isinstance(state, dict) and {"trial_data", "runner_data"} <= state.keys()):
        return "not Tune's experiment state (no trial_data and runner_data)"
    return None


def copies_of(experiment_dir: Path) -> Path:
    return Path(experiment_dir) / RUNNER_DIR


def kept_copy(experiment_dir: Path, file: Path) -> Path | None:
    """The good copy that stands in for `file`: tuner.pkl's own, or the newest state file kept."""
    folder = copies_of(experiment_dir)
    copy = folder / TUNER_FILE if file.name == TUNER_FILE else newest_state(folder)
    return copy if copy is not None and copy.is_file() and damage(copy) is None else None


class StateKeeper:
    """While a sweep runs, a daemon thread keeps in `.tune_looped/` a copy of Tune's newest state file that
    parses and of tuner.pkl; `stop` takes a last look, after Tune's final save."""

    def __init__(self, experiment_dir: Path, every: float = KEEP_EVERY_S):
        self.experiment_dir = Path(experiment_dir)
        self._every = every
        self._seen: dict[str, tuple] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tune-state-keeper", daemon=True)

    def start(self) -> StateKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.keep()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.keep()

    def keep(self) -> None:
        """Copy each of Tune's files that changed since the last look and parses now."""
        for file in (newest_state(self.experiment_dir), self.experiment_dir / TUNER_FILE):
            # a file being copied in, or a full disk: this look keeps nothing, the earlier copy stays
            with contextlib.suppress(OSError):
                if file is not None:
                    self._keep(file)

    def _keep(self, file: Path) -> None:
        status = file.stat()
        seen = (file.name, status.st_mtime_ns, status.st_size)
        if self._seen.get(file.suffix) == seen:
            return
        data = file.read_bytes()
        if damage(file, data) is not None:
            return
        folder = copies_of(self.experiment_dir)
        atomic.write_bytes(folder / file.name, data)
        if file.name != TUNER_FILE:
            for older in folder.glob(STATE_PATTERN):
                if older.name != file.name:
                    older.unlink()
        self._seen[file.suffix] = seen


def check_state(experiment_dir: Path) -> list[tuple[Path, str, Path | None]]:
    """(file, what is wrong, its good copy or None) for each of Tune's files a resume would read that is damaged."""
    experiment_dir = Path(experiment_dir)
    found = []
    for file in (newest_state(experiment_dir), experiment_dir / TUNER_FILE):
        problem = damage(file) if file is not None else None
        if problem:
            found.append((file, problem, kept_copy(experiment_dir, file)))
    return found


def restore(damaged: list[tuple[Path, str, Path | None]]) -> list[str]:
    """Put each good copy in place of the damaged file; one line per file, saying what was done."""
    lines = []
    for file, problem, copy in damaged:
        atomic.write_bytes(file, copy.read_bytes())
        kept = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(copy.stat().st_mtime))
        lines.append(f"{file} was {problem}; restored the copy of {copy.name} kept at {kept}")
    return lines
