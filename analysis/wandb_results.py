"""The experiment's answers in W&B, beside the trials' curves: one run of job type `analysis` per experiment.

It holds the per-trial results (the frame of `results.parquet`: each trial's error at the last position and at
k = d, and its role in each hypothesis), per hypothesis the report's ranking, comparisons and cost as tables and
its verdict and trend in the summary, every figure as an image, and REPORT.md with its figures as an artifact.
A sequential study adds its looks as a table, its design to the summary and each comparison's state, look and
largest difference still allowed to the comparisons; its runner analyses again after every round, so the run
follows the study look by look.
A trial's own run has finished before the analysis starts, and an offline run cannot be appended to, so the
per-trial results live in the analysis run; online, each trial run's summary gets them too, through the W&B API.

Offline, the run is written into the experiment folder, replacing the previous analysis' offline run: it holds
everything that one did, with the answers of the trials as they are now.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import pandas as pd

from analysis.answers import Answer, Answers, answers
from analysis.cost import COST_COLUMNS
from analysis.experiment import AnalysisWarning, read_trials, space_record
from analysis.frames import frames_of
from analysis.plots import PLOTS_DIR, read_evaluation
from analysis.report import REPORT_FILE
from analysis.results import ERROR_COLUMNS, experiment_results
from analysis.study import stopped_at_budget
from analysis.study_report import STATE_COLUMNS, state_columns
from analysis.verdict import Comparison, hypotheses_of
from trainers.config import config_from_dict
from trainers.layout import figures
from trainers.records import LookRecord, SpaceRecord
from trainers.wandb_log import merged_settings, remove_offline_runs, resolve_mode

JOB_TYPE = "analysis"
RANKING_COLUMNS = ["rank", "variant", "n_seeds", "mean", "lo", "hi", "learned", "seed_values"]


def analysis_run_id(experiment: str) -> str:
    """One analysis run per experiment: an analysis run again (after an extension) updates it online."""
    return f"{experiment}-{JOB_TYPE}"


def recorded_settings(record: SpaceRecord | None, mode: str | None = None) -> dict:
    """The W&B settings the sweep's trials had, from the space record: its base's `wandb:` section, then the
    space's `wandb:` block; `mode` over both."""
    settings = {} if record is None else merged_settings(config_from_dict(record.base, "space record: base").wandb,
                                                         record.wandb, record.name)
    settings.pop("enabled", None)
    return {**settings, "mode": mode} if mode else settings


def _table_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame W&B's tables take: numbers stay numbers, a missing value is None, a tuple of seeds is text."""
    out = frame.astype(object).where(frame.notna(), None)
    for column in out.columns:
        if out[column].map(lambda v: isinstance(v, (tuple, list))).any():
            out[column] = out[column].map(lambda v: ", ".join(map(str, v)) if v is not None else None)
    return out


def hypothesis_tables(answer: Answer, record: SpaceRecord | None = None) -> dict[str, pd.DataFrame]:
    """The report's three tables of one hypothesis, as frames: its ranking, its comparisons (a sequential
    study's, `record.decide`, with STATE_COLUMNS too), its cost."""
    ranking = answer.ranking[[c for c in RANKING_COLUMNS if c in answer.ranking]]
    study = record.decide if record is not None else None
    verdict = answer.verdict
    rows = [dataclasses.asdict(c) | (state_columns(c, verdict, study, stopped_at_budget(record)) if study else {})
            for c in (verdict.comparisons if verdict is not None else ())]
    comparisons = pd.DataFrame(rows, columns=[f.name for f in dataclasses.fields(Comparison)]
                               + (list(STATE_COLUMNS) if study else []))
    cost = answer.ranking[["variant", *COST_COLUMNS, "wall_time_s", "status"]]
    return {"ranking": ranking, "comparisons": comparisons, "cost": cost}


def verdict_summary(found: Answers) -> dict:
    """`verdict/<hypothesis>` and `trend/<hypothesis>` (the words), with their reasons: what a W&B view sorts."""
    summary = {}
    for answer in found.items:
        if answer.verdict is not None:
            summary[f"verdict/{answer.hypothesis}"] = answer.verdict.word
            summary[f"verdict_reason/{answer.hypothesis}"] = answer.verdict.reason
        if answer.trend is not None:
            summary[f"trend/{answer.hypothesis}"] = answer.trend.word
            if not math.isnan(answer.trend.p):
                summary[f"trend_p/{answer.hypothesis}"] = answer.trend.p
    return summary


