"""The Ray Tune trainable: a thin adapter that runs `trainers.training.train` for one trial.

It merges the trial's values into the base config, reports every logged row with `ray.tune.report`
(with a `ray.tune.Checkpoint` when one was written), resumes from `ray.tune.get_checkpoint()` or, when that one
is damaged, the newest of the trial's other checkpoints that loads, and runs on the GPU Ray gave the trial, with
as many torch threads as the trial has CPUs.
"""
from __future__ import annotations

import json
import logging
import posixpath
import re
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.fs
import ray
import torch
from ray import tune

from trainers.checkpoint import CHECKPOINT_FILE, load_checkpoint, reason
from trainers.config import apply_overrides, config_from_dict
from trainers.layout import CHECKPOINT_NAME
from trainers.training import train
from trainers.records import wandb_run_name
from tune_looped.trials import trial_values


def _trial_device_and_threads() -> tuple[str, int]:
    resources = tune.get_context().get_trial_resources().required_resources
    use_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    return ("cuda" if use_gpu else "cpu"), max(1, int(resources.get("CPU", 1)))


def _trial_checkpoints(restored: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The checkpoint Tune restores, then the trial's other `checkpoint_NNNNNN` folders beside it (Ray keeps
    `num_to_keep` of them), newest first. Listed on the checkpoint's own filesystem: the storage may be a URI."""
    own = restored.path.rstrip("/")
    entries = restored.filesystem.get_file_info(pyarrow.fs.FileSelector(posixpath.dirname(own), allow_not_found=True))
    others = sorted((e.path for e in entries if e.type == pyarrow.fs.FileType.Directory
                     and re.fullmatch(CHECKPOINT_NAME, posixpath.basename(e.path)) and e.path != own), reverse=True)
    return [restored, *(tune.Checkpoint(path, filesystem=restored.filesystem) for path in others)]


def _resume_point(restored: tune.Checkpoint, work: Path) -> Path | None:
    """A local copy of the newest of the trial's checkpoints that loads; None, starting again from step 0, when
    none does. Each one passed over is a line of the trial's log."""
    for number, checkpoint in enumerate(_trial_checkpoints(restored)):
        local = work / f"restored_{number}"
        try:
            load_checkpoint(checkpoint.to_directory(str(local)))
            return local
        except (OSError, ValueError) as err:
            # the copy's path says nothing to the reader of the log; the checkpoint's own path comes first
            why = str(err).removeprefix(f"{local / CHECKPOINT_FILE}: ") if isinstance(err, ValueError) \
                else reason(err)
            print(f"checkpoint {checkpoint.path} does not load ({why}); trying the one before it", flush=True)
    print("no checkpoint of this trial loads; starting again from step 0", flush=True)
    return None


def _wandb_dir(results_dir: str | None) -> Path:
    """Where the trial's W&B files go: its folder in a local storage, which every node of a cluster shares, so
    the runner's sync line names each trial's offline run; on a URI storage, the trial's working directory, which
    Tune uploads there (`sync_artifacts`). Not `get_trial_dir()`: a staging folder on the node that ran the trial,
    which Tune does not upload from a worker node."""
    if results_dir:
        return Path(results_dir) / Path(tune.get_context().get_trial_dir()).name
    return Path.cwd()


def run_trial(params: dict, *, base: dict, wandb_settings: dict | None = None,
              results_dir: str | None = None, verbose: bool = False) -> None:
    """Entry point Ray calls once per trial attempt (a retry calls it again, with the last checkpoint).
    `results_dir`: the Tune run's folder when the storage is a local path; `verbose`: Ray's INFO lines of the
    worker (one per checkpoint) are echoed by the driver too."""
    # the checkpoint line the driver would echo for every report that saves: the runner's table shows progress
    logging.getLogger("ray.train").setLevel(logging.NOTSET if verbose else logging.WARNING)
    hypotheses, values = trial_values(params)
    config = config_from_dict(apply_overrides(base, values, "trial"), "trial")
    # the first line of the trial's log, which the driver echoes, says which configuration this process runs
    print(f"trial {tune.get_context().get_trial_id()} {wandb_run_name(config, values)} "
          f"hypotheses={','.join(hypotheses)} values={json.dumps(values, sort_keys=True)}", flush=True)
    device, threads = _trial_device_and_threads()
    node_id = ray.get_runtime_context().get_node_id()
    work = Path(tempfile.mkdtemp(prefix="tune_looped_"))
    logger = None
    try:
        restored = tune.get_checkpoint()
        resume_from = _resume_point(restored, work) if restored is not None else None
        if wandb_settings:
            from trainers.wandb_log import WandbRun

            history = load_checkpoint(resume_from)["metrics"] if resume_from else []
            logger = WandbRun(config, values, hypotheses, wandb_settings, str(_wandb_dir(results_dir)),
                              run_id=tune.get_context().get_trial_id(), history=history)

        def report(row: dict, checkpoint_dir: Path | None) -> None:
            # the steps trained so far, as the checkpoint counts them: Tune's TensorBoard logger plots against it
            # when present (else against the report count), and takes a 0 for absent, so never `step` itself
            metrics = {**row, "node_id": node_id, "wall_time": time.time(), "timesteps_total": row["step"] + 1}
            if logger is not None:
                logger.log(row)
            checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
            tune.report(metrics, checkpoint=checkpoint)

        train(config, out_dir=work / "run", reporter=report, resume_from=resume_from, device=device,
              num_threads=threads)
    finally:
        if logger is not None:
            logger.finish()
        shutil.rmtree(work, ignore_errors=True)
