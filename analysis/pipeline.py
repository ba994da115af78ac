"""What the CLI and the runner call: each output of the analysis written to disk, alone or all together.

Every function reads the experiment first, so a bad directory raises AnalysisError before anything is
written; outputs go into `out` (default: the experiment directory).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from analysis.evaluation import EVALUATION_FILE, evaluate_trials, evaluation_of
from analysis.experiment import read_trials, space_record
from analysis.frames import frames_of
from analysis.plots import FIGURES_PER_HYPOTHESIS, PLOTS_DIR, write_plots
from analysis.report import REPORT_FILE, write_report
from analysis.results import experiment_results
from analysis.study import stopped_at_budget
from analysis.variants import hypotheses
from analysis.verdict import hypotheses_of
from trainers.atomic import NO_SPACE, free_space, mount_point, replacing
from trainers.layout import CURVES_FRAME, RESULTS_FILE, SUMMARY_FRAME, frame_file

FORMATS = ("parquet", "csv")


def no_space(err: BaseException, folder, role: str) -> str | None:
    """When `err` is a write refused for want of space, the filesystem of `folder`, where the analysis writes:
    `<role> <folder> (the filesystem at <mount>): N MiB free`; else None."""
    if not isinstance(err, OSError) or err.errno not in NO_SPACE:
        return None
    folder = Path(folder).absolute()
    return free_space(role, folder, shutil.disk_usage(mount_point(folder)).free)


def _write_frame(frame: pd.DataFrame, path: Path) -> Path:
    with replacing(path) as temporary:
        if path.suffix == ".csv":
            frame.to_csv(temporary, index=False)
        else:
            frame.to_parquet(temporary, index=False)
    return path


def export_frames(experiment_dir, out=None, fmt: str = "parquet") -> dict[str, Path]:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {list(FORMATS)}")
    curves, summary = frames_of(read_trials(experiment_dir))
    out_dir = Path(out if out is not None else experiment_dir)
    return {"curves": _write_frame(curves, frame_file(out_dir, CURVES_FRAME, fmt)),
            "summary": _write_frame(summary, frame_file(out_dir, SUMMARY_FRAME, fmt))}


def run_all(experiment_dir, out=None, *, fmt: str = "parquet", n_prompts: int | None = None,
            max_loops: int | None = None, seed: int | None = None, device=None, progress: bool | None = None) -> dict:
    """Frames, evaluation, results, figures and report in one pass over the experiment (what a sweep ends with).
    The evaluation's settings not given are the space's (`evaluation_of`).

    Written in that order: the results (`results.parquet`) need the evaluation, and the figures and the report
    take their per-trial numbers from the results.
    `progress`: a bar on stderr, one step per checkpoint evaluated and per figure; None shows it on a terminal only.
    Returns the written paths: `curves`, `summary`, `evaluation`, `results`, `report` and the list `plots`.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {list(FORMATS)}")
    trials = read_trials(experiment_dir)
    out_dir = Path(out if out is not None else experiment_dir)
    curves, summary = frames_of(trials)
    written = {"curves": _write_frame(curves, frame_file(out_dir, CURVES_FRAME, fmt)),
               "summary": _write_frame(summary, frame_file(out_dir, SUMMARY_FRAME, fmt))}
    steps = (sum(t.checkpoint is not None and "model" in t.checkpoint for t in trials)
             + FIGURES_PER_HYPOTHESIS * len(hypotheses(summary)))
    record = space_record(experiment_dir)
    declared = hypotheses_of(record)
    with tqdm(total=steps, desc="analysis", unit="step", dynamic_ncols=True,
              disable=None if progress is None else not progress) as bar:
        how = evaluation_of(record, n_prompts=n_prompts, max_loops=max_loops, seed=seed)
        evaluation = evaluate_trials(trials, n_prompts=how.n_prompts, max_loops=how.max_loops, seed=how.seed,
                                     device=device, progress=bar.update)
        written["evaluation"] = _write_frame(evaluation, out_dir / EVALUATION_FILE)
        results = experiment_results(out_dir, summary, evaluation, declared)
        written["results"] = out_dir / RESULTS_FILE
        written["plots"] = write_plots(out_dir / PLOTS_DIR, curves, summary, evaluation, progress=bar.update,
                                       declared=declared, results=results,
                                       study=record.decide if record is not None else None,
                                       at_budget=stopped_at_budget(record))
    written["report"] = write_report(out_dir / REPORT_FILE, Path(experiment_dir).name, summary, evaluation, record,
                                     results=results, experiment_dir=experiment_dir)
    return written
