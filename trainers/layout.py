"""An experiment folder's layout: the name of every file and folder in it, and every rule of where things are.

The runner writes an experiment folder, Ray Tune writes into it, and the analysis, the repair, the rebuild and the
upgrade read it; each of them asks here instead of spelling a name or globbing a pattern itself, so what counts
as a trial folder, or where Tune keeps its state, is said once. Ray Tune keeps its own file names as constants of
one module; this one does the same for the whole folder, Tune's names, the runner's and the analysis' alike:

    <experiment>/                   the experiment, and its first run (FIRST_RUN)
        space.yaml                  the runner's record of the space (trainers.records)
        tuner.pkl, experiment_state-<session>.json, basic-variant-state-<session>.json, ...
                                    Tune's state of the run
        <trial>/                    a trial folder: trial.json (the runner's), params.json, result.json,
                                    error.txt (Ray's), checkpoint_NNNNNN/checkpoint.pt, wandb/ (the trial's W&B run)
        extend-N/                   an extension: a Tune run of its own, with its state and trial folders
        .tune_looped/               the runner's: its lock, the kept copies of Tune's state and hard links to the
                                    checkpoints they name, replaced/<time>/ (what a repair or rebuild set aside);
                                    an extension's folder has one of its own for its state
        curves.parquet, summary.parquet, evaluation.parquet, results.parquet, plots/, REPORT.md
                                    the analysis' frames, figures and report
        wandb/                      the W&B analysis run, offline

Nothing here reads a file's contents: only names and where they are. It imports nothing but the standard library,
so that a dry run can ask it without torch or Ray.
"""
from __future__ import annotations

import re
from pathlib import Path

# the runner's records (their contents: trainers.records)
SPACE_RECORD = "space.yaml"
TRIAL_RECORD = "trial.json"
# the runner's own folder in an experiment and in an extension: never a trial folder, so every reader of trials
# passes it by
RUNNER_DIR = ".tune_looped"
REPLACED_DIR = "replaced"  # in RUNNER_DIR: what a repair or a rebuild set aside, in a folder per time
KEPT_CHECKPOINTS_DIR = "checkpoints"  # in RUNNER_DIR: hard links to the checkpoints the kept state names

# an experiment's first Tune run is at its root; each `--extend` is a Tune run of its own in `extend-N` beside
# the first run's trial folders (Tune keeps one Tune experiment's state at that experiment's root)
FIRST_RUN = "."
EXTENSION_PREFIX = "extend-"

# Tune's files of a run: what `Tuner.restore` reads (tuner.pkl and the newest state with its search's state)
# and the searchers' and callbacks' state beside them
TUNER_FILE = "tuner.pkl"
STATE_PREFIX = "experiment_state-"
SEARCH_PREFIX = "basic-variant-state-"
TUNE_FILE_PATTERNS = (TUNER_FILE, f"{STATE_PREFIX}*.json", f"{SEARCH_PREFIX}*.json", "search_gen_state-*.json",
                      "searcher-state-*.pkl", "callback-states-*.pkl")
# Ray's and Tune's files of a trial
PARAMS_FILE = "params.json"  # there from the trial's start, before the runner's record may be
RESULT_FILE = "result.json"
ERROR_FILES = ("error.txt", "error.pkl")  # a failed attempt of the trial
CHECKPOINT_PREFIX = "checkpoint_"
CHECKPOINT_NAME = rf"{CHECKPOINT_PREFIX}\d{{6}}"  # the folder Tune makes of a checkpoint the trial reported
CHECKPOINT_FILE = "checkpoint.pt"  # in every checkpoint folder (trainers.checkpoint)

# the analysis' files, in the experiment folder or the folder its `--out` names
CURVES_FRAME, SUMMARY_FRAME = "curves", "summary"  # written as .parquet or .csv
EVALUATION_FILE = "evaluation.parquet"
RESULTS_FILE = "results.parquet"
PLOTS_DIR = "plots"
REPORT_FILE = "REPORT.md"
# W&B's folder in the directory it is given (a trial's folder; the experiment's, for the analysis run)
WANDB_DIR = "wandb"
OFFLINE_RUN_PREFIX = "offline-run-"


def extension_folder(number: int) -> str:
    return f"{EXTENSION_PREFIX}{number}"


def run_folders(experiment_dir) -> list[Path]:
    """The folders of the experiment's Tune runs on disk: its root, then each `extend-N` by N."""
    root = Path(experiment_dir)
    numbered = [(int(p.name.removeprefix(EXTENSION_PREFIX)), p) for p in root.glob(f"{EXTENSION_PREFIX}*")
                if p.is_dir() and p.name.removeprefix(EXTENSION_PREFIX).isdigit()]
    return [root, *(p for _, p in sorted(numbered))]


def run_trial_folders(run_dir) -> list[Path]:
    """The trial folders of the Tune run at `run_dir` (the experiment's root or an extension's folder): the folders
    right below it that hold the runner's record or Ray's params.json (a trial that started before its record was
    written, or one of a runner older than the record). The run's neighbours are none: the extensions, the analysis'
    plots/, W&B's folder, the runner's own folder."""
    run_dir = Path(run_dir)
    return sorted({p.parent for name in (TRIAL_RECORD, PARAMS_FILE) for p in run_dir.glob(f"*/{name}")})


def trial_folders(experiment_dir) -> list[Path]:
    """Every trial folder of the experiment, of each of its runs (`run_trial_folders`), in path order."""
    return sorted(folder for run in run_folders(experiment_dir) for folder in run_trial_folders(run))


