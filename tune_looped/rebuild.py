"""`--resume --rebuild-state`: an experiment whose Tune state cannot be used, continued from its trial folders.

The trial folders say what ran: each holds the runner's record (`trial.json`: hypotheses and values) and Tune's
result rows, which give each trial its status by `trainers.records.trial_status`. A trial the space record asks
for whose folder shows it ended (finished, stopped early or diverged) is kept, its folder untouched. Everything
else of the earlier Tune experiment (the folders of trials that did not end, Tune's state files, the runner's
copies of them) moves to `.tune_looped/replaced/<time>/`, and a fresh Tune experiment under the same name runs
the remaining trials, each from step 0, beside the kept folders. What is not the Tune experiment's (the analysis,
W&B's folder) stays where it is.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from trainers.layout import SPACE_RECORD, run_trial_folders, runner_folder, tune_files
from trainers.records import DIVERGED, FINISHED, STOPPED_EARLY, PlannedTrial, SpaceRecord
from tune_looped.space import Space, SpaceError
from tune_looped.state import set_aside
from tune_looped.tables import against_space, folder_row

KEPT = (FINISHED, STOPPED_EARLY, DIVERGED)


@dataclass(frozen=True)
class Rebuild:
    kept: tuple[Path, ...]  # the folders of ended trials, left as they are
    replaced: tuple[Path, ...]  # what moves aside: folders of trials that did not end, Tune's files
    remaining: tuple[PlannedTrial, ...]  # the trials the fresh experiment runs, one entry per run

    def space(self, space: Space) -> Space:
        """The space of the fresh experiment: the remaining trials, each entry once."""
        return replace(space, trials=self.remaining, num_samples=1)

    def set_aside(self, experiment_dir: Path) -> Path:
        return set_aside(experiment_dir, self.replaced)


def plan(experiment_dir: Path, space: Space, record: SpaceRecord) -> Rebuild:
    """What a rebuild keeps, sets aside and runs; a SpaceError when every trial asked for has ended."""
    folders = run_trial_folders(experiment_dir)
    # a folder whose record does not read has no row: nothing says which trial it was, so it is set aside
    found = [(folder, row) for folder in folders if (row := folder_row(folder, space)) is not None]
    ended = [(folder, row) for folder, row in found if row["status"] in KEPT]
    unasked, remaining = against_space([row for _, row in ended], record)
    kept = [(folder, row) for folder, row in ended if not any(row is other for other in unasked)]
    if not remaining:
        raise SpaceError(f"--rebuild-state: every trial {experiment_dir / SPACE_RECORD} asks for has ended; "
                         "there is nothing to run")
    replaced = sorted(set(folders) - {folder for folder, _ in kept})
    return Rebuild(kept=tuple(folder for folder, _ in kept),
                   replaced=(*replaced, *tune_files(experiment_dir), *tune_files(runner_folder(experiment_dir))),
                   remaining=tuple(remaining))
