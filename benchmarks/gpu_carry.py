"""`python -m benchmarks.gpu_carry`: the wheels `python -m benchmarks.gpu` needs on the GPU machine, downloaded into
`.whl/` (ignored by git) for the device call to carry, and that call, printed whole.

The machine's image has Python 3.12 and torch 2.11 with the packages of IMAGE, and nothing can be downloaded
there. The check imports neither Ray nor wandb, but the config needs pydantic: it and what it requires travel
as wheels for CPython 3.12 on manylinux x86-64, at the versions installed here, which the tests ran with.
`--dry-run` prints the wheels and the call without downloading.
"""
from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.machine import REPO
from trainers.cli import OneLineArgumentParser

# what the device image has (numpy as pandas' own requirement)
IMAGE = ("torch", "numpy", "pandas", "pyarrow", "pyyaml", "matplotlib", "scipy", "psutil", "tqdm", "tensorboard",
         "pytest")
NEEDED = ("pydantic",)  # what the check imports that the image lacks
FOLDER = ".whl"
PYTHON_VERSION = "3.12"
# the newest first; pip takes the first that a wheel of the pinned version has
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
CARRY_LIMIT = 64 * 2**20  # all that one device call carries, the working tree included
# the check's own budget; the call's timeouts are set from it. The device time is 15 minutes a session, start-up
# included: this call and its start leave about 5 minutes for a second, shorter one (one section again)
BUDGET_S = 360
PYTEST_S = 60  # the CUDA tests of tests/test_train.py, after the check


def canonical(name: str) -> str:
    """A distribution's name as the registry compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(names=NEEDED) -> dict[str, str]:
    """`names` and everything they require, less extras, as {name: the version installed here}."""
    found: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = canonical(todo.pop())
        if name in found:
            continue
        distribution = importlib.metadata.distribution(name)
        found[name] = distribution.version
        for requirement in distribution.requires or []:
            spec, _, marker = requirement.partition(";")
            if "extra" not in marker:
                todo.append(re.match(r"[A-Za-z0-9._-]+", spec.strip()).group())
    return dict(sorted(found.items()))


def download_command(pins: dict[str, str], folder: Path) -> list[str]:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
            PYTHON_VERSION, "--implementation", "cp", *platforms, "-d", str(folder),
            *(f"{name}=={version}" for name, version in pins.items())]


def device_command(budget_s: float = BUDGET_S) -> str:
    """The device call's bash line: install the carried wheels, run the check and the CUDA tests, each into
    $OUT as it goes, and exit with the check's status. The device tool brings back at most 8 files, so the
    check's folder of tables comes back as one tarball, beside its report.md."""
    return " ".join([
        f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
        f"{FOLDER}/*.whl && export PYTHONPATH=/tmp/site || exit;",
        "export PYTHONUNBUFFERED=1;",
        "nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode --format=csv "
        '> "$OUT/nvidia-smi.csv" 2>&1;',
        f'timeout -k 10 {budget_s + 30:g} python3 -m benchmarks.gpu "$OUT/gpu" --budget {budget_s:g} 2>&1 '
        '| tee "$OUT/gpu.log"; rc=${PIPESTATUS[0]};',
        f"timeout -k 5 {PYTEST_S} python3 -m pytest tests/test_train.py -q -p no:cacheprovider -k cuda 2>&1 "
        '| tee "$OUT/pytest.log";',
        'cp "$OUT/gpu/report.md" "$OUT/" ; tar -czf "$OUT/gpu.tar.gz" -C "$OUT" gpu && rm -r "$OUT/gpu";',
        "exit $rc",
    ])


def device_call(budget_s: float = BUDGET_S) -> dict:
    """The arguments of the device tool's `run`: the command, the carry, and a timeout that covers every timeout
    in the command with a margin for pip and Python's start."""
    return {"command": device_command(budget_s), "carry": [FOLDER], "timeout_s": int(budget_s + 40 + PYTEST_S + 40)}


def download(pins: dict[str, str], folder: Path) -> list[Path]:
    """The wheels of `pins` in `folder`, and nothing else there: an older version's wheel would be installed too."""
    folder.mkdir(exist_ok=True)
    for stale in folder.glob("*.whl"):
        stale.unlink()
    subprocess.run(download_command(pins, folder), check=True)
    wheels = sorted(folder.glob("*.whl"))
    missing = [name for name in pins if not any(canonical(w.name.split("-")[0]) == name for w in wheels)]
    if missing:
        raise SystemExit(f"error: no wheel of {', '.join(missing)} in {folder}")
    return wheels


def main(argv=None) -> int:
    p = OneLineArgumentParser(prog="python -m benchmarks.gpu_carry", description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="print the wheels and the call; download nothing")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    pins = requirements()
    print("wheels: " + ", ".join(f"{name}=={version}" for name, version in pins.items()))
    if not args.dry_run:
        wheels = download(pins, REPO / FOLDER)
        size = sum(w.stat().st_size for w in wheels)
        print("\n".join(f"  {w.name} ({w.stat().st_size / 2**20:.2f} MiB)" for w in wheels))
        print(f"carry: {FOLDER}/, {size / 2**20:.1f} MiB of the {CARRY_LIMIT // 2**20} MiB a call may carry, "
              "with the working tree")
        if size > CARRY_LIMIT / 4:
            print(f"error: the wheels take {size / 2**20:.1f} MiB, more than a quarter of the carry", file=sys.stderr)
            return 1
    print("device call (the device tool's run):")
    print(json.dumps(device_call(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