def study_summary(record: SpaceRecord | None) -> dict:
    """A sequential study's design and how far it got, under `study/`; nothing for a fixed study."""
    study = record.decide if record is not None else None
    if study is None:
        return {}
    last = record.looks[-1] if record.looks else None
    found = {**{f"study/{key}": value for key, value in study.model_dump().items()},
             "study/max_seeds": study.looks[-1], "study/looks_taken": len(record.looks),
             "study/seeds_at_last_look": last.seeds if last else 0, "study/open": len(last.open) if last else None,
             "study/ended": last.ended if last else ""}
    return {key: value for key, value in found.items() if value is not None}


def looks_frame(record: SpaceRecord) -> pd.DataFrame:
    """The looks a sequential study's runner took, one row each, as the space record keeps them."""
    return pd.DataFrame([look.model_dump() for look in record.looks], columns=list(LookRecord.model_fields))


def trial_summaries(results: pd.DataFrame) -> dict[str, dict]:
    """Per trial id, what its own run's summary gets from the results frame: its errors, and its variant and role
    per hypothesis."""
    summaries = {}
    for trial_id, rows in results.groupby("trial_id", sort=False):
        first = rows.iloc[0]
        summary = {key: None if pd.isna(first[key]) else float(first[key]) for key in ERROR_COLUMNS}
        for _, row in rows.iterrows():
            summary[f"role/{row['hypothesis']}"] = row["role"]
            summary[f"variant/{row['hypothesis']}"] = row["variant"]
        summaries[str(trial_id)] = summary
    return summaries


def log_results(experiment_dir, settings: dict | None = None) -> Path | None:
    """Log the experiment's answers to one W&B run of job type `analysis` (settings: project, entity, group and
    mode, as the sweep's trials had them; by default those the space record gives). Its per-trial numbers are
    those of the experiment's `results.parquet`, written again here from the trials and the evaluation as they are
    now. Returns the offline run's folder, or None online."""
    import wandb

    experiment_dir = Path(experiment_dir)
    record = space_record(experiment_dir)
    settings = recorded_settings(record) if settings is None else settings
    _, summary = frames_of(read_trials(experiment_dir))
    evaluation, declared = read_evaluation(experiment_dir), hypotheses_of(record)
    results = experiment_results(experiment_dir, summary, evaluation, declared)
    found = answers(summary, results, declared, study=record.decide if record is not None else None,
                    at_budget=stopped_at_budget(record))
    mode = resolve_mode(settings.get("mode", "auto"))
    run_id = analysis_run_id(experiment_dir.name)
    if mode == "offline":
        remove_offline_runs(experiment_dir, run_id)
    run = wandb.init(project=settings.get("project"), entity=settings.get("entity"), group=settings.get("group"),
                     job_type=JOB_TYPE, name=f"{experiment_dir.name} analysis", id=run_id, resume="allow",
                     dir=str(experiment_dir), mode=mode,
                     config={"experiment": experiment_dir.name, "trials": len(summary),
                             "errors_measured_on": found.source})
    try:
        tables = {"trials": results}
        if record is not None and record.decide is not None:
            tables["looks"] = looks_frame(record)
        for answer in found.items:
            tables.update({f"{answer.hypothesis}/{name}": frame
                           for name, frame in hypothesis_tables(answer, record).items()})
        run.log({name: wandb.Table(dataframe=_table_frame(frame)) for name, frame in tables.items()})
        plots = figures(experiment_dir)
        if plots:
            run.log({f"plots/{path.stem}": wandb.Image(str(path)) for path in plots})
        run.summary.update(verdict_summary(found) | study_summary(record))
        report = experiment_dir / REPORT_FILE
        if report.exists():
            artifact = wandb.Artifact(f"{run_id}-report", type="report",
                                      description=f"REPORT.md of {experiment_dir.name}, with its figures")
            artifact.add_file(str(report))
            if plots:
                artifact.add_dir(str(experiment_dir / PLOTS_DIR), name=PLOTS_DIR)
            run.log_artifact(artifact)
        offline_dir = Path(run.dir).parent if mode == "offline" else None
    finally:
        run.finish()
    if mode == "online":
        update_trial_runs(trial_summaries(results), settings)
    return offline_dir


def update_trial_runs(summaries: dict[str, dict], settings: dict) -> None:
    """Each trial run's summary updated with its results, through the W&B API; a run that is not there (its
    trial logged offline) is a warning, not a failure."""
    import wandb

    api = wandb.Api()
    path = f"{settings.get('entity') or api.default_entity}/{settings.get('project')}"
    for run_id, summary in summaries.items():
        try:
            api.run(f"{path}/{run_id}").summary.update(summary)
        except (wandb.errors.CommError, ValueError) as err:
            warnings.warn(f"W&B: trial run {path}/{run_id}: summary not updated ({err})", AnalysisWarning,
                          stacklevel=2)
