"""`python -m benchmarks.gpu OUT`: the GPU check in one call. It compares losses on CUDA with the CPU's (fp32, CUDA
graphs, bf16), times the research-scale step in each speed mode, packs 1-8 trials onto the one GPU, and projects
the research study's time on that GPU, writing each table to OUT as soon as it is measured.

`--device cpu --tiny` runs every part but CUDA itself in a minute on two cores (the test suite does). Each
section has its share of `--budget`: a slow one is cut short, and its table says what was left out. The exit
status is 1 when a correctness check failed or did not finish, with one `error:` line per check.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks import TABLE_STYLE
from benchmarks.gpu_pack import packing
from benchmarks.gpu_project import MODES, NEEDS, VARIANTS, best_mode, projection
from benchmarks.gpu_runs import children, losses, speed
from benchmarks.machine import describe
from trainers.atomic import write_text
from trainers.cli import OneLineArgumentParser
from trainers.config import ConfigError
from trainers.flops import step_flops
from trainers.table import render
from tune_looped.gpus import ASSUMED_GPU_MEMORY, CUDA_CONTEXT, trial_memory
from tune_looped.space import SpaceError, load_space, trial_config

SPACE = "hypotheses"
# fp32 on two devices sums in other orders, and the losses part by rounding, which Adam's steps carry on: MKL
# against oneDNN on the CPU part by 1e-7 at most over 20 research-scale steps, and CUDA's own kernels (attention,
# GELU, LayerNorm) may add two orders. A wrong step parts them by far more: a stale batch by the spread of the
# batches' losses (10%). 1e-3 lies between, an order or more from each
FP32_TOLERANCE = 1e-3
# bf16 keeps 8 significant bits. On the CPU (research scale, batch 16) its losses part from fp32's by 5e-4 at
# most over 150 steps, and their last quarter's means by 4e-6: the first hundreds of steps sit on the loss's
# plateau, where the predictions are small. 2% leaves room for a run that leaves the plateau within 300 steps,
# where the two trajectories part, and still catches a NaN or a divergence
BF16_TOLERANCE = 0.02
# the research's model at the tests' size (the miniature's width, d = 5, 6 -> 11 points, 3 -> 6 loops)
TINY = {"model.n_embd": 32, "model.n_head": 4, "model.n_dims": 5, "model.n_positions": 11,
        "training.batch_size": 8, "training.n_loop_window": 3, "training.curriculum.dims.start": 5,
        "training.curriculum.dims.end": 5, "training.curriculum.points.start": 6,
        "training.curriculum.points.end": 11, "training.curriculum.loops.start": 3,
        "training.curriculum.loops.end": 6}
# by what share of the budget each section must be done; a section's time left over goes to the next
SECTION_ENDS = {"correctness": 0.2, "speed": 0.72, "packing": 1.0}


@dataclass(frozen=True)
class Plan:
    overrides: dict        # set in every trial's config: none at research scale
    check_steps: int       # steps of the fp32 and CUDA graphs comparisons
    bf16_steps: int        # steps of bf16 against fp32
    timed_steps: int       # steps a speed timing takes together, `repeats` times
    repeats: int
    processes: tuple       # the packings, in processes on the device
    pack_seconds: float
    matmul: tuple          # the bf16 reference product: its size, and for how long it is timed
    budget_s: float
    modes: tuple


RESEARCH = Plan({}, 20, 300, 10, 3, (1, 2, 4, 8), 6.0, (8192, 1.0), 400.0, tuple(MODES))
# without torch.compile: inductor takes minutes on two cores, and `training.compile` has tests of its own
TINY_PLAN = Plan(TINY, 6, 40, 2, 2, (1, 2), 0.25, (256, 0.1), 600.0, tuple(m for m in MODES if m != "compile"))


class Output:
    """The folder of tables, each as Markdown and JSON, rewritten whenever a row arrives, and report.md with all
    of them, so a run killed at any point leaves what it had measured."""

    def __init__(self, folder: Path, info: dict):
        self.folder, self.info, self.tables = Path(folder), info, {}

    def table(self, name: str, title: str, notes: list[str], header: list[str], rows: list[dict]) -> None:
        body = render(header, [[row.get(h) for h in header] for row in rows], markdown=True, **TABLE_STYLE)
        self.tables[name] = "\n".join([f"## {title}", "", *notes, "", *body]) + "\n"
        write_text(self.folder / f"{name}.md", self.tables[name])
        write_text(self.folder / f"{name}.json", json.dumps(rows, indent=1, default=str) + "\n")
        machine = ", ".join(f"{k} {v}" for k, v in self.info.items())
        write_text(self.folder / "report.md", "\n".join([f"# benchmarks.gpu: {machine}", "", *self.tables.values()]))

    def print(self, name: str, started: float) -> None:
        print(self.tables.get(name, ""), flush=True)
        print(f"{name}: done at {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)


def max_relative(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


def tail_mean_relative(a: list[float], b: list[float]) -> float:
    """The relative difference of the two runs' mean losses over their last quarter of steps."""
    n = max(1, len(b) // 4)
    mean_a, mean_b = sum(a[-n:]) / n, sum(b[-n:]) / n
    return abs(mean_a - mean_b) / abs(mean_b)


def checks(plan: Plan, tolerances: dict) -> list[tuple]:
    """(check, the run checked, the run it is checked against, steps, measure, its function, tolerance)."""
    per_step = "largest relative difference of a step's loss"
    return [("fp32", "fp32", "reference", plan.check_steps, per_step, max_relative, tolerances["fp32"]),
            ("CUDA graphs", "CUDA graphs", "reference", plan.check_steps, per_step, max_relative, tolerances["fp32"]),
            ("bf16", "bf16", "fp32", plan.bf16_steps, "relative difference of the last quarter's mean loss",
             tail_mean_relative, tolerances["bf16"])]


def compare(runs: dict, plan: Plan, device: str, tolerances: dict) -> list[dict]:
    """A row per check: its verdict pass, FAIL, pending or `not run: why`."""
    rows = []
    for check, run, against, steps, measure, function, tolerance in checks(plan, tolerances):
        other = "fp32 on the CPU" if against == "reference" else f"{against} on {device}"
        row = {"check": check, "runs": f"{run} on {device} against {other}", "steps": steps, "measure": measure,
               "tolerance": tolerance, "verdict": "pending"}
        a, b = runs.get(run), runs.get(against)
        failed = [f"{r['run']}: {r['error']}" for r in (a, b) if r is not None and "error" in r]
        if failed:
            row["verdict"] = f"not run: {failed[0]}"
        elif a is not None and b is not None:
            la, lb = a["losses"][:steps], b["losses"][:steps]
            row.update({"difference": function(la, lb), "first loss": la[0], "last loss": la[-1]})
            row["verdict"] = "pass" if row["difference"] <= tolerance else "FAIL"
        rows.append(row)
    return rows


def correctness(plan: Plan, device: str, space, tolerances: dict, deadline: float, output: Output) -> dict:
    """Each check's row by its name. The reference trains on the CPU while the device's runs train."""
    def config(**overrides):
        return trial_config(space.base, {**VARIANTS["L=1"], **overrides})
    # the fp32 run's first steps are the fp32 check, all of them bf16's reference. On --device cpu the device's
    # runs take oneDNN's products and the reference MKL's: another summation order, as CUDA's kernels are
    jobs = [[("reference", config(), "cpu", plan.check_steps, False)],
            [("fp32", config(), device, max(plan.check_steps, plan.bf16_steps), True),
             ("CUDA graphs", config(**{"training.cuda_graphs": True}), device, plan.check_steps, True),
             ("bf16", config(**{"training.precision": "bf16"}), device, plan.bf16_steps, True)]]
    header = ["check", "runs", "steps", "measure", "difference", "tolerance", "first loss", "last loss", "verdict"]
    notes = ["The same seed and batches, the research's model and its curriculum's first steps, TF32 off. "
             f"Tolerances: fp32 {tolerances['fp32']:g} (rounding, which Adam's steps grow), "
             f"bf16 {tolerances['bf16']:g}."]
    if device == "cpu":
        notes.append("On the CPU: the reference takes MKL's products, the other runs oneDNN's; CUDA graphs run "
                     "eagerly.")
    # the CPU's reference takes the cores that the device's runs, one thread each, leave; on --device cpu both
    # jobs share them
    threads = [1, 1] if device == "cpu" else [max(1, (os.cpu_count() or 1) - 2), 1]
    runs: dict = {}
    for index, item in children([(losses, (job, n)) for job, n in zip(jobs, threads)], deadline):
        # an error of the job as a whole (out of time, a crash) is every run of it that had not reported
        names = [item["run"]] if "run" in item else [run[0] for run in jobs[index] if run[0] not in runs]
        for name in names:
            runs[name] = {**item, "run": name}
            print(f"correctness: {name}: {item.get('error') or 'done'}", file=sys.stderr, flush=True)
        output.table("correctness", "Correctness", notes, header, compare(runs, plan, device, tolerances))
    rows = [{**row, "verdict": "not run: out of time"} if row["verdict"] == "pending" else row
            for row in compare(runs, plan, device, tolerances)]
    output.table("correctness", "Correctness", notes, header, rows)
    return {row["check"]: row for row in rows}


def speed_rows(measured: list[dict], configs: dict, matmul: float) -> list[dict]:
    rows = []
    for m in measured:
        row = {"variant": m["variant"], "mode": m["mode"], "curriculum": m.get("curriculum"), "note": m.get("error")}
        if "seconds" in m:
            config, state = configs[m["variant"], m["mode"]], m["state"]
            flops = step_flops(config, state).total
            row.update({"n_points": state.n_points, "n_loops": state.n_loops, "steps/s": 1 / m["seconds"],
                        "best steps/s": 1 / m["best seconds"], "warm-up s": m["warm-up s"],
                        "GFLOP/step": flops / 1e9, "GFLOP/s": flops / m["seconds"] / 1e9,
                        "% bf16 matmul": 100 * flops / m["seconds"] / matmul if matmul else None})
            if m["peak bytes"] is not None and m["curriculum"] == "final":
                row["peak MiB"] = m["peak bytes"] / 2**20
                row["estimate MiB"] = (trial_memory(config) - CUDA_CONTEXT) / 2**20
        rows.append(row)
    return rows


def time_modes(plan: Plan, device: str, space, deadline: float, output: Output, info: dict) -> list[dict]:
    """What each variant's child measured (see `gpu_runs.speed`), each child with an equal share of the time
    left. `info` gets the device and the fastest bf16 product."""
    configs = {(label, mode): trial_config(space.base, {**values, **MODES[mode][0]})
               for label, values in VARIANTS.items() for mode in plan.modes}
    header = ["variant", "mode", "curriculum", "n_points", "n_loops", "steps/s", "best steps/s", "warm-up s",
              "GFLOP/step", "GFLOP/s", "% bf16 matmul", "peak MiB", "estimate MiB", "note"]
    measured: list[dict] = []
    for i, label in enumerate(VARIANTS):
        share = time.monotonic() + (deadline - time.monotonic()) / (len(VARIANTS) - i)
        modes = {mode: (configs[label, mode], MODES[mode][1]) for mode in plan.modes}
        job = (speed, (label, modes, device, plan.timed_steps, plan.repeats, plan.matmul, share))
        for _, item in children([job], share):
            if "bf16 matmul FLOP/s" in item:
                if "gpu" in item:
                    info.update({"gpu": item["gpu"], "gpu memory GiB": round(item["gpu memory"] / 2**30, 1)})
                rate = max(info.get("bf16 matmul GFLOP/s", 0), item["bf16 matmul FLOP/s"] / 1e9)
                info["bf16 matmul GFLOP/s"] = float(f"{rate:.4g}")
                continue
            if "variant" in item:
                new = [item]
            else:  # the child as a whole ended (out of time, a crash): every mode it had not finished did not run
                done = {m["mode"] for m in measured if m["variant"] == label and m.get("curriculum") != "first"}
                new = [{"variant": label, "mode": mode, "error": item["error"]}
                       for mode in plan.modes if mode not in done]
            measured += new
            for m in new:
                result = m.get("error") or f"{1 / m['seconds']:.3g} steps/s"
                print(f"speed: {label}, {m['mode']}, {m.get('curriculum', '')}: {result}", file=sys.stderr,
                      flush=True)
            output.table("speed", "Speed", speed_notes(plan, device, info), header,
                         speed_rows(measured, configs, info.get("bf16 matmul GFLOP/s", 0) * 1e9))
    return measured


def speed_notes(plan: Plan, device: str, info: dict) -> list[str]:
    n, _ = plan.matmul
    matmul = info.get("bf16 matmul GFLOP/s")
    notes = [f"The bf16 {n}³ product: {matmul:g} GFLOP/s, the fastest in the variants' processes." if matmul else "",
             "Each variant in a process of its own, one torch thread, its modes one after another at the curriculum's "
             "first and final states. steps/s: median of the timings; estimate MiB: `gpu: auto`'s "
             "(tune_looped/gpus.py) less its CUDA context, beside the allocator's peak."]
    if device == "cpu":
        notes.append("On the CPU: CUDA graphs run eagerly, and TF32 changes oneDNN's products only where the CPU has "
                     "such a mode.")
    return notes


def parse_args(argv):
    p = OneLineArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="folder for the tables (Markdown and JSON)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny shapes, few steps, 2 processes: the test suite's run")
    p.add_argument("--budget", type=float,
                   help="seconds for all sections (default: 400; 600 with --tiny, for a busy machine)")
    p.add_argument("--sections", default=",".join(SECTION_ENDS), help="comma-separated; default: all")
    p.add_argument("--fp32-tolerance", type=float, default=FP32_TOLERANCE)
    p.add_argument("--bf16-tolerance", type=float, default=BF16_TOLERANCE)
    args = p.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTION_ENDS)
    if unknown:
        p.error(f"--sections: unknown {', '.join(sorted(unknown))}; known: {', '.join(SECTION_ENDS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device (--device cpu --tiny runs the check on the CPU)", file=sys.stderr)
        return 2
    # `timeout` ends the call with SIGTERM: exit through the `finally`s, which kill the children and quit MPS
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = TINY_PLAN if args.tiny else RESEARCH
    plan = replace(plan, budget_s=args.budget or plan.budget_s)
    try:
        space = load_space(SPACE, overrides=plan.overrides)
    except (ConfigError, SpaceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started, sections = time.monotonic(), args.sections.split(",")
    deadlines = {name: started + end * plan.budget_s for name, end in SECTION_ENDS.items()}
    info = describe(torch.device("cpu"))
    info.pop("threads", None)  # the parent's: every child sets its own
    output = Output(args.out, info)
    tolerances = {"fp32": args.fp32_tolerance, "bf16": args.bf16_tolerance}
    verdicts, measured = {}, []
    if "correctness" in sections:
        verdicts = correctness(plan, args.device, space, tolerances, deadlines["correctness"], output)
        output.print("correctness", started)
    if "speed" in sections:
        measured = time_modes(plan, args.device, space, deadlines["speed"], output, info)
        output.print("speed", started)
    passed = {check for check, row in verdicts.items() if row["verdict"] == "pass"}
    allowed = [m for m in plan.modes if set(NEEDS.get(m, ())) <= passed or "correctness" not in sections]
    study = [trial_config(space.base, t.values) for t in space.trials]
    refs = {label: trial_config(space.base, values) for label, values in VARIANTS.items()}
    # compile is left out of the packing: each member would compile on its own, for minutes
    mode = best_mode(study, refs, measured, [m for m in allowed if m != "compile"]) or "fp32"
    rates = {}
    if "packing" in sections:
        config = trial_config(space.base, {**VARIANTS["L=1"], **MODES[mode][0]})
        rates = packing(config, mode, MODES[mode][1], args.device, plan.processes, plan.pack_seconds,
                        deadlines["packing"], output)
        output.print("packing", started)
    if measured:
        gpu_memory = int(info["gpu memory GiB"] * 2**30) if "gpu memory GiB" in info else ASSUMED_GPU_MEMORY
        rows, notes = projection(study, refs, measured, mode, rates, allowed, gpu_memory)
        output.table("projection", "Projection: the research study on this device", notes,
                     ["mode", "correct", *(f"{label} h" for label in VARIANTS), "study h, one at a time", "packed",
                      "study h, packed"], rows)
        output.print("projection", started)
    failed = [row for row in verdicts.values() if row["verdict"] != "pass"]
    for row in failed:
        what = (f"difference {row['difference']:.3g} > tolerance {row['tolerance']:g}" if row["verdict"] == "FAIL"
                else row["verdict"])
        print(f"error: correctness: {row['check']} ({row['runs']}): {what}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