def experiments_in(folder) -> list[Path]:
    """The experiments in `folder` and below it, at any depth (a storage holds one per name): the folders holding
    a space record, outside the runner's own folders."""
    root = Path(folder)
    return sorted(p.parent for p in root.rglob(SPACE_RECORD) if RUNNER_DIR not in p.relative_to(root).parts)


def checkpoint_folders(trial_dir) -> list[Path]:
    """The trial's checkpoint folders that Tune made (`checkpoint_NNNNNN`), oldest first."""
    return sorted(p for p in Path(trial_dir).glob(f"{CHECKPOINT_PREFIX}*")
                  if p.is_dir() and re.fullmatch(CHECKPOINT_NAME, p.name))


def checkpoint_folder(trial_dir, index: int) -> Path:
    """The folder of the trial's checkpoint `index` as Tune names it (the first reported one is 0)."""
    return Path(trial_dir) / f"{CHECKPOINT_PREFIX}{index:06d}"


def checkpoint_files(trial_dir) -> list[Path]:
    """The checkpoint files of the trial's checkpoint folders, oldest folder first; a folder Tune is still
    copying may have none yet."""
    return [file for folder in checkpoint_folders(trial_dir) if (file := folder / CHECKPOINT_FILE).is_file()]


def state_files(run_dir) -> list[Path]:
    """Tune's saved states of the trials in `run_dir` (a run's folder, or the runner's copies), one per session."""
    return sorted(Path(run_dir).glob(f"{STATE_PREFIX}*.json"))


def search_files(run_dir) -> list[Path]:
    """Tune's saved states of the search (which trials it has generated) in `run_dir`, one per session."""
    return sorted(Path(run_dir).glob(f"{SEARCH_PREFIX}*.json"))


def newest_state(run_dir) -> Path | None:
    """The state file Tune restores from: the greatest name, as Tune picks it (the names hold a date)."""
    return max(state_files(run_dir), default=None)


def search_state_of(state: Path) -> Path:
    """The search's state saved with the trials' state `state` (the same session in its name)."""
    return state.with_name(SEARCH_PREFIX + state.name.removeprefix(STATE_PREFIX))


def restorable(run_dir) -> bool:
    """Whether Tune saved what `Tuner.restore` needs of the run: tuner.pkl and a state."""
    return (Path(run_dir) / TUNER_FILE).exists() and newest_state(run_dir) is not None


def tune_files(run_dir) -> list[Path]:
    """Every file Tune keeps of the run in `run_dir` beside its trial folders (or the runner's copies of them)."""
    return sorted(p for pattern in TUNE_FILE_PATTERNS for p in Path(run_dir).glob(pattern))


def staging_folder(session, experiment_name: str) -> Path | None:
    """Where Tune saves the state of the Tune experiment `experiment_name` in the Ray session `session` before it
    copies it into the run's folder; the newest such, or None before its first save."""
    return max(Path(session).glob(f"artifacts/*/{experiment_name}/driver_artifacts"), default=None)


def runner_folder(run_dir) -> Path:
    """The runner's own folder of a run's folder (the experiment's root holds the lock there too)."""
    return Path(run_dir) / RUNNER_DIR


def kept_checkpoints(run_dir) -> Path:
    """Where the runner keeps hard links to the checkpoints its copy of the run's state names, as
    `<trial folder>/<checkpoint folder>`."""
    return runner_folder(run_dir) / KEPT_CHECKPOINTS_DIR


def kept_checkpoint_links(run_dir) -> list[Path]:
    return sorted(kept_checkpoints(run_dir).glob("*/*"))


def replaced_folder(run_dir, stamp: str) -> Path:
    """Where a repair or a rebuild at the time `stamp` sets aside what it replaces of the run in `run_dir`."""
    return runner_folder(run_dir) / REPLACED_DIR / stamp


def set_aside_copies(run_dir, name: str) -> list[Path]:
    """The folders `name` of the run in `run_dir` that repairs and rebuilds set aside, oldest first."""
    return sorted(runner_folder(run_dir).glob(f"{REPLACED_DIR}/*/{name}"))


def frame_file(out_dir, frame: str, fmt: str = "parquet") -> Path:
    """The file of the analysis' frame `frame` (CURVES_FRAME, SUMMARY_FRAME) in format `fmt`."""
    return Path(out_dir) / f"{frame}.{fmt}"


def figures(out_dir) -> list[Path]:
    """The analysis' figures in `out_dir`'s plots folder."""
    return sorted((Path(out_dir) / PLOTS_DIR).glob("*.png"))


def offline_runs(directory, run_id: str = "*") -> list[Path]:
    """The offline runs W&B wrote into `directory` (its `wandb/` folder), of one run id or of all."""
    return sorted(Path(directory, WANDB_DIR).glob(f"{OFFLINE_RUN_PREFIX}*-{run_id}"))


def experiment_offline_runs(experiment_dir) -> dict[str, list[Path]]:
    """An experiment's offline W&B runs, by the glob pattern relative to it that finds them (what a shell expands
    again): the analysis run's, then the trials' of the first run, then those of the extensions; a pattern that
    finds none is left out."""
    run = f"{WANDB_DIR}/{OFFLINE_RUN_PREFIX}*"
    found = {pattern: sorted(Path(experiment_dir).glob(pattern))
             for pattern in (run, f"*/{run}", f"{EXTENSION_PREFIX}*/*/{run}")}
    return {pattern: runs for pattern, runs in found.items() if runs}
