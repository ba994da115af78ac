"""What the runner prints: the trial table of a dry run and the summary after a sweep."""
from __future__ import annotations

from pathlib import Path

from trainers.records import STATUSES, STOPPED_EARLY, trial_status
from trainers.table import render
from tune_looped.space import Space, trial_config


def print_trial_table(space: Space) -> None:
    keys = sorted({k for t in space.trials for k in t.values})
    rows = [[i, ",".join(t.hypotheses), *(t.values.get(k, "") for k in keys)] for i, t in enumerate(space.trials)]
    print("\n".join(render(["#", "hypotheses", *keys], rows)))
    for key, dist in space.sample.items():
        print(f"sampled: {key} ~ {dist.kind}{dist.args}")
    count = len(space.trials) * space.num_samples
    print(f"{count} trials")


def summarise(results, space: Space) -> list[dict]:
    """One row per trial of a finished (or interrupted) `tuner.fit()`."""
    # here, not at the top: the dry run prints its table from this module without importing Ray
    from tune_looped.trials import trial_values

    rows = []
    for result in results:
        hypotheses, values = trial_values(result.config or {})
        metrics = result.metrics or {}
        frame = result.metrics_dataframe
        evals = frame["eval/loss"].dropna() if frame is not None and "eval/loss" in frame else []
        status = trial_status(last_step=metrics.get("step"),
                              train_steps=trial_config(space.base, values).training.train_steps,
                              diverged=bool(metrics.get("diverged")), stopped=bool(metrics.get("done")),
                              errored=result.error is not None)
        rows.append({"trial_id": metrics.get("trial_id", Path(result.path).name), "hypotheses": ",".join(hypotheses),
                     **values, "step": metrics.get("step"), "eval/loss": float(evals.iloc[-1]) if len(evals) else
                     float("nan"), "status": status})
    return rows


def print_summary(rows: list[dict], experiment_dir: Path) -> None:
    if rows:
        header = list(rows[0])
        for row in rows[1:]:
            header += [k for k in row if k not in header]
        print("\n".join(render(header, [[row.get(k, "") for k in header] for row in rows])))
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no trials")
    for row in rows:
        if row["status"] == "diverged":
            print(f"diverged: trial {row['trial_id']} at step {row['step']} (loss not finite); stopped there, "
                  "not retried")
    if counts[STOPPED_EARLY]:
        print(f"stopped early: {counts[STOPPED_EARLY]} trial(s) stopped by the scheduler before their last step; "
              "the report ranks only the trials that ran their full length")
    print(f"results: {experiment_dir}")
