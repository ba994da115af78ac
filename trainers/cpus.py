"""The CPUs this process may run on, on every platform.

`os.sched_getaffinity` exists on Linux only: macOS has none, so even `--dry-run`, which counts the CPUs to
pack trials, failed there. Where a platform tells the affinity (taskset, a container's cpuset), that counts,
not every core of the machine.
"""
from __future__ import annotations

import os


def available_cpus() -> int:
    if hasattr(os, "process_cpu_count"):  # Python 3.13+: the affinity where there is one
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
