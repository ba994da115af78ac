"""What the runner prints: the trial table of a dry run and the summary after a sweep."""
from __future__ import annotations

import contextlib
from pathlib import Path

from trainers.layout import RESULT_FILE, SPACE_RECORD, trial_folders
from trainers.records import (DIVERGED, STATUSES, STOPPED_EARLY, PlannedTrial, RecordError, SpaceRecord, last_step,
                              read_trial_record, trial_failed, trial_key, trial_status, variant_label)
from trainers.table import render
from tune_looped.cost import Cost, Throughput, duration
from tune_looped.space import Space, trial_config


def print_trial_table(space: Space, cost: Cost, throughput: Throughput) -> None:
    """The trials in run order with their training FLOPs and estimated time, then the sampled keys and the total."""
    keys = sorted({k for t in space.trials for k in t.values})
    rows = [[i, ",".join(t.hypotheses), *(t.values.get(k, "") for k in keys), f"{flops / 1e12:.3g}", duration(s)]
            for i, (t, flops, s) in enumerate(cost.rows)]
    print("\n".join(render(["#", "hypotheses", *keys, "TFLOP", "est. time"], rows)))
    for key, dist in space.sample.items():
        print(f"sampled: {key} ~ {dist.kind}{dist.args}")
    count = len(space.trials) * space.num_samples
    total = sum(flops for _, flops, _ in cost.rows) * space.num_samples
    print(f"{count} trials, {total / 1e12:.3g} TFLOP, about {duration(cost.total_s)} with {cost.at_once} at once on "
          f"this machine (estimated from {throughput.source})")


def _row(space: Space, trial_id, hypotheses, values: dict, rows: list[dict], eval_loss: float,
         errored: bool) -> dict:
    """A trial's row of the summary from the rows it reported."""
    status = trial_status(rows, trial_config(space.base, values).training.train_steps, errored=errored)
    return {"trial_id": trial_id, "hypotheses": tuple(hypotheses), **values, "step": last_step(rows),
            "eval/loss": eval_loss, "status": status}


def summarise(results, space: Space, experiment_dir: Path | None = None) -> list[dict]:
    """One row per trial of a finished (or interrupted) `tuner.fit()`, then, given the local experiment folder,
    one per trial folder that Tune's results leave out: trials an earlier Tune state ran (before a rebuild),
    or another runner."""
    # here, not at the top: the dry run prints its table from this module without importing Ray
    from tune_looped.trials import trial_values

    rows = []
    for result in results:
        hypotheses, values = trial_values(result.config or {})
        with contextlib.suppress(RecordError, TypeError):
            # the trial's own record, which an extension may have tagged since Tune saved its params
            record = read_trial_record(result.path)
            hypotheses, values = record.hypotheses, record.values
        metrics = result.metrics or {}
        frame = result.metrics_dataframe
        evals = frame["eval/loss"].dropna() if frame is not None and "eval/loss" in frame else []
        # every row Tune has of the trial, then its last, which Tune may hold alone (a trial restored as ended)
        history = [*(frame.to_dict("records") if frame is not None else []), metrics]
        rows.append(_row(space, metrics.get("trial_id", Path(result.path).name), hypotheses, values, history,
                         float(evals.iloc[-1]) if len(evals) else float("nan"), result.error is not None))
    if experiment_dir is not None:
        reported = {Path(result.path).name for result in results}
        rows += [row for folder in trial_folders(experiment_dir)
                 if folder.name not in reported and (row := folder_row(folder, space)) is not None]
    return rows


def folder_row(folder: Path, space: Space) -> dict | None:
    """A trial's row of the summary read from its folder, for when Tune's results are not at hand (a sweep that
    failed, trials of an earlier Tune state); None for a folder whose record does not read."""
    # the analysis' reader of result.json imports torch, which a dry run must not
    from analysis.experiment import read_result_rows

    try:
        record = read_trial_record(folder)
    except RecordError:
        return None
    results = read_result_rows(folder / RESULT_FILE)
    evals = [r["eval/loss"] for r in results if isinstance(r.get("eval/loss"), float)]
    return _row(space, record.trial_id, record.hypotheses, record.values, results,
                evals[-1] if evals else float("nan"), trial_failed(folder))


def against_space(rows: list[dict], record: SpaceRecord) -> tuple[list[dict], list[PlannedTrial]]:
    """(the rows of trials the space record did not ask for, the asked-for trials without a row): the same trial
    tagged alike, by `trial_key` with the hypotheses.

    The record asks for each of its trials `num_samples` times; a trial run more often than that (two runners
    of one experiment) is, from its second run on, not asked for either."""
    wanted: dict[str, list] = {}
    for planned in record.trials:
        key = trial_key(record.base, planned.values, hypotheses=planned.hypotheses)
        wanted.setdefault(key, []).extend([planned] * record.num_samples)
    unasked = []
    for row in rows:
        values = {k: v for k, v in row.items() if k not in SUMMARY_COLUMNS}
        slots = wanted.get(trial_key(record.base, values, record.sample, row["hypotheses"]))
        if slots:
            slots.pop()
        else:
            unasked.append(row)
    return unasked, [planned for slots in wanted.values() for planned in slots]


SUMMARY_COLUMNS = ("trial_id", "hypotheses", "step", "eval/loss", "status")


def print_summary(rows: list[dict], experiment_dir: Path,
                  record: SpaceRecord | None = None) -> tuple[list[dict], list[PlannedTrial]]:
    """The summary table, the counts, and, given the space record, each trial that it did not ask for and each
    it asked for that has no result; returns those two lists (`against_space`)."""
    if rows:
        header = list(rows[0])
        for row in rows[1:]:
            header += [k for k in row if k not in header]
        shown = [{**row, "hypotheses": ",".join(row["hypotheses"])} for row in rows]
        print("\n".join(render(header, [[row.get(k, "") for k in header] for row in shown])))
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no trials")
    for row in rows:
        if row["status"] == DIVERGED:
            print(f"diverged: trial {row['trial_id']} at step {row['step']} (loss not finite); stopped there, "
                  "not retried")
    if counts[STOPPED_EARLY]:
        print(f"stopped early: {counts[STOPPED_EARLY]} trial(s) stopped by the scheduler before their last step; "
              "the report ranks only the trials that ran their full length")
    unasked, missing = against_space(rows, record) if record is not None else ([], [])
    for row in unasked:
        values = {k: v for k, v in row.items() if k not in SUMMARY_COLUMNS}
        print(f"not asked for: trial {row['trial_id']} ({variant_label(values)}, hypotheses "
              f"{','.join(row['hypotheses']) or 'none'}) is not one of the trials {SPACE_RECORD} asks for, or "
              "repeats one")
    for planned in missing:
        print(f"missing: {variant_label(planned.values)} ({','.join(planned.hypotheses)}), asked for by "
              f"{SPACE_RECORD}, has no result")
    print(f"results: {experiment_dir}")
    return unasked, missing
