"""Checkpoint files: one `checkpoint.pt` per directory, written atomically with its sha256 beside it, read
without unpickling code and refused when damaged; and checkpoints of this code or of the research's code
loaded into a model."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from trainers import atomic
from trainers.config import ConfigError
from trainers.layout import CHECKPOINT_FILE
from trainers.models import build_model

# `sha256sum -c checkpoint.pt.sha256` checks a file by hand; Ray copies it with the checkpoint's folder
CHECKSUM_SUFFIX = ".sha256"


def checkpoint_dir_of(path) -> Path:
    path = Path(path)
    return path.parent if path.name == CHECKPOINT_FILE else path


def checksum_file(file) -> Path:
    file = Path(file)
    return file.with_name(file.name + CHECKSUM_SUFFIX)


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Write `directory/checkpoint.pt`, then its checksum, each whole or not at all (`trainers.atomic`).

    The checksum guards the copies others make (Ray copies every reported checkpoint into the storage, not
    atomically): a copy cut short by a full disk or a kill is refused on load instead of half read."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    target = atomic.write_bytes(directory / CHECKPOINT_FILE, data)
    atomic.write_text(checksum_file(target), f"{hashlib.sha256(data).hexdigest()}  {CHECKPOINT_FILE}\n")
    return directory


def verify_checksum(file) -> None:
    """A ValueError naming `file` when it differs from the sha256 saved beside it. A file without one (written
    before checkpoints carried it, or by other code) is not checked."""
    try:
        expected = checksum_file(file).read_text().split()[0]
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError, IndexError):
        raise ValueError(f"{file}: damaged checkpoint: its checksum file {checksum_file(file).name} is "
                         "unreadable") from None
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ValueError(f"{file}: damaged checkpoint: {Path(file).stat().st_size} bytes whose sha256 differs from "
                         f"the one saved with it ({checksum_file(file).name})")


def read_weights(file, **options):
    """`torch.load(file, weights_only=True)`: every `.pt` file is read here, so none can run code; a file with a
    checksum beside it is verified first.

    A missing or unreadable file raises its own OSError. Anything else that goes wrong is a ValueError naming
    the file: a checksum that differs, or, besides UnpicklingError for a pickle that would run code, whatever
    damaged bytes lead the weights-only unpickler to (RuntimeError, OSError, EOFError, IndexError...).
    """
    verify_checksum(file)
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


def load_research_checkpoint(model, path):
    """Load a checkpoint of this code or of the research's code into `model` (strict); return `model`."""
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
        load_research_checkpoint(model, path)
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
