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
from trainers.dotted import flatten
from trainers.records import run_name


def flat_config(config: Config) -> dict:
    """`{"model.n_layer": 2, ...}`: W&B's grouping and parallel-coordinates views list only top-level keys."""
    return flatten(config_to_dict(config))


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
    def __init__(self, config: Config, values: dict, hypotheses, settings: dict, directory: str, run_id: str,
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
            notes=config.wandb.notes, tags=list(hypotheses), dir=directory,
            mode=mode, id=run_id, resume="allow",
            config={"hypotheses": list(hypotheses), **flat_config(config)},
        )
        if mode == "offline":
            for row in history:
                self.log(row)

    def log(self, row: dict) -> None:
        self.run.log(row, step=row["step"])

    def finish(self) -> None:
        self.run.finish()
