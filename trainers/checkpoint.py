"""Checkpoint files: one `checkpoint.pt` per directory, written atomically, read without unpickling code;
and checkpoints of this code or of the paper's reference code loaded into a model."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from trainers.config import ConfigError
from trainers.models import build_model

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


def read_weights(file, **options):
    """`torch.load(file, weights_only=True)`: every `.pt` file is read here, so none can run code.

    A missing or unreadable file raises its own OSError. Anything else that goes wrong is a ValueError naming
    the file: besides UnpicklingError for a pickle that would run code, the weights-only unpickler fails on
    damaged bytes with whatever they lead to (RuntimeError, OSError, EOFError, IndexError...).
    """
    try:
        return torch.load(file, map_location="cpu", weights_only=True, **options)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:
        raise ValueError(f"{file}: not a loadable checkpoint, only tensors and containers are accepted "
                         f"({reason(err)})") from None


def load_checkpoint(path) -> dict:
    """Load a checkpoint directory or file; only tensors and plain containers are accepted (weights_only)."""
    path = Path(path)
    file = path / CHECKPOINT_FILE if path.is_dir() else path
    try:
        state = read_weights(file)
    except FileNotFoundError:
        raise ValueError(f"{file}: no checkpoint file there") from None
    missing = {"model", "optimizer", "step", "rng", "metrics", "config"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise ValueError(f"{file}: not a tune-looped checkpoint (missing {', '.join(sorted(missing))})")
    return state


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint directory with the highest step under `run_dir/checkpoints`, if any."""
    candidates = sorted((run_dir / "checkpoints").glob(f"step_*/{CHECKPOINT_FILE}"))
    return candidates[-1].parent if candidates else None


def _is_causal_mask_buffer(key, value):
    """nanoGPT's slow-attention path saves its causal mask; it is not a parameter of the model."""
    if key.endswith(".attn.masked_bias"):
        return True
    return (key.endswith(".attn.bias") and isinstance(value, torch.Tensor) and value.dim() == 4
            and value.shape[:2] == (1, 1) and value.shape[2] == value.shape[3])


def _state_dict_from(obj, path):
    expected = "{'model': state_dict}, {'model_state_dict': state_dict} or a bare state dict"
    if isinstance(obj, dict):
        for key in ("model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return obj
    raise ValueError(f"{path}: expected {expected}, found a {type(obj).__name__} that is none of these")


def load_reference_checkpoint(model, path):
    """Load a checkpoint of this code or of the reference code into `model` (strict); return `model`."""
    obj = read_weights(path)
    state_dict = {k: v for k, v in _state_dict_from(obj, path).items() if not _is_causal_mask_buffer(k, v)}
    model.load_state_dict(state_dict, strict=True)
    return model


def check_pretrained(config, source: str) -> None:
    """Load `model.pretrained_path` into the model `config.model` builds, before any training starts.

    Training loads the file only inside the run (inside a Ray trial for a sweep), where a bad file would
    surface as a traceback after Ray started; here it is one ConfigError line naming `source`, the key, the file
    and what is wrong. The file is read with weights_only=True, so a pickle that would run code is refused.
    """
    path = config.model.pretrained_path
    if not path:
        return
    where = f"{source}: model.pretrained_path: {path}"
    if not Path(path).is_file():
        raise ConfigError(f"{where}: {'is a folder, not a file' if Path(path).is_dir() else 'no such file'}")
    model = build_model(config.model)
    try:
        load_reference_checkpoint(model, path)
    except PermissionError as err:
        raise ConfigError(f"{where}: cannot read it ({err.strerror})") from None
    except ValueError as err:
        raise ConfigError(f"{where}: {str(err).removeprefix(f'{path}: ')}") from None
    except RuntimeError as err:
        # load_state_dict(strict=True) lists every missing, unexpected or mis-shaped tensor on its own line
        problems = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        first = problems[0] if problems else str(err).strip()
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{where}: does not fit this model section (n_embd={config.model.n_embd}, "
                          f"n_layer={config.model.n_layer}, family={config.model.family}): {first[:200]}{more}") from None


def reason(err: Exception) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__
