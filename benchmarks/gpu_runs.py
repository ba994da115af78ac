"""What `python -m benchmarks.gpu` runs in its child processes: short trainings whose losses it compares, the
timed steps of each speed mode, and one member of a packing.

Each job is a generator of plain dicts, run by `children` in a process of its own, forked from a server that
imported this module (torch and the trainers with it) and ran nothing (multiprocessing's forkserver). CUDA cannot
be forked into a child once initialised, and the server never initialises it, so each child starts with clean
memory, caches and CUDA state, without importing torch again (3 to 5 CPU-seconds a child on 2 AVX2 cores). The
parent receives each dict as soon as it is sent, so a job killed at its deadline still leaves what it had measured.
"""
from __future__ import annotations

import multiprocessing
import os
import queue as queues
import statistics
import time
import warnings
from typing import Callable, Iterator

import torch

from benchmarks.machine import PeakMemory, matmul_flops, synchronize
from trainers.config import Config
from trainers.curriculum import CurriculumState, curriculum_at, final_state
from trainers.models import build_model
from trainers.tasks import sample_batch
from trainers.training import CUDA_GRAPH_WARMUP_STEPS, StepRunner, make_optimizer, prepare_model

CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload([__name__])
# untimed steps before a timing: with CUDA graphs, the eager steps, the capture and a first replay
WARMUP_STEPS = CUDA_GRAPH_WARMUP_STEPS + 2
POLL_S = 0.5
DONE = None  # what a child sends when its job has ended


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}"[:300]


