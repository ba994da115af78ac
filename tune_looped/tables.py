"""What the runner prints: the trial table of a dry run and the summary after a sweep."""
from __future__ import annotations

import math
from pathlib import Path

from tune_looped.space import Space, trial_config


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def print_trial_table(space: Space) -> None:
    keys = sorted({k for t in space.trials for k in t.values})
    rows = [[i, ",".join(t.experiments), *(t.values.get(k, "") for k in keys)] for i, t in enumerate(space.trials)]
    print(_table(["#", "experiments", *keys], rows))
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
        experiments, values = trial_values(result.config or {})
        metrics = result.metrics or {}
        frame = result.metrics_dataframe
        evals = frame["eval/loss"].dropna() if frame is not None and "eval/loss" in frame else []
        last_step = trial_config(space.base, values).training.train_steps - 1
        if result.error is not None:
            status = "error"
        elif metrics.get("diverged"):
            status = "diverged"
        elif metrics.get("step") == last_step:
            status = "finished"
        else:
            status = "incomplete"
        rows.append({"trial_id": metrics.get("trial_id", Path(result.path).name), "experiments": ",".join(experiments),
                     **values, "step": metrics.get("step"), "eval/loss": float(evals.iloc[-1]) if len(evals) else
                     float("nan"), "status": status})
    return rows


def print_summary(rows: list[dict], experiment_dir: Path) -> None:
    if rows:
        header = list(rows[0])
        for row in rows[1:]:
            header += [k for k in row if k not in header]
        print(_table(header, [[row.get(k, "") for k in header] for row in rows]))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "diverged", "error", "incomplete")}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no trials")
    for row in rows:
        if row["status"] == "diverged":
            print(f"diverged: trial {row['trial_id']} at step {row['step']} (loss not finite); stopped there, "
                  "not retried")
    print(f"results: {experiment_dir}")
