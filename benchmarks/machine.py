"""What the figures depend on: the hardware, its matrix-product FLOP/s, peak memory and load."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from trainers.onednn import read_cpu

REPO = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# the instruction sets that decide which matrix-product kernels MKL and oneDNN run: the same code is 2-3x apart
# between an AVX2-only CPU and one with AVX-512 (and AMX on recent Intel)
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_vp2intersect", "amx_tile", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> str:
    """The CPU's SIMD_FLAGS present, in that order (`avx2 fma`), from /proc/cpuinfo; `unknown` without it."""
    cpu = read_cpu(cpuinfo)
    if cpu is None:
        return "unknown"
    return " ".join(flag for flag in SIMD_FLAGS if flag in cpu.flags) or "none of " + " ".join(SIMD_FLAGS)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return done.stdout.strip() + ("+changes" if dirty else "")
    except OSError:
        return "unknown"


def describe(device: torch.device) -> dict:
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit(),
            "nproc": os.cpu_count(), "cpu": _cpu_model(), "cpu flags": cpu_flags(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load average": load_average()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, n: int = 4096, dtype=torch.float32, seconds: float = 1.0,
                 onednn: bool = False) -> float:
    """Achieved FLOP/s of an n x n x n product, fastest of repeated timings.

    `onednn`: through oneDNN (CPU only) rather than torch.matmul, which sends fp32 to MKL's sgemm. On AMD
    CPUs MKL runs its AVX2 code, at half of what the AVX-512 units give; oneDNN uses them.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    if onednn:
        def product():
            return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    else:
        def product():
            return torch.matmul(a, b)
    product()  # warm-up: thread pool, allocator, kernel selection
    best, spent = float("inf"), 0.0
    while spent < seconds:
        synchronize(device)
        start = time.perf_counter()
        product()
        synchronize(device)
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return 2 * n**3 / best


class OtherLoad:
    """The CPU time other processes took while the `with` ran, as a share of all cores (0 on a quiet machine).

    Our figures are only as good as the machine was quiet: this says how quiet it was.
    """

    def __enter__(self):
        self.start = (_busy_seconds(), _own_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        busy, own, wall = (b - a for a, b in zip(self.start, (_busy_seconds(), _own_seconds(), time.perf_counter())))
        share = max(0.0, busy - own) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0
        # /proc/stat counts in clock ticks (10 ms): over a short window one tick can exceed the window itself
        self.share = min(1.0, share)
        return False


def _busy_seconds() -> float:
    """Non-idle CPU time of the whole machine, from /proc/stat (0 where there is none)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
    guest = sum(fields[8:10])  # already counted in user and nice
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system


class PeakMemory:
    """Peak memory of what runs inside the `with`, in bytes above the level at entry.

    CUDA: the caching allocator's peak. CPU: torch's CPU allocations are plain malloc, which tracemalloc does
    not see, so this reads the process's peak resident set (VmHWM), reset at entry through
    /proc/self/clear_refs. Run each measurement in a fresh process: malloc keeps freed memory, so a
    process that already held more shows a smaller rise.
    """

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            _reset_peak_rss()  # without it VmHWM counts from process start: still right in a fresh process
            self.start = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.peak = _status_bytes("VmHWM") - self.start
        return False


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status_bytes(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
