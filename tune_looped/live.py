"""The table Tune prints while a sweep runs: one row per trial, one column per swept key under its short name,
the trial's experiments (numbered, with a legend) and the metrics a researcher follows, in 120 columns."""
from __future__ import annotations

import math
import sys
import time

from ray.tune import ProgressReporter

from tune_looped.space import Space
from tune_looped.trials import trial_values

WIDTH = 120
METRICS = ("step", "n_loops", "n_points", "eval/loss", "eval/loss_last")
SHORT_NAMES = {"model.use_lstm_layer": "lstm", "training.seed": "seed"}
STATUS = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused", "TERMINATED": "done", "ERROR": "error"}
MAX_CELL = 14


def short_names(keys) -> dict[str, str]:
    """Each dotted key's last part (`model.n_layer` -> `n_layer`), or its last two where two keys share one."""
    names = {k: SHORT_NAMES.get(k, k.rsplit(".", 1)[-1]) for k in keys}
    shared = {name for name in names.values() if list(names.values()).count(name) > 1}
    return {k: ".".join(k.split(".")[-2:]) if name in shared else name for k, name in names.items()}


def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        text = "nan" if math.isnan(value) else f"{value:.4g}"
    else:
        text = str(value)
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "~"


def render(header: list[str], rows: list[list[str]]) -> list[str]:
    cells = [header, *rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()[:WIDTH] for row in cells]


class LiveTable(ProgressReporter):
    """Tune's progress reporter for the runner (`RunConfig(progress_reporter=...)`, old-style output)."""

    def __init__(self, space: Space, every_s: float = 10.0, out=None):
        self.keys = space.varying_keys
        self.names = short_names(self.keys)
        self.legend = {e.name: i + 1 for i, e in enumerate(space.experiments)}
        for trial in space.trials:
            for name in trial.experiments:
                self.legend.setdefault(name, len(self.legend) + 1)
        self.every_s = every_s
        self.out = out
        self._last = 0.0

    def should_report(self, trials, done: bool = False) -> bool:
        now = time.monotonic()
        if done or now - self._last >= self.every_s:
            self._last = now
            return True
        return False

    def table(self, trials) -> list[str]:
        header = ["trial", "status", "exp", *(self.names[k] for k in self.keys), *METRICS]
        rows = []
        for trial in trials:
            experiments, values = trial_values(trial.config)
            tags = ",".join(str(self.legend.get(e, e)) for e in experiments)
            result = trial.last_result or {}
            rows.append([cell(trial.trial_id), STATUS.get(trial.status, trial.status.lower()), tags,
                         *(cell(values.get(k)) for k in self.keys), *(cell(result.get(m)) for m in METRICS)])
        counts = {}
        for trial in trials:
            status = STATUS.get(trial.status, trial.status.lower())
            counts[status] = counts.get(status, 0) + 1
        summary = f"== {len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        legend = "experiments: " + ", ".join(f"{i} {name}" for name, i in self.legend.items())
        return [summary[:WIDTH], legend[:WIDTH], *render(header, rows)]

    def report(self, trials, done: bool, *sys_info: str) -> None:
        print("\n".join(self.table(trials)), file=self.out or sys.stdout, flush=True)
