"""The table Tune prints while a sweep runs: a row per trial, a column per swept key under its short name, the
trial's hypotheses (numbered, with a legend) and the metrics a researcher follows, in 120 columns.

It fits a screen: at most MAX_ROWS rows, the running trials first, then the failed and diverged ones (always
shown), then the latest to finish, and a line counting the rest. It is printed every 10 s while something
changed, and at least once a minute."""
from __future__ import annotations

import sys
import time

from ray.tune import ProgressReporter

from trainers.flops import training_flops
from trainers.knobs import column_name
from trainers.table import render
from tune_looped.progress import measure, progress_line
from tune_looped.space import Space, trial_config
from tune_looped.trials import trial_values

WIDTH = 120
METRICS = ("step", "n_loops", "n_points", "eval/loss", "eval/loss_last")
STATUS = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused", "TERMINATED": "done", "ERROR": "error"}
MAX_CELL = 14
MAX_ROWS = 20
QUIET_S = 60.0  # the longest the table goes unprinted when nothing changed


def short_names(keys) -> dict[str, str]:
    """Each dotted key's column name (`model.n_layer` -> `n_layer`, trainers.knobs), or its last two parts where
    two keys share one."""
    names = {k: column_name(k) for k in keys}
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
        self.base = space.base
        self._started = time.monotonic()
        self._configs: dict = {}
        self._last = 0.0
        self._seen: tuple = ()

    def should_report(self, trials, done: bool = False) -> bool:
        now = time.monotonic()
        seen = tuple((t.trial_id, t.status, (t.last_result or {}).get("step")) for t in trials)
        due = now - self._last >= self.every_s and seen != self._seen or now - self._last >= QUIET_S
        if done or due:
            self._last, self._seen = now, seen
            return True
        return False

    def _shown(self, trials) -> tuple[list, list]:
        """(the trials shown, in order; the others): running, then failed or diverged, then the latest ended."""
        def failed(t):
            return t.status == "ERROR" or bool((t.last_result or {}).get("diverged"))

        def ended_at(t):
            return (t.last_result or {}).get("timestamp") or 0

        running = [t for t in trials if t.status == "RUNNING"]
        failures = [t for t in trials if t.status != "RUNNING" and failed(t)]
        done = sorted((t for t in trials if t.status == "TERMINATED" and not failed(t)), key=ended_at, reverse=True)
        room = max(0, MAX_ROWS - len(running) - len(failures))
        shown = running + failures + done[:room]
        ids = {t.trial_id for t in shown}
        return shown, [t for t in trials if t.trial_id not in ids]

    def table(self, trials) -> list[str]:
        header = ["trial", "status", "hyp", *(self.names[k] for k in self.keys), *METRICS]
        shown, rest = self._shown(trials)
        rows = []
        for trial in shown:
            hypotheses, values = trial_values(trial.config)
            tags = ",".join(str(self.legend.get(h, h)) for h in hypotheses)
            result = trial.last_result or {}
            status = "diverged" if result.get("diverged") else STATUS.get(trial.status, trial.status.lower())
            rows.append([trial.trial_id, status, tags,
                         *(values.get(k) for k in self.keys), *(result.get(m) for m in METRICS)])
        stream = self.out or sys.stdout
        line = progress_line(measure(trials, self._flops_of, time.monotonic() - self._started),
                             bar=hasattr(stream, "isatty") and stream.isatty())
        summary = f"== {len(trials)} trials: " + _counts(trials)
        legend = "hypotheses: " + ", ".join(f"{i} {name}" for name, i in self.legend.items())
        more = [f"... and {len(rest)} more: {_counts(rest)}"] if rest else []
        return [line, summary[:WIDTH], legend[:WIDTH], *render(header, rows, width=WIDTH, max_cell=MAX_CELL), *more]

    def _flops_of(self, trial, steps: int | None) -> int:
        config = self._configs.get(trial.trial_id)
        if config is None:
            config = self._configs[trial.trial_id] = trial_config(self.base, trial_values(trial.config)[1])
        return training_flops(config, steps)

    def report(self, trials, done: bool, *sys_info: str) -> None:
        print("\n".join(self.table(trials)), file=self.out or sys.stdout, flush=True)


def _counts(trials) -> str:
    counts: dict[str, int] = {}
    for trial in trials:
        status = STATUS.get(trial.status, trial.status.lower())
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())
