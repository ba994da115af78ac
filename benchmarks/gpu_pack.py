"""The packing of `python -m benchmarks.gpu`: 1, 2, 4, 8 trials training at once on the one GPU, each a process
of its own, as Ray's fractional GPUs run them (they only count, and set CUDA_VISIBLE_DEVICES), then the same
with NVIDIA's MPS where the machine can start it."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.gpu_runs import CONTEXT, children, pack_member
from trainers.config import Config
from tune_looped.gpus import CUDA_CONTEXT, trial_memory

MPS_TIMEOUT_S = 10


@contextlib.contextmanager
def mps_daemon():
    """NVIDIA's MPS for the processes given the environment it yields, if this machine can start it (else it yields
    an empty one): its control daemon, with its pipe and log in a folder of ours, quit on the way out."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        yield {}
        return
    with tempfile.TemporaryDirectory() as folder:
        env = {"CUDA_MPS_PIPE_DIRECTORY": f"{folder}/pipe", "CUDA_MPS_LOG_DIRECTORY": f"{folder}/log"}
        for path in env.values():
            os.makedirs(path)
        daemon = {**os.environ, **env}
        started = False
        try:
            started = subprocess.run([control, "-d"], env=daemon, capture_output=True,
                                     timeout=MPS_TIMEOUT_S).returncode == 0
            yield env if started else {}
        finally:
            if started:
                subprocess.run([control], env=daemon, input=b"quit\n", capture_output=True, timeout=MPS_TIMEOUT_S)


def member_row(k: int, mps: bool, index: int, item: dict, estimate: int) -> dict:
    row = {"processes": k, "MPS": "yes" if mps else "no", "process": index}
    if "error" in item:
        return {**row, "note": item["error"]}
    used = item["device used bytes"]
    return {**row, "steps/s": item["steps"] / item["seconds"], "peak MiB": item["peak bytes"] / 2**20,
            "reserved MiB": item["reserved bytes"] / 2**20 if item["reserved bytes"] is not None else None,
            "estimate MiB": (estimate - CUDA_CONTEXT) / 2**20,
            "device used GiB": used / 2**30 if used is not None else None}


def aggregate_row(k: int, mps: bool, mode: str, members: list[dict], estimate: int) -> dict:
    row = {"processes": k, "MPS": "yes" if mps else "no", "mode": mode, "estimate GiB": k * estimate / 2**30}
    failed = [m["note"] for m in members if "steps/s" not in m]
    if failed or len(members) < k:
        return {**row, "note": failed[0] if failed else "MPS did not start"}
    used = [m["device used GiB"] for m in members if m["device used GiB"] is not None]
    return {**row, "steps/s": sum(m["steps/s"] for m in members), "slowest steps/s": min(m["steps/s"] for m in members),
            "peak MiB": max(m["peak MiB"] for m in members), "device used GiB": max(used) if used else None}


def packing(config: Config, mode: str, tf32: bool, device: str, processes: tuple, seconds: float, deadline: float,
            output) -> dict:
    """Aggregate steps/s by (processes, MPS), each round with an equal share of the time left; every row goes to
    `output` as it comes."""
    # MPS from the most processes down: where time runs short, the packing that gains most from it is measured
    rounds = [(k, False) for k in processes]
    if device == "cuda":
        rounds += [(k, True) for k in processes[::-1] if k > 1]
    estimate = trial_memory(config)
    notes = [f"L=1 at its final curriculum state, {mode}, one torch thread each, timed for {seconds:g} s once all "
             f"have warmed up. peak: the allocator's (the process's resident set on the CPU); estimate: `gpu: auto`'s "
             f"(tune_looped/gpus.py), {estimate / 2**20:.0f} MiB a trial with its CUDA context, "
             f"{(estimate - CUDA_CONTEXT) / 2**20:.0f} MiB without"]
    aggregate, each, rates = [], [], {}
    with contextlib.ExitStack() as stack:
        mps = None
        for i, (k, with_mps) in enumerate(rounds):
            if with_mps and mps is None:
                mps = stack.enter_context(mps_daemon())
            share = time.monotonic() + (deadline - time.monotonic()) / (len(rounds) - i)
            members = []
            if mps or not with_mps:
                job = (pack_member, (config, device, tf32, CONTEXT.Barrier(k), seconds, share))
                started = children([job] * k, share, mps if with_mps else None)
                members = sorted((member_row(k, with_mps, index, item, estimate) for index, item in started),
                                 key=lambda m: m["process"])
            row = aggregate_row(k, with_mps, mode, members, estimate)
            aggregate.append(row)
            each += members
            if "steps/s" in row:
                rates[k, with_mps] = row["steps/s"]
            for r in aggregate:
                if (1, False) in rates and "steps/s" in r:
                    r["x one"] = r["steps/s"] / rates[1, False]
            print(f"packing: {k} processes{' with MPS' if with_mps else ''}: {row.get('steps/s') or row['note']}",
                  file=sys.stderr, flush=True)
            output.table("packing", "Packing", notes, ["processes", "MPS", "mode", "steps/s", "x one",
                         "slowest steps/s", "peak MiB", "device used GiB", "estimate GiB", "note"], aggregate)
            output.table("packing_processes", "Packing: each process", notes, ["processes", "MPS", "process",
                         "steps/s", "peak MiB", "reserved MiB", "estimate MiB", "device used GiB", "note"], each)
    return rates
