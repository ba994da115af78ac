"""`python -m benchmarks.step`: training steps/s, prompts/s, peak memory and the share of matrix-product
FLOP/s reached, for every model variant of the hypotheses, at the research's scale and the quick one.

Each variant runs at its final curriculum (the largest prompts and the most loops) in a fresh process, so
peak memory and compile caches start clean. Trailing dotted options apply to every variant, e.g.
`python -m benchmarks.step --quick-only --training.compile true`.
"""
from __future__ import annotations

import multiprocessing
import statistics
import sys
import time

import torch

from trainers.flops import step_flops
from benchmarks import TABLE_STYLE
from benchmarks.machine import OtherLoad, PeakMemory, describe, matmul_flops, synchronize
from trainers.cli import OneLineArgumentParser
from trainers.config import ConfigError, parse_override_args
from trainers.curriculum import final_state
from trainers.models import build_model
from trainers.onednn import ONEDNN
from trainers.records import SEED_KEY, variant_label
from trainers.table import render
from trainers.tasks import sample_batch
from trainers.training import StepRunner, make_optimizer, prepare_model
from tune_looped.space import SpaceError, load_space, trial_config

SPACE = "hypotheses"
SCALES = ("research", "quick")


def benchmark_label(values: dict) -> str:
    """The variant (a configuration less its seed) as REPORT.md names it (`L=2 LSTM`, `n_last_tokens=8 L=1`), less
    the all-tokens default that every variant but the masks shares."""
    return variant_label({k: v for k, v in values.items() if k != SEED_KEY and (k, v) != ("model.n_last_tokens", -1)})


def variants(scale: str) -> dict[str, tuple[dict, dict]]:
    """label -> (the space's base, the trial's values), in the space's order."""
    space = load_space(SPACE, quick=scale == "quick")
    return {benchmark_label(t.values): (space.base, t.values) for t in space.trials}


def measure(scale, label, base, values, overrides, device, threads, warmup, steps) -> dict:
    """One variant, in the calling process: `warmup` untimed steps, then `steps` timed ones.

    The reference matrix product is timed in the same process just before, so both see the same machine,
    and both keep their fastest timing: what the code does when nothing else runs. On the CPU each step is
    timed alone (median and fastest); on CUDA the steps are timed together, since a per-step
    synchronisation would hide the host's lead over the GPU.
    """
    torch.set_num_threads(threads)
    dev = torch.device(device)
    config = trial_config(base, {**values, **overrides}, f"{scale} {label}")
    state = final_state(config.training.curriculum)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    def batch():
        xs, ys = sample_batch(config.training.task_name, batch_size=config.training.batch_size,
                              n_points=state.n_points, n_dims=config.model.n_dims, n_dims_truncated=state.n_dims,
                              generator=generator, sparsity=config.training.sparsity)
        return xs.to(dev), ys.to(dev)

    reference = {"torch.matmul": matmul_flops(dev)}
    if dev.type == "cpu" and ONEDNN:
        reference["oneDNN"] = matmul_flops(dev, onednn=True)
    best_reference = max(reference.values())
    with PeakMemory(dev) as memory:
        model = prepare_model(build_model(config.model).to(dev), config)
        step = StepRunner(model, make_optimizer(model, config, dev), config, dev)
        started = time.perf_counter()
        for _ in range(warmup):
            step(*batch(), state)
        synchronize(dev)
        first = time.perf_counter() - started
        times = []
        with OtherLoad() as others:
            for _ in range(1 if dev.type == "cuda" else steps):
                started = time.perf_counter()
                for _ in range(steps if dev.type == "cuda" else 1):
                    loss, _ = step(*batch(), state)
                loss.item()
                times.append((time.perf_counter() - started) / (steps if dev.type == "cuda" else 1))
    median, best = statistics.median(times), min(times)
    flops = step_flops(config, state)
    return {"scale": scale, "variant": label, "steps/s": 1 / median, "best steps/s": 1 / best,
            "prompts/s": config.training.batch_size / median, "warm-up s": first, "peak MiB": memory.peak / 2**20,
            "GFLOP/step": flops.total / 1e9, "GFLOP/s": flops.total / best / 1e9,
            "matmul GFLOP/s": best_reference / 1e9, "% matmul": 100 * flops.total / best / best_reference,
            "references": reference,
            "others %": 100 * others.share, "formula": flops.formula}


