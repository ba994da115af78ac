"""Tune's saved state of an experiment, checked before `--resume` hands it to Tune, and a good copy kept.

Tune restores an experiment from three files in its folder: `experiment_state-<session>.json` (the trials),
`basic-variant-state-<session>.json` (how far the search got: which trials it has generated) and `tuner.pkl`.
It saves them into a staging folder of the Ray session and copies them into the experiment folder every 10 s or
so, without an atomic rename; a kill or a full disk can leave them cut short, and Tune, which restores from the
newest, then starts the experiment again as a new one with a bare trial.

So while a sweep runs, `StateKeeper` copies into `<experiment>/.tune_looped/` (whole or not at all) each state
that parses, taken from the staging folder as a pair written by one save (the trials and the search that
generated them), and tuner.pkl. A resume that finds the folder's files damaged puts the copies in their place,
setting aside the folders of the run's trials that the restored state does not know (they started after the copy,
and the search generates them again); nothing else of the experiment moves (its analysis, W&B runs, extensions).
Without a copy it is refused. Only a local experiment folder is checked and kept.

A kept state names each trial's checkpoints as they were when it was saved, and Tune deletes a trial's older
checkpoints as it writes new ones (`num_to_keep`), so the keeper also holds hard links to the checkpoints its copy
names (no space of their own while Tune still has them); the repair puts back those Tune has deleted since, without
which Tune could not restore those trials.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickletools
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainers import atomic
from trainers.layout import (CHECKPOINT_NAME, STATE_PREFIX, TUNER_FILE, kept_checkpoint_links, kept_checkpoints,
                             newest_state, replaced_folder, run_trial_folders, runner_folder, search_files,
                             search_state_of, staging_folder, state_files)

KEEP_EVERY_S = 2.0
# Tune writes a trial's checkpoint manager into the state as a cloudpickle in hex ({"_type": ..., "value": hex});
# its checkpoints' folder names are plain bytes in it
NAMED_CHECKPOINT = re.compile(CHECKPOINT_NAME.encode())
HEX = re.compile(r"[0-9a-f]*")


def damage(file: Path, data: bytes | None = None) -> str | None:
    """Why Tune could not restore from `file` (a state file, the search's state or tuner.pkl), or None when it can.

    The pickles are walked opcode by opcode (pickletools), which finds one cut short without running it."""
    try:
        data = file.read_bytes() if data is None else data
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if not data:
        return "empty (0 bytes)"
    if not file.name.startswith(STATE_PREFIX):
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


def named_checkpoints(state_data: bytes) -> set[Path]:
    """The checkpoint folders (relative to the experiment folder) that Tune's state `state_data` names, those a
    restore from it may ask for."""
    named = set()
    for trial, runtime in json.loads(state_data)["trial_data"]:
        folder = json.loads(trial)["relative_logdir"]
        manager = json.loads(runtime).get("checkpoint_manager")
        pickled = manager.get("value") if isinstance(manager, dict) else None
        if isinstance(pickled, str) and HEX.fullmatch(pickled) and len(pickled) % 2 == 0:
            named |= {Path(folder, name.decode()) for name in NAMED_CHECKPOINT.findall(bytes.fromhex(pickled))}
    return named


def set_aside(experiment_dir: Path, paths) -> Path:
    """Move `paths` of the experiment into `.tune_looped/replaced/<time>/`, where no reader of trials looks, each
    at its place relative to the experiment folder."""
    aside = replaced_folder(experiment_dir, time.strftime("%Y%m%d-%H%M%S"))
    for path in paths:
        target = aside / Path(path).relative_to(experiment_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
    return aside


def _read_pair(state: Path) -> tuple[bytes, bytes | None] | None:
    """The trials' state and the search's state of one save in Tune's staging folder, or None while a save is
    under way. A save writes the trials' state (not atomically), then the search's (atomically): a pair is one
    save's when the trials' file parses and was not written after the search's."""
    search = search_state_of(state)
    try:
        with open(search, "rb") as f:
            search_status, search_data = os.fstat(f.fileno()), f.read()
    except FileNotFoundError:
        search_status = search_data = None  # a search too large to save (Tune's lazy grids)
    with open(state, "rb") as f:
        data = f.read()
        written = os.fstat(f.fileno()).st_mtime_ns
    if damage(state, data) is not None:
        return None
    if search_status is not None and (written > search_status.st_mtime_ns
                                      or search.stat().st_ino != search_status.st_ino):
        return None
    return data, search_data


class StateKeeper:
    """While a sweep runs, a daemon thread keeps in `.tune_looped/` the newest whole pair of Tune's state files
    from its staging folder (under `session/artifacts/`) and a copy of tuner.pkl; `stop` takes a last look,
    after Tune's final save."""

    def __init__(self, experiment_dir: Path, session: Path, every: float = KEEP_EVERY_S):
        self.experiment_dir = Path(experiment_dir)
        self._session = Path(session)
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
        """Copy what changed since the last look and reads whole now; a full disk keeps the earlier copies."""
        with contextlib.suppress(OSError):
            staging = staging_folder(self._session, self.experiment_dir.name)
            state = newest_state(staging) if staging is not None else None
            if state is not None and self._changed(state):
                self._keep_pair(state)
        with contextlib.suppress(OSError):
            tuner = self.experiment_dir / TUNER_FILE
            if self._changed(tuner):
                data = tuner.read_bytes()
                if damage(tuner, data) is None:
                    atomic.write_bytes(runner_folder(self.experiment_dir) / TUNER_FILE, data)
                    self._seen[tuner.name] = self._status(tuner)

    @staticmethod
    def _status(file: Path) -> tuple:
        status = file.stat()
        return file.name, status.st_mtime_ns, status.st_size

    def _changed(self, file: Path) -> bool:
        return self._seen.get(file.name) != self._status(file)

    def _keep_pair(self, state: Path) -> None:
        status = self._status(state)
        pair = _read_pair(state)
        if pair is None:
            return
        data, search_data = pair
        folder = runner_folder(self.experiment_dir)
        # the search's state first: a trials' state kept without it would pair with an older search
        if search_data is not None:
            atomic.write_bytes(folder / search_state_of(state).name, search_data)
        named = named_checkpoints(data)
        self._link_checkpoints(named)
        atomic.write_bytes(folder / state.name, data)
        for older in [*state_files(folder), *search_files(folder)]:
            if older.name not in (state.name, search_state_of(state).name):
                older.unlink()
        self._unlink_checkpoints(named)
        self._seen[state.name] = status

    def _link_checkpoints(self, named: set[Path]) -> None:
        """Hard links to the checkpoints `named`, made before the state that names them is kept. One that cannot be
        linked (a filesystem without hard links, a folder Tune deletes meanwhile) is not kept; the state still is."""
        kept = kept_checkpoints(self.experiment_dir)
        for relative in named:
            source, target = self.experiment_dir / relative, kept / relative
            if source.is_dir() and not target.exists():
                partial = target.with_name(f"{target.name}.partial")
                try:
                    shutil.rmtree(partial, ignore_errors=True)
                    shutil.copytree(source, partial, copy_function=os.link)
                    partial.rename(target)
                except OSError:
                    shutil.rmtree(partial, ignore_errors=True)

    def _unlink_checkpoints(self, named: set[Path]) -> None:
        """Let go of the links of checkpoints that the state kept now does not name; only once it is written, since
        until then the state kept before may still be the one a repair restores."""
        kept = kept_checkpoints(self.experiment_dir)
        for link in kept_checkpoint_links(self.experiment_dir):
            if link.relative_to(kept) not in named:
                shutil.rmtree(link, ignore_errors=True)


@dataclass
class Repair:
    """What a resume does about Tune's state: the damaged files, what stands in for each, the trial folders set
    aside; `unrepairable`, the damaged files that have no good copy."""
    damaged: list[tuple[Path, str]] = field(default_factory=list)
    copies: dict[Path, Path] = field(default_factory=dict)  # damaged or stale file -> good copy
    strangers: list[Path] = field(default_factory=list)  # trial folders the restored state does not know
    checkpoints: list[Path] = field(default_factory=list)  # kept checkpoints the restored state names, gone since
    lost: list[Path] = field(default_factory=list)  # checkpoints it names, gone and not kept
    unrepairable: list[tuple[Path, str]] = field(default_factory=list)


def plan_repair(experiment_dir: Path) -> Repair:
    """Check the files Tune restores from (the newest state and its search's state, tuner.pkl) and find a good
    copy for each damaged one; reads only."""
    experiment_dir, kept = Path(experiment_dir), runner_folder(experiment_dir)
    repair = Repair()
    state = newest_state(experiment_dir)
    tuner = experiment_dir / TUNER_FILE
    if tuner.exists() and (problem := damage(tuner)):
        repair.damaged.append((tuner, problem))
        good = kept / TUNER_FILE
        if good.is_file() and damage(good) is None:
            repair.copies[tuner] = good
        else:
            repair.unrepairable.append((tuner, problem))
    if state is None:
        return repair
    search = search_state_of(state)
    problems = [(f, p) for f in (state, search) if f.exists() and (p := damage(f))]
    if not problems:
        return repair
    repair.damaged += problems
    good = newest_state(kept)
    good_search = search_state_of(good) if good is not None else None
    if good is None or damage(good) is not None or (search.exists() and not good_search.exists()):
        repair.unrepairable += problems
        return repair
    # the pair goes back under the names Tune restores from, which may be of a later session than the copy's
    repair.copies[state] = good
    if good_search.exists():
        repair.copies[search] = good_search
    data = good.read_bytes()
    known = {json.loads(trial)["relative_logdir"] for trial, _ in json.loads(data)["trial_data"]}
    repair.strangers = [folder for folder in run_trial_folders(experiment_dir) if folder.name not in known]
    gone = [relative for relative in named_checkpoints(data) if not (experiment_dir / relative).exists()]
    links = kept_checkpoints(experiment_dir)
    repair.checkpoints = sorted(relative for relative in gone if (links / relative).is_dir())
    repair.lost = sorted(relative for relative in gone if not (links / relative).is_dir())
    return repair


def apply_repair(experiment_dir: Path, repair: Repair) -> list[str]:
    """Put each good copy in place and set the strangers aside; one line per damaged file, saying what was done."""
    lines = []
    for file, problem in repair.damaged:
        copy = repair.copies[file]
        kept = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(copy.stat().st_mtime))
        lines.append(f"{file} was {problem}; restored the copy of {copy.name} kept at {kept}")
    for file, copy in repair.copies.items():
        atomic.write_bytes(file, copy.read_bytes())
    for relative in repair.checkpoints:
        shutil.move(kept_checkpoints(experiment_dir) / relative, experiment_dir / relative)
    if repair.checkpoints:
        lines.append(f"put back {len(repair.checkpoints)} checkpoint(s) that the restored state names and Tune had "
                     f"deleted since: " + ", ".join(map(str, repair.checkpoints)))
    if repair.lost:
        lines.append(f"{len(repair.lost)} checkpoint(s) that the restored state names are gone and were not kept ("
                     + ", ".join(map(str, repair.lost)) + "): Tune cannot restore their trials; should they fail, "
                     "`--resume --rebuild-state` runs them afresh")
    if repair.strangers:
        aside = set_aside(experiment_dir, repair.strangers)
        lines.append(f"set aside {len(repair.strangers)} trial folder(s) that the restored state does not know, in "
                     f"{aside}: their trials run again")
    return lines