def set_tf32(enabled: bool) -> None:
    """TF32 for the fp32 products (cuBLAS) and cuDNN (the LSTM), or neither: switches that torch 2.11 and 2.13
    both have. torch's own defaults differ between the two, products off and cuDNN on."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled


def _child(channel, index: int, job: Callable, args: tuple, environment: dict[str, str]) -> None:
    os.environ.update(environment)  # before the job's first CUDA call, which reads it
    try:
        for item in job(*args):
            channel.put((index, item))
    except BaseException as err:  # the parent must learn why, whatever it was
        channel.put((index, {"error": one_line(err)}))
    finally:
        channel.put((index, DONE))


def children(jobs: list[tuple[Callable, tuple]], deadline: float,
             environment: dict[str, str] | None = None) -> Iterator[tuple[int, dict]]:
    """Run every job (a generator function and its arguments) at once, each in a process of its own with
    `environment` added to the one the server started with, and yield (the job's index, a dict it sent) as they
    come. A job that raises, dies without a word (a crash in C, a kill) or still runs at `deadline`
    (time.monotonic) yields a last {"error": ...}; the ones still running are killed."""
    channel = CONTEXT.Queue()
    # not daemons: a daemon may not start processes, and inductor's compile workers are processes
    processes = [CONTEXT.Process(target=_child, args=(channel, index, job, args, environment or {}))
                 for index, (job, args) in enumerate(jobs)]
    for process in processes:
        process.start()
    running = set(range(len(processes)))
    try:
        while running:
            if time.monotonic() >= deadline:
                for index in sorted(running):
                    yield index, {"error": "out of time"}
                return
            try:
                index, item = channel.get(timeout=min(POLL_S, max(0.01, deadline - time.monotonic())))
            except queues.Empty:
                # a job that ends normally sends DONE before its process exits 0; any other exit lost it
                for index in sorted(i for i in running if processes[i].exitcode not in (None, 0)):
                    running.discard(index)
                    yield index, {"error": f"the process died (exit code {processes[index].exitcode})"}
                continue
            if item is DONE:
                running.discard(index)
            else:
                yield index, item
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join(timeout=5)


def _batches(config: Config, seed: int, device: torch.device):
    """A function of a curriculum state that returns the next batch on `device`, as training samples it."""
    t, generator = config.training, torch.Generator().manual_seed(seed)

    def batch(state: CurriculumState):
        xs, ys = sample_batch(t.task_name, batch_size=t.batch_size, n_points=state.n_points,
                              n_dims=config.model.n_dims, n_dims_truncated=state.n_dims, generator=generator,
                              sparsity=t.sparsity)
        return xs.to(device), ys.to(device)
    return batch


def _runner(config: Config, device: torch.device, onednn: bool | None = None) -> StepRunner:
    """The model, its optimizer and the step, as `trainers.training.train` builds them: on the CPU first, so that
    one seed gives the same weights on every device."""
    torch.manual_seed(config.training.seed)
    model = prepare_model(build_model(config.model).to(device), config, onednn)
    with warnings.catch_warnings():
        # that CUDA graphs run eagerly on the CPU, the tables say once; each child would warn again
        warnings.filterwarnings("ignore", "training.cuda_graphs")
        return StepRunner(model, make_optimizer(model, config, device), config, device)


def losses(runs: list[tuple[str, Config, str, int, bool]], threads: int) -> Iterator[dict]:
    """Each run (name, config, device, steps, oneDNN on the CPU) trains from the config's seed through the
    curriculum's first steps, TF32 off, and sends its losses; a run that fails sends its error instead."""
    torch.set_num_threads(threads)
    for name, config, device, steps, onednn in runs:
        dev = torch.device(device)
        set_tf32(False)
        started = time.perf_counter()
        try:
            step, batch = _runner(config, dev, onednn), _batches(config, config.training.seed, dev)
            out = []
            for i in range(steps):
                state = curriculum_at(config.training.curriculum, i)
                out.append(step(*batch(state), state)[0])
            yield {"run": name, "losses": [loss.item() for loss in out], "seconds": time.perf_counter() - started}
        except Exception as err:  # a failed run (a graph capture, say) must not cost the others
            yield {"run": name, "error": one_line(err)}


def speed(variant: str, modes: dict[str, tuple[Config, bool]], device: str, steps: int, repeats: int,
          matmul: tuple[int, float], deadline: float) -> Iterator[dict]:
    """The device and its bf16 product's FLOP/s (`matmul`: size, seconds), then each mode (its config and TF32) of
    one variant at the curriculum's first and final states, one torch thread as a trial has; the modes left when
    `deadline` has passed are skipped."""
    torch.set_num_threads(1)
    dev = torch.device(device)
    n, seconds = matmul
    info = {"bf16 matmul FLOP/s": matmul_flops(dev, n, torch.bfloat16, seconds)}
    if dev.type == "cuda":
        properties = torch.cuda.get_device_properties(dev)
        info.update({"gpu": properties.name, "gpu memory": properties.total_memory})
    yield info
    for mode, (config, tf32) in modes.items():
        if time.monotonic() >= deadline:
            yield {"variant": variant, "mode": mode, "error": "out of time"}
            continue
        try:
            yield from _time_mode(variant, mode, config, tf32, dev, steps, repeats)
        except Exception as err:  # one mode that fails (a capture, a compile) must not hide the others
            yield {"variant": variant, "mode": mode, "error": one_line(err)}


def _time_mode(variant, mode, config: Config, tf32: bool, dev, steps: int, repeats: int) -> Iterator[dict]:
    set_tf32(tf32)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    curriculum = config.training.curriculum
    step, batch = _runner(config, dev), _batches(config, 0, dev)
    for name, state in (("first", curriculum_at(curriculum, 0)), ("final", final_state(curriculum))):
        started = time.perf_counter()
        for _ in range(WARMUP_STEPS):
            step(*batch(state), state)
        synchronize(dev)
        warmup = time.perf_counter() - started
        times = []
        for _ in range(repeats):
            # timed together: a synchronisation per step would hide the host's lead over the GPU
            started = time.perf_counter()
            for _ in range(steps):
                step(*batch(state), state)
            synchronize(dev)
            times.append((time.perf_counter() - started) / steps)
        peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
        yield {"variant": variant, "mode": mode, "curriculum": name, "state": state,
               "seconds": statistics.median(times), "best seconds": min(times), "warm-up s": warmup, "peak bytes": peak}


def pack_member(config: Config, device: str, tf32: bool, barrier, seconds: float, deadline: float) -> Iterator[dict]:
    """One of several trials sharing a device: L=1 steps at the final curriculum state, as many as fit in
    `seconds` after every member has warmed up (`barrier`), on one torch thread as a trial has."""
    torch.set_num_threads(1)
    dev = torch.device(device)
    set_tf32(tf32)
    state = final_state(config.training.curriculum)
    with PeakMemory(dev) as memory:
        step, batch = _runner(config, dev), _batches(config, 0, dev)
        for _ in range(WARMUP_STEPS):
            step(*batch(state), state)
        synchronize(dev)
        barrier.wait(timeout=max(1.0, deadline - time.monotonic()))
        # every member holds its memory now: the device's use is all of theirs together
        free, total = torch.cuda.mem_get_info(dev) if dev.type == "cuda" else (None, None)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            step(*batch(state), state)
            count += 1
        synchronize(dev)
        elapsed = time.perf_counter() - started
    yield {"steps": count, "seconds": elapsed, "peak bytes": memory.peak,
           "reserved bytes": torch.cuda.max_memory_reserved(dev) if dev.type == "cuda" else None,
           "device used bytes": total - free if total is not None else None}