def _in_child(args):
    return measure(*args)


def parse_args(argv):
    p = OneLineArgumentParser(prog="python -m benchmarks.step", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                   help="default: the CPU, and CUDA when present")
    p.add_argument("--variants", help="comma-separated labels as REPORT.md gives them ('L=1,L=2 LSTM,n_last_tokens=8 L=1'); "
                                     "default: all")
    p.add_argument("--steps", type=int, help="timed steps per variant (default: 5 research, 30 quick)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 1, or 3 with compile/CUDA graphs)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default %(default)s)")
    scales = p.add_mutually_exclusive_group()
    scales.add_argument("--quick-only", action="store_true", help="only the quick (CPU-sized) study")
    scales.add_argument("--research-only", action="store_true", help="only the research scale")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables (for RESULTS.md)")
    args, rest = p.parse_known_args(argv)
    return args, parse_override_args(rest)


def main(argv=None) -> int:
    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        jobs = _select(args, overrides)
    except (ConfigError, SpaceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if not devices:
        print("error: --device cuda: no CUDA device", file=sys.stderr)
        return 2
    compiled = overrides.get("training.compile") or overrides.get("training.cuda_graphs")
    warmup = args.warmup if args.warmup is not None else 3 if compiled else 1
    context = multiprocessing.get_context("spawn")
    for device in devices:
        rows = []
        with context.Pool(1, maxtasksperchild=1) as pool:
            for row in pool.imap(_in_child, [
                    (scale, label, base, values, overrides, device, args.threads, warmup,
                     args.steps or (5 if scale == "research" else 30))
                    for scale, label, base, values in jobs]):
                print(f"{device} {row['scale']} {row['variant']}: {row['steps/s']:.3g} steps/s", file=sys.stderr)
                rows.append(row)
        report(device, args, overrides, rows)
    return 0


def _select(args, overrides) -> list[tuple]:
    """(scale, label, base, values) of every variant asked for, each checked with the overrides."""
    scales = ("quick",) if args.quick_only else ("research",) if args.research_only else SCALES
    tables = {scale: variants(scale) for scale in scales}
    wanted = args.variants.split(",") if args.variants else None
    unknown = set(wanted or ()) - {label for table in tables.values() for label in table}
    if unknown:
        raise ConfigError(f"--variants: unknown {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(dict.fromkeys(name for t in tables.values() for name in t))}")
    jobs = [(scale, label, base, values) for scale, table in tables.items() for label, (base, values) in table.items()
            if wanted is None or label in wanted]
    for scale, label, base, values in jobs:
        trial_config(base, {**values, **overrides}, f"{scale} {label}")
    return jobs


def report(device, args, overrides, rows) -> None:
    info = describe(torch.device(device))
    info["threads"] = args.threads
    print(f"# benchmarks.step on {device}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    if overrides:
        print("options: " + " ".join(f"--{k} {v}" for k, v in overrides.items()))
    print("steps/s, prompts/s: median step; GFLOP/s: fastest step; matmul: fastest fp32 4096 x 4096 x 4096 "
          "product (the better of torch.matmul and oneDNN), timed in the same process just before; % matmul: "
          "their ratio; others %: CPU time other processes took during the timed steps, share of all cores")
    for name in rows[0]["references"]:
        print(f"fp32 product by {name}: up to {max(r['references'][name] for r in rows) / 1e9:.0f} GFLOP/s")
    for scale in dict.fromkeys(r["scale"] for r in rows):
        first = next(r for r in rows if r["scale"] == scale)
        print(f"{scale} FLOPs of a step ({first['variant']}): {first['formula']}")
    header = ["scale", "variant", "steps/s", "best steps/s", "prompts/s", "warm-up s", "peak MiB", "GFLOP/step",
              "GFLOP/s", "matmul GFLOP/s", "% matmul", "others %"]
    print("\n".join(render(header, [[r[h] for h in header] for r in rows], markdown=args.markdown, **TABLE_STYLE)))


if __name__ == "__main__":
    raise SystemExit(main())
