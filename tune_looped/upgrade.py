"""`python -m tune_looped.upgrade EXPERIMENT_DIR`: the trial records of an experiment run by an earlier runner.

Runners before the trial record left each trial's hypotheses and values only in Ray's params.json. This writes
the `trial.json` the analysis reads, decoded from params.json, into every trial folder that lacks one, so that
results from before the change are not lost. Folders that have a record are left as they are. It holds the
experiment's lock (`tune_looped.lock`) while it writes, so it never writes beside a runner.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from analysis.experiment import read_result_rows
from trainers.cli import OneLineArgumentParser
from trainers.layout import PARAMS_FILE, RESULT_FILE, TRIAL_RECORD, trial_folders
from trainers.records import write_trial_record
from tune_looped.lock import ExperimentLock
from tune_looped.space import SpaceError
from tune_looped.trials import trial_record


def upgrade(experiment_dir: Path) -> tuple[int, list[str]]:
    """(records written, one line per trial folder whose params.json could not be read)."""
    written, skipped = 0, []
    for folder in trial_folders(experiment_dir):
        params_file = folder / PARAMS_FILE
        if (folder / TRIAL_RECORD).exists() or not params_file.exists():
            continue
        try:
            params = json.loads(params_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            skipped.append(f"{params_file}: unreadable ({err}); no record written")
            continue
        # the id the analysis used before the record: the trial's result rows, else the folder's name
        rows = read_result_rows(folder / RESULT_FILE)
        trial_id = next((str(row["trial_id"]) for row in rows if row.get("trial_id")), folder.name)
        write_trial_record(folder, trial_record(trial_id, params))
        written += 1
    return written, skipped


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m tune_looped.upgrade", description=__doc__.splitlines()[0])
    parser.add_argument("experiment_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.experiment_dir.is_dir():
        print(f"error: {args.experiment_dir}: no such experiment directory", file=sys.stderr)
        return 2
    try:
        with ExperimentLock(args.experiment_dir, "python -m tune_looped.upgrade"):
            written, skipped = upgrade(args.experiment_dir)
    except SpaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in skipped:
        print(f"warning: {line}", file=sys.stderr)
    print(f"{written} trial record(s) written under {args.experiment_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
