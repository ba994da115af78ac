"""How far a sweep is and when it ends: the line the live table prints above itself.

The share is of the sweep's training FLOPs (`trainers.flops`), not of its trials, since the trials differ in
cost by up to 5x: an ended trial counts whole (it has nothing left to run), a running one up to the step it
reported. The ETA divides the FLOPs left by the throughput the running trials measure now (each trial's FLOPs
so far over its `elapsed_s`), so it follows the machine's load as the sweep goes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from tune_looped.cost import duration

BAR_WIDTH = 20
ENDED = ("TERMINATED", "ERROR")


@dataclass(frozen=True)
class Progress:
    counts: dict[str, int]  # done, running, pending
    share: float  # of the training FLOPs, 0..1
    elapsed_s: float
    eta_s: float  # NaN until a running trial has measured its pace
    flops_per_s: float


def measure(trials, flops_of, elapsed_s: float) -> Progress:
    """`flops_of(trial, steps)`: the training FLOPs of the trial's first `steps` steps (None: all of them)."""
    total = done = rate = 0.0
    counts = {"done": 0, "running": 0, "pending": 0}
    for trial in trials:
        whole = flops_of(trial, None)
        result = trial.last_result or {}
        total += whole
        if trial.status in ENDED:
            counts["done"] += 1
            done += whole
            continue
        counts["running" if trial.status == "RUNNING" else "pending"] += 1
        if isinstance(result.get("step"), int):
            so_far = flops_of(trial, result["step"] + 1)
            done += so_far
            if trial.status == "RUNNING" and result.get("elapsed_s"):
                rate += so_far / result["elapsed_s"]
    share = done / total if total else 1.0
    eta = 0.0 if share >= 1 else (total - done) / rate if rate else math.nan
    return Progress(counts, share, elapsed_s, eta, rate)


def progress_line(progress: Progress, bar: bool = False) -> str:
    filled = round(progress.share * BAR_WIDTH)
    shown = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] " if bar else ""
    counts = ", ".join(f"{n} {what}" for what, n in progress.counts.items())
    eta = (f"ETA {duration(progress.eta_s)} (at the running trials' {progress.flops_per_s / 1e9:.3g} GFLOP/s)"
           if math.isfinite(progress.eta_s) and progress.eta_s > 0 else
           "ended" if progress.share >= 1 else "ETA once a running trial reports")
    return (f"progress: {shown}{progress.share:.0%} of the training FLOPs; {counts}; elapsed "
            f"{duration(progress.elapsed_s)}; {eta}")
