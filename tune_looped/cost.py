"""The dry run's cost column: each trial's training FLOPs and its estimated time on this machine, in run order.

Without `--calibrate` the time comes from a throughput stated per scale, per CPU of a trial: research-scale
steps at the products' pace of benchmarks/RESULTS.md, quick-scale steps at the pace a whole quick study kept
(docs/PILOTS.md), which is far lower: small products, the early curriculum's smaller steps, evaluation,
checkpoints and Ray's reporting. `--calibrate` times a few steps of the largest trial here instead (torch, a few
seconds), at its final curriculum size, and scales the other trials by their FLOPs.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from trainers.config import Config
from trainers.cpus import available_cpus
from trainers.flops import step_flops, training_flops
from trainers.curriculum import final_state
from tune_looped.gpus import CPU_FLOPS
from tune_looped.space import Space, start_order, trial_config

# the quick study's 50.1 training TFLOP over its 5,703 trial-seconds (1 CPU each), measured on a fresh clone on 2
# cores of an AMD EPYC with AVX2 only, oneDNN products (docs/PILOTS.md, "The time of 3 seeds, measured")
QUICK_FLOPS = 8.8e9
CALIBRATION_STEPS = 8


@dataclass(frozen=True)
class Throughput:
    flops_per_cpu: float  # FLOP/s a CPU of a trial gives
    source: str  # what the figure is, as the dry run says it


def stated(quick: bool) -> Throughput:
    if quick:
        return Throughput(QUICK_FLOPS, f"the {QUICK_FLOPS / 1e9:.2g} GFLOP/s per CPU a whole quick study kept on a "
                                       "2-core AVX2 machine, docs/PILOTS.md")
    return Throughput(CPU_FLOPS, f"the {CPU_FLOPS / 1e9:.0f} GFLOP/s per CPU of a research-scale step's products, "
                                 "benchmarks/RESULTS.md")


def calibrate(config: Config, cpus: int) -> Throughput:
    """The FLOP/s of `config`'s final-curriculum step on this machine with `cpus` threads, from CALIBRATION_STEPS
    steps, the first and last (warm-up, evaluation, checkpoint) left out."""
    from trainers.training import train  # torch, for --calibrate only

    curriculum = config.training.curriculum
    at_end = {name: getattr(curriculum, name).model_copy(update={"start": getattr(curriculum, name).end})
              for name in ("dims", "points", "loops")}
    probe = config.model_copy(update={
        "training": config.training.model_copy(update={
            "train_steps": CALIBRATION_STEPS, "eval_every_steps": CALIBRATION_STEPS, "eval_prompts": 8,
            "save_every_steps": CALIBRATION_STEPS, "curriculum": curriculum.model_copy(update=at_end)}),
        "wandb": config.wandb.model_copy(update={"log_every_steps": 1, "enabled": False})})
    rows = []
    with tempfile.TemporaryDirectory(prefix="tune_looped_calibrate_") as out:
        started = time.perf_counter()
        train(probe, out_dir=Path(out), reporter=lambda row, _: rows.append(row), device="cpu", num_threads=cpus)
        wall = time.perf_counter() - started
    timed = [row["elapsed_s"] for row in rows if 1 <= row["step"] <= CALIBRATION_STEPS - 2]
    per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
    flops = step_flops(config, final_state(curriculum)).total / per_step
    return Throughput(flops / cpus, f"{CALIBRATION_STEPS} steps of the largest trial timed here ({wall:.1f} s): "
                                    f"{flops / cpus / 1e9:.3g} GFLOP/s per CPU at its final curriculum size")


@dataclass(frozen=True)
class Cost:
    rows: list[tuple]  # (trial, training FLOPs, estimated seconds), in run order
    at_once: int  # trials the machine runs side by side
    total_s: float  # the estimated wall time of all trials


def cost(space: Space, throughput: Throughput, cpus_per_trial: float, max_concurrent: int | None,
         machine_cpus: int | None = None) -> Cost:
    cpus = max(cpus_per_trial, 1)
    at_once = max(1, int((machine_cpus or available_cpus()) // cpus))
    at_once = min(at_once, max_concurrent or at_once, len(space.trials) * space.num_samples or 1)
    rows = []
    for trial in start_order(space):
        flops = training_flops(trial_config(space.base, trial.values))
        rows.append((trial, flops, flops / (throughput.flops_per_cpu * cpus)))
    seconds = [s for _, _, s in rows for _ in range(space.num_samples)]
    # trials start in run order, longest first, each in the first free slot
    slots = [0.0] * at_once
    for s in seconds:
        slots[slots.index(min(slots))] += s
    return Cost(rows, at_once, max(slots) if seconds else 0.0)


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 10 * 3600 else f"{seconds / 3600:.0f} h"
