"""Checkpoint files: one `checkpoint.pt` per directory, written atomically, read without unpickling code."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_dir_of(path) -> Path:
    path = Path(path)
    return path.parent if path.name == CHECKPOINT_FILE else path


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Write `directory/checkpoint.pt` through a temporary file so a crash never leaves half a checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_FILE
    partial = directory / (CHECKPOINT_FILE + ".partial")
    torch.save(state, partial)
    os.replace(partial, target)
    return directory


def load_checkpoint(path) -> dict:
    """Load a checkpoint directory or file; only tensors and plain containers are accepted (weights_only)."""
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{file}: no checkpoint file there") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{file}: not a loadable checkpoint ({reason[:200]})") from None
    missing = {"model", "optimizer", "step", "rng", "metrics", "config"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise ValueError(f"{file}: not a tune-looped checkpoint (missing {', '.join(sorted(missing))})")
    return state


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint directory with the highest step under `run_dir/checkpoints`, if any."""
    candidates = sorted((run_dir / "checkpoints").glob(f"step_*/{CHECKPOINT_FILE}"))
    return candidates[-1].parent if candidates else None
