"""One W&B run per trial, named in the research's style (`LR_loop_L2_ends{30}_T{15}`).

The API key is never passed here: W&B finds it itself in `WANDB_API_KEY` or `wandb login`'s netrc, and
without one the run is written offline under the trial's directory.
"""
from __future__ import annotations

import netrc
import os

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
    def __init__(self, config: Config, values: dict, experiments, settings: dict, directory: str):
        import wandb

        self.run = wandb.init(
            project=settings.get("project") or config.wandb.project, entity=settings.get("entity"),
            group=settings.get("group"), name=config.wandb.name or run_name(config, values),
            notes=config.wandb.notes, tags=list(experiments), dir=directory,
            mode=resolve_mode(settings.get("mode", "auto")),
            config={"experiments": list(experiments), **config_to_dict(config)},
        )

    def log(self, row: dict) -> None:
        self.run.log(row, step=row["step"])

    def finish(self) -> None:
        self.run.finish()
