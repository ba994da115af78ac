"""`resources.gpu: auto`: each trial's share of a GPU, from an estimate of the GPU memory it needs, so several
trials share one; with no GPU, the time the trials would take on the CPU.

The GPUs are those of the nodes Ray can schedule on (`cluster_gpus`: Ray's resources, and a GPU's memory as a
small task on a GPU node reads it), so a CPU-only head node of a GPU cluster still puts the trials on its GPUs."""
from __future__ import annotations

import math
import sys

from trainers.config import Config
from trainers.curriculum import curriculum_at, loop_window_start
from trainers.flops import training_flops
from tune_looped.cluster import warn

# a logical GPU (`--num-gpus` where torch sees no CUDA device) is taken for a common 24 GiB card
ASSUMED_GPU_MEMORY = 24 * 2**30
CUDA_CONTEXT = 512 * 2**20
# beyond 8 trials a GPU, the trials contend for its compute more than they gain from sharing it
MIN_SHARE = 0.125
# research-scale L1 step on one CPU: 266 GFLOP/s on 2 cores of an AMD EPYC, benchmarks/RESULTS.md
CPU_FLOPS = 133e9


def trial_memory(config: Config) -> int:
    """Bytes of GPU memory at the final curriculum: the activations autograd keeps for the loss window's
    iterations, fp32, 13 C + 2 heads x tokens values a token per layer and iteration (fitted to the peak memory of
    the research-scale steps in benchmarks/RESULTS.md: L1 1763, L3 4409, LSTM1 1327 MiB), parameters with Adam's
    state (16 bytes each) and the CUDA context."""
    m, t = config.model, config.training
    state = curriculum_at(t.curriculum, t.train_steps - 1)
    tokens = 2 * state.n_points
    window = state.n_loops - loop_window_start(state.n_loops, t.n_loop_window) if m.family == "gpt2_loop" else 1
    attention = 0 if m.use_lstm_layer else 2 * m.n_head * tokens
    activations = 4 * window * m.n_layer * t.batch_size * tokens * (13 * m.n_embd + attention)
    parameters = 16 * 12 * m.n_layer * m.n_embd ** 2
    return activations + parameters + CUDA_CONTEXT


def gpu_share(memory_needed: int, gpu_memory: int) -> float:
    """1/k of a GPU, k the trials whose estimated memory fits on it, between MIN_SHARE and 1."""
    fits = gpu_memory // max(memory_needed, 1)
    return 1.0 if fits <= 1 else max(MIN_SHARE, 1 / fits)


def cpu_hours(configs: list[Config]) -> list[float]:
    """Projected training hours of each trial on one CPU, its matrix-product FLOPs over CPU_FLOPS."""
    return [training_flops(c) / CPU_FLOPS / 3600 for c in configs]


def describe_cpu_time(configs: list[Config]) -> str:
    hours = cpu_hours(configs)
    return (f"no GPU found: the {len(hours)} trials train on the CPU, about {math.fsum(hours) / len(hours):.1f} h "
            f"each on one CPU (the longest {max(hours):.1f} h), from their FLOPs at {CPU_FLOPS / 1e9:.0f} GFLOP/s "
            "per CPU (benchmarks/RESULTS.md); --quick runs the CPU-sized study")


def auto_share(configs: list[Config], gpus: float, memory: int) -> float:
    """The share of a GPU each trial gets (0: the CPU, with one warning line of the projected time)."""
    if not gpus:
        warn(describe_cpu_time(configs))
        return 0.0
    needed = max(trial_memory(c) for c in configs)
    share = gpu_share(needed, memory)
    print(f"resources.gpu auto: each trial gets {share:g} of a GPU: the largest trial needs about "
          f"{needed / 2**30:.1f} GiB (estimated) of its {memory / 2**30:.0f} GiB", file=sys.stderr)
    return share


MEMORY_TASK_TIMEOUT_S = 120


def cluster_gpus() -> tuple[float, int]:
    """(the GPUs Ray can schedule on, the memory of one): Ray's resources count them; a task with a sliver of a GPU
    reads its memory on a GPU node. A logical GPU (`--num-gpus` without CUDA), or a node that does not answer in
    time, counts as ASSUMED_GPU_MEMORY."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0.0)
    if not gpus:
        return 0.0, ASSUMED_GPU_MEMORY

    @ray.remote(num_gpus=0.01, num_cpus=0)
    def memory_of_a_gpu():
        import torch

        return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None

    try:
        memory = ray.get(memory_of_a_gpu.remote(), timeout=MEMORY_TASK_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        memory = None
    return gpus, memory or ASSUMED_GPU_MEMORY
