"""Training without Ray: the typed config, the paper's models, the tasks, the training loop and the records
contract the runner and the analysis share.

The names below are the package's public surface. They load on first use, because every `import trainers.x`
runs this file first and the runner's dry run must not pay for torch.
"""
from importlib import import_module

_EXPORTS = {
    "Config": "trainers.config", "ConfigError": "trainers.config", "load_config": "trainers.config",
    "config_from_dict": "trainers.config",
    "build_model": "trainers.models",
    "train": "trainers.training",
    "load_checkpoint": "trainers.checkpoint",
    "SpaceRecord": "trainers.records", "TrialRecord": "trainers.records", "read_space_record": "trainers.records",
    "read_trial_record": "trainers.records", "trial_status": "trainers.records", "variant_label": "trainers.records",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainers' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
