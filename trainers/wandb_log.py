"""One W&B run per trial, named in the research's style (`LR_loop_L2_ends{30}_T{15}`).

The API key is never passed here: W&B finds it itself in `WANDB_API_KEY` or `wandb login`'s netrc, and
without one the run is written offline under the trial's directory. The run's id is the trial's, so a retried or
resumed trial continues its one run instead of starting another beside it. W&B cannot append to an offline run,
so there a retry replaces the trial's earlier offline run with one replaying the checkpoint's rows: one folder per
trial, every step once.
"""
from __future__ import annotations

import netrc
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from trainers.config import Config, config_to_dict

TASK_ABBREVIATIONS = {
    "linear_regression": "LR", "noisy_linear_regression": "NLR", "sparse_linear_regression": "SLR",
    "relu_2nn_regression": "R2NN", "decision_tree": "DT",
}


def run_name(config: Config, values: dict) -> str:
    m, t = config.model, config.training
    parts = [TASK_ABBREVIATIONS.get(t.task_name, t.task_name), "loop" if m.family == "gpt2_loop" else "tf",
             f"L{m.n_layer}"]
    if m.use_lstm_layer:
        parts.append("LSTM")
    if m.n_last_tokens != -1:
        parts.append(f"N{m.n_last_tokens}")
    if m.family == "gpt2_loop":
        parts += [f"ends{{{t.curriculum.loops.end}}}", f"T{{{t.n_loop_window}}}"]
    if "training.seed" in values:
        parts.append(f"seed{t.seed}")
    return "_".join(parts)


def flat_config(config: Config) -> dict:
    """`{"model.n_layer": 2, ...}`: W&B's grouping and parallel-coordinates views list only top-level keys."""
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}{key}.", inner)
        else:
            flat[prefix.rstrip(".")] = value

    walk("", config_to_dict(config))
    return flat


def key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    return ("online" if key_available() else "offline") if mode == "auto" else mode


class WandbRun:
    def __init__(self, config: Config, values: dict, experiments, settings: dict, directory: str, run_id: str,
                 history: Sequence[dict] = (), copies: Sequence = ()):
        """`history`: the rows of the checkpoint the trial resumes from (none on a first attempt); `copies`: other
        folders where the trial's earlier runs may be (Ray moves a trial's files from `directory` to its results)."""
        import wandb

        mode = resolve_mode(settings.get("mode", "auto"))
        if mode == "offline":
            for folder in (directory, *copies):
                for earlier in Path(folder, "wandb").glob(f"offline-run-*-{run_id}"):
                    shutil.rmtree(earlier)
        self.run = wandb.init(
            project=settings.get("project") or config.wandb.project, entity=settings.get("entity"),
            group=settings.get("group"), name=config.wandb.name or run_name(config, values),
            notes=config.wandb.notes, tags=list(experiments), dir=directory,
            mode=mode, id=run_id, resume="allow",
            config={"experiments": list(experiments), **flat_config(config)},
        )
        if mode == "offline":
            for row in history:
                self.log(row)

    def log(self, row: dict) -> None:
        self.run.log(row, step=row["step"])

    def finish(self) -> None:
        self.run.finish()
