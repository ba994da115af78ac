"""The table Tune prints while a sweep runs: one row per trial, one column per swept key under its short name,
the trial's hypotheses (numbered, with a legend) and the metrics a researcher follows, in 120 columns."""
from __future__ import annotations

import sys
import time

from ray.tune import ProgressReporter

from trainers.records import short_key
from trainers.table import render
from tune_looped.space import Space
from tune_looped.trials import trial_values

WIDTH = 120
METRICS = ("step", "n_loops", "n_points", "eval/loss", "eval/loss_last")
SHORT_NAMES = {"model.use_lstm_layer": "lstm", "training.seed": "seed"}
STATUS = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused", "TERMINATED": "done", "ERROR": "error"}
MAX_CELL = 14


def short_names(keys) -> dict[str, str]:
    """Each dotted key's last part (`model.n_layer` -> `n_layer`), or its last two where two keys share one."""
    names = {k: SHORT_NAMES.get(k, short_key(k)) for k in keys}
    shared = {name for name in names.values() if list(names.values()).count(name) > 1}
    return {k: ".".join(k.split(".")[-2:]) if name in shared else name for k, name in names.items()}


class LiveTable(ProgressReporter):
    """Tune's progress reporter for the runner (`RunConfig(progress_reporter=...)`, old-style output)."""

    def __init__(self, space: Space, every_s: float = 10.0, out=None):
        self.keys = space.varying_keys
        self.names = short_names(self.keys)
        self.legend = {h.name: i + 1 for i, h in enumerate(space.hypotheses)}
        for trial in space.trials:
            for name in trial.hypotheses:
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
        header = ["trial", "status", "hyp", *(self.names[k] for k in self.keys), *METRICS]
        rows = []
        for trial in trials:
            hypotheses, values = trial_values(trial.config)
            tags = ",".join(str(self.legend.get(h, h)) for h in hypotheses)
            result = trial.last_result or {}
            rows.append([trial.trial_id, STATUS.get(trial.status, trial.status.lower()), tags,
                         *(values.get(k) for k in self.keys), *(result.get(m) for m in METRICS)])
        counts = {}
        for trial in trials:
            status = STATUS.get(trial.status, trial.status.lower())
            counts[status] = counts.get(status, 0) + 1
        summary = f"== {len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        legend = "hypotheses: " + ", ".join(f"{i} {name}" for name, i in self.legend.items())
        return [summary[:WIDTH], legend[:WIDTH], *render(header, rows, width=WIDTH, max_cell=MAX_CELL)]

    def report(self, trials, done: bool, *sys_info: str) -> None:
        print("\n".join(self.table(trials)), file=self.out or sys.stdout, flush=True)
