"""One W&B run per trial, named in the research's style (`LR_loop_L2_ends{30}_T{15}`).

The API key is never passed here: wandb finds it itself, for the server its settings name (`WANDB_BASE_URL`,
`base_url` in its settings file, else its default host), in `WANDB_API_KEY`, the settings file or `wandb login`'s
netrc; without one the run is written offline into the folder it is given. The run's id is the trial's, so a
retried or resumed trial continues its one run instead of starting another beside it. W&B cannot append to an
offline run, so there a retry replaces the trial's earlier offline run with one replaying the checkpoint's rows:
one folder per trial, every step once.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

from trainers.config import Config, WandbConfig, config_to_dict
from trainers.dotted import flatten
from trainers.layout import offline_runs
from trainers.records import wandb_run_name


def flat_config(config: Config) -> dict:
    """`{"model.n_layer": 2, ...}`: W&B's grouping and parallel-coordinates views list only top-level keys."""
    return flatten(config_to_dict(config))


SERVICE_VARIABLE = "WANDB_SERVICE"  # where wandb tells child processes which wandb service to join
WANDB_MODES = ("online", "offline")  # what a command line's --wandb-mode may ask for; `auto` is its absence
SETTING_KEYS = ("enabled", "mode", "project", "entity", "group")


def merged_settings(config: WandbConfig, space: dict, group: str) -> dict:
    """A sweep's W&B settings: the base config's `wandb:` section, then the space's `wandb:` block over it; the
    group is the space's name unless one of them sets it."""
    settings = {key: getattr(config, key) for key in SETTING_KEYS if getattr(config, key) is not None}
    settings.update(space)
    settings.setdefault("group", group)
    return settings


def key_available() -> bool:
    """Whether wandb has credentials for the server it is configured for: wandb decides, by the rules `wandb.init`
    follows, without a prompt or a request to the server (`wandb.login` asks the server for the user's name). A
    self-hosted server's key in the netrc counts only when wandb is pointed at that server."""
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    settings = wandb_setup.singleton().settings
    host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
    return wbauth.authenticate_session(host=host, source="tune-looped", prompt=False, update_session=False) is not None


def resolve_mode(mode: str) -> str:
    return ("online" if key_available() else "offline") if mode == "auto" else mode


def remove_offline_runs(directory, run_id: str) -> None:
    """An offline run cannot be appended to: the one that replaces it holds everything it held."""
    for earlier in offline_runs(directory, run_id):
        shutil.rmtree(earlier)


class WandbRun:
    def __init__(self, config: Config, values: dict, hypotheses, settings: dict, directory: str, run_id: str,
                 history: Sequence[dict] = ()):
        """`history`: the rows of the checkpoint the trial resumes from (none on a first attempt)."""
        import wandb

        # this process's own wandb service, not one it inherited (a runner that logged to W&B before starting
        # Ray leaves WANDB_SERVICE to its workers): a shared service would outlive a killed trial and keep its run
        # id in use, so that the retry could not take the run up again
        os.environ.pop(SERVICE_VARIABLE, None)
        mode = resolve_mode(settings.get("mode", "auto"))
        if mode == "offline":
            remove_offline_runs(directory, run_id)
        self.run = wandb.init(
            project=settings.get("project") or config.wandb.project, entity=settings.get("entity"),
            group=settings.get("group"), name=config.wandb.name or wandb_run_name(config, values),
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
