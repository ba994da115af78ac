"""`python -m benchmarks.sweep`: how much of a sweep's wall time is scheduling rather than training.

Runs a space's quick study through the real runner (`python -m tune_looped.run --quick`, with `--no-report`
unless `--report` asks for the analysis too) once per CPU packing (`--packings 1,2`: 1 CPU and 1 torch thread
per trial, so 2 trials at once on 2 cores; or 2 CPUs and 2 threads each, one trial at a time), and compares its wall time with the ideal: the sum of
the trials' training times (the training loop's own `elapsed_s`) divided by the parallel slots. Ray's
start-up and shutdown (`ray.init(address="local")`, then `ray.shutdown()`, as the runner calls them) are timed
alone, in a fresh process. `--experiment DIR` reads the timing of a sweep already on disk instead.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from analysis.experiment import read_result_rows
from benchmarks import TABLE_STYLE
from benchmarks.machine import REPO, describe, load_average
from trainers.cli import OneLineArgumentParser
from trainers.config import ConfigError, parse_override_args
from trainers.layout import RESULT_FILE, trial_folders
from trainers.table import render
from tune_looped.space import load_space, quick_overrides, resolve_space_path

RAY_STARTUP = """
import json, time
t0 = time.perf_counter()
import ray
from tune_looped.cluster import start_ray, stop_ray
t1 = time.perf_counter()
start_ray(None)
t2 = time.perf_counter()
stop_ray(keep=False)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "init": t2 - t1, "shutdown": t3 - t2}))
"""


def _ray_startup() -> dict:
    done = subprocess.run([sys.executable, "-c", RAY_STARTUP], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def shortened_space(space: str, steps: int | None, overrides: dict, folder: Path) -> Path:
    """A copy of the space whose quick block trains `steps` steps (and takes `overrides`), its base and includes
    made absolute."""
    path = resolve_space_path(space)
    raw = yaml.safe_load(path.read_text())
    if isinstance(raw.get("base"), str):
        raw["base"] = str((path.parent / raw["base"]).resolve())
    if isinstance(raw.get("include"), list):
        raw["include"] = [str((path.parent / included).resolve()) for included in raw["include"]]
    quick = raw.setdefault("quick", {})
    quick["base"] = {**quick_overrides(quick.get("base", {}), path), **overrides,
                     **({"training.train_steps": steps} if steps else {})}
    out = folder / path.name
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_space(out, quick=True)  # fail here, with the space's own message, rather than inside the runner
    return out


def _trial_timings(experiment: Path) -> list[dict]:
    """Per trial: training time (`elapsed_s` of its last row), its process's start and its end (epoch s)."""
    trials = []
    for trial in trial_folders(experiment):
        result = trial / RESULT_FILE
        rows = [r for r in read_result_rows(result) if "elapsed_s" in r] if result.exists() else []
        if rows:
            last = rows[-1]
            trials.append({"training_s": last["elapsed_s"], "steps": last["step"] + 1,
                           "start": last["wall_time"] - last["time_total_s"], "end": last["wall_time"]})
    return trials


def timing_row(label: str, experiment: Path, slots: int, wall: float | None, started: float | None) -> dict:
    trials = _trial_timings(experiment)
    if not trials:
        raise SystemExit(f"error: {experiment}: no trial results (result.json with elapsed_s) there")
    training = sum(t["training_s"] for t in trials)
    first, last = min(t["start"] for t in trials), max(t["end"] for t in trials)
    span = last - first
    row = {"packing": label, "trials": len(trials), "steps": max(t["steps"] for t in trials), "slots": slots,
           "sum training s": training, "ideal s": training / slots, "trials span s": span,
           "span / ideal": span * slots / training}
    if wall is not None:
        row.update({"wall s": wall, "wall / ideal": wall * slots / training, "before first trial s": first - started,
                    "after last trial s": started + wall - last})
    return row


def _run_sweep(space_file: Path, cpus: int, gpus: float, storage: Path, name: str,
              report: bool) -> tuple[float, float]:
    argv = [sys.executable, "-m", "tune_looped.run", "--space", str(space_file), "--quick",
            *([] if report else ["--no-report"]), "--storage", str(storage), "--name", name,
            "--cpus-per-trial", str(cpus)]
    argv += ["--gpus-per-trial", str(gpus)] if gpus else []
    started, clock = time.time(), time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - clock
    if done.returncode != 0:
        raise SystemExit(f"error: the sweep exited {done.returncode}:\n{done.stderr[-3000:]}")
    return started, wall


def parse_args(argv):
    p = OneLineArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.splitlines()[0])
    p.add_argument("--space", default="hypotheses", help="space name or path (default %(default)s); its quick block")
    p.add_argument("--steps", type=int, help="train this many steps per trial instead of the quick block's")
    p.add_argument("--packings", default="1,2", help="CPUs (= torch threads) per trial, comma-separated "
                   "(default %(default)s)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="e.g. 0.25: four trials share a GPU "
                   "(default %(default)s)")
    p.add_argument("--experiment", type=Path, help="only read the timing of this sweep folder (no run)")
    p.add_argument("--slots", type=int, help="with --experiment: how many trials ran at once")
    p.add_argument("--report", action="store_true", help="end each sweep with its analysis, as the README's "
                   "first command does; 'after last trial s' is then the analysis' time")
    p.add_argument("--keep", action="store_true", help="keep the sweeps' results (printed) instead of deleting")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables (for RESULTS.md)")
    args, rest = p.parse_known_args(argv)
    return args, parse_override_args(rest)


def main(argv=None) -> int:
    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        packings = [int(c) for c in args.packings.split(",")]
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("# benchmarks.sweep: " + ", ".join(f"{k} {v}" for k, v in describe(torch.device("cpu")).items()
                                             if k != "threads"))
    if args.experiment:
        row = timing_row("as run", args.experiment, args.slots or 1, None, None)
        print("\n".join(render(list(row), [list(row.values())], markdown=args.markdown, **TABLE_STYLE)))
        return 0
    startup = _ray_startup()
    print(f"Ray start-up (fresh process): import {startup['import']:.1f} s, ray.init(address='local') "
          f"{startup['init']:.1f} s, its shutdown {startup['shutdown']:.2f} s")
    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    try:
        space_file = shortened_space(args.space, args.steps, overrides, work)
        space = load_space(space_file, quick=True)
        rows = []
        gpus = args.gpus_per_trial
        gpu_slots = math.floor(torch.cuda.device_count() / gpus) if gpus else math.inf
        for cpus in packings:
            slots = max(1, min((os.cpu_count() or 1) // cpus, gpu_slots, space.max_concurrent or math.inf,
                               len(space.trials)))
            before = load_average()
            started, wall = _run_sweep(space_file, cpus, gpus, work / "results", f"cpu{cpus}", args.report)
            label = f"{slots} x {cpus} thread(s)" + (f", {gpus} GPU" if gpus else "")
            row = timing_row(label, work / "results" / f"cpu{cpus}", slots, wall, started)
            rows.append({**row, "load before/after": f"{before} / {load_average()}"})
        print(f"space {space.path.name} --quick, {len(space.trials)} trials"
              + (f", {args.steps} steps" if args.steps else "") + (", with the analysis" if args.report else "")
              + ("; " + " ".join(f"--{k} {v}" for k, v in overrides.items()) if overrides else ""))
        lines = render(list(rows[0]), [list(r.values()) for r in rows], markdown=args.markdown, **TABLE_STYLE)
        print("\n".join(lines))
    finally:
        if args.keep:
            print(f"results kept in {work / 'results'}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
