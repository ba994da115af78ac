"""Trained checkpoints evaluated as the paper does: fresh prompts at the final curriculum's size, squared
error per in-context example count k (and per loop iteration for looped models), beside the baselines.

The result is one long frame: per trial and curve (`kind` model or baseline, `name`), per point of an
`axis` (`k`: examples before the position; `loop`: iterations run, at the last position), the mean error
over prompts and its bootstrap 5-95% band.
"""
from __future__ import annotations

import contextlib
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.baselines import baselines_for
from analysis.experiment import AnalysisWarning, TrialFolder, identities, read_trials, space_record
from analysis.frames import aggregate_seeds
from analysis.stats import bootstrap_mean
from trainers.atomic import replacing
from trainers.cpus import available_cpus
from trainers.layout import EVALUATION_FILE
from trainers.models import LoopedTransformerModel, build_model
from trainers.records import LOOPS_FACTOR, Evaluation, SpaceRecord
from trainers.tasks import error_normaliser, sample_batch

DEFAULT = Evaluation()
BATCH_SIZE = 256
CURVE_COLUMNS = ["kind", "name", "axis", "x", "mean", "lo", "hi"]


@dataclass(frozen=True)
class PromptSetting:
    """What the prompts depend on: trials that share it are scored on the very same prompts."""
    task_name: str
    n_dims: int
    n_dims_truncated: int
    n_points: int
    sparsity: int

    @classmethod
    def final(cls, config: dict) -> PromptSetting:
        training, curriculum = config["training"], config["training"]["curriculum"]
        return cls(training["task_name"], config["model"]["n_dims"], curriculum["dims"]["end"],
                   curriculum["points"]["end"], training["sparsity"])

    def sample(self, n_prompts: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return sample_batch(self.task_name, batch_size=n_prompts, n_points=self.n_points, n_dims=self.n_dims,
                            n_dims_truncated=self.n_dims_truncated, generator=generator, sparsity=self.sparsity)

    @property
    def normaliser(self) -> float:
        return error_normaliser(self.task_name, self.n_dims_truncated, self.sparsity)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def evaluation_of(record: SpaceRecord | None, **given) -> Evaluation:
    """How an experiment's trials are scored: its space's `evaluation:` as its `record` keeps it (the defaults
    without one), with the settings `given` (n_prompts, max_loops, seed; None: not given) in its place."""
    recorded = record.evaluation if record is not None else DEFAULT
    return recorded.model_copy(update={key: value for key, value in given.items() if value is not None})


def evaluate_experiment(experiment_dir, *, n_prompts: int | None = None, max_loops: int | None = None,
                        seed: int | None = None, device=None, out=None, batch_size: int = BATCH_SIZE) -> pd.DataFrame:
    """Evaluate every trial's latest checkpoint as `evaluation_of` says; writes `evaluation.parquet` into `out`
    (default: the experiment directory) and returns the frame."""
    how = evaluation_of(space_record(experiment_dir), n_prompts=n_prompts, max_loops=max_loops, seed=seed)
    frame = evaluate_trials(read_trials(experiment_dir), n_prompts=how.n_prompts, max_loops=how.max_loops,
                            seed=how.seed, device=device, batch_size=batch_size)
    with replacing(Path(out if out is not None else experiment_dir) / EVALUATION_FILE) as temporary:
        frame.to_parquet(temporary, index=False)
    return frame


def evaluate_trials(trials: list[TrialFolder], *, n_prompts: int = DEFAULT.n_prompts,
                    max_loops: int | None = DEFAULT.max_loops, seed: int = DEFAULT.seed, device=None,
                    batch_size: int = BATCH_SIZE, progress=None) -> pd.DataFrame:
    """`progress`: called once as each model's evaluation completes (a progress bar's tick)."""
    device = torch.device(device) if device is not None else _default_device()
    prompts: dict[PromptSetting, tuple] = {}
    parts = []
    workers = evaluation_threads(device)
    with one_torch_thread(device.type == "cpu"), ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque()
        for trial, ident in zip(trials, identities(trials)):
            prepared = _prepare(trial, device)
            if prepared is None:
                continue
            setting, model, train_loops = prepared
            if setting not in prompts:
                xs, ys = setting.sample(n_prompts, seed)
                prompts[setting] = (xs, ys, _baseline_curves(setting, xs, ys, device))
            xs, ys, baselines = prompts[setting]
            run_loops = max(train_loops, max_loops or LOOPS_FACTOR * train_loops)
            meta = {"task_name": setting.task_name, "n_dims_truncated": setting.n_dims_truncated,
                    "n_points": setting.n_points, "train_loops": train_loops, "max_loops": run_loops,
                    "n_prompts": n_prompts}
            curves = pool.submit(_model_curves, model, setting, xs, ys, train_loops, run_loops, device, batch_size)
            if progress is not None:
                curves.add_done_callback(lambda _: progress())
            pending.append((curves, baselines, ident, meta))
            # a bounded queue: only a few trials' models are in memory at once
            while len(pending) > 2 * workers:
                parts.append(_curves_part(*pending.popleft()))
        parts += [_curves_part(*item) for item in pending]
    if not parts:
        return pd.DataFrame(columns=["trial_id", "hypotheses", *CURVE_COLUMNS])
    return pd.concat(parts, ignore_index=True, sort=False)


def _curves_part(curves: Future, baselines: list[dict], ident: dict, meta: dict) -> pd.DataFrame:
    return pd.DataFrame([{**ident, **curve, **meta} for curve in curves.result() + baselines])


def evaluation_threads(device: torch.device) -> int:
    """Models evaluated side by side: one per core on the CPU, each running torch on one thread (the ops of
    these small models are too short to share between threads: two intra-op threads were 2-6x slower than
    one on a busy 2-core machine, while torch releases the GIL inside every op); on a GPU one feeds it."""
    return available_cpus() if device.type == "cpu" else 1


@contextlib.contextmanager
def one_torch_thread(enabled: bool):
    threads = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _prepare(trial: TrialFolder, device) -> tuple[PromptSetting, torch.nn.Module, int] | None:
    """The trial's prompt setting, model and training loop count b; None (with a warning) if it has none."""
    if trial.checkpoint is None or "model" not in trial.checkpoint:
        warnings.warn(f"trial {trial.trial_id}: no checkpoint yet; not evaluated", AnalysisWarning, stacklevel=3)
        return None
    try:
        return (PromptSetting.final(trial.config), _load_model(trial, device),
                trial.config["training"]["curriculum"]["loops"]["end"])
    except (KeyError, ValueError, RuntimeError) as err:
        # one trial of a sweep with a broken checkpoint must not cost the evaluation of all the others
        warnings.warn(f"trial {trial.trial_id}: checkpoint does not build a model ({type(err).__name__}: "
                      f"{str(err).splitlines()[0][:200]}); not evaluated", AnalysisWarning, stacklevel=3)
        return None


def _curve_rows(kind: str, name: str, axis: str, positions, errors: np.ndarray) -> list[dict]:
    """errors [n_prompts, len(positions)] -> one row per position with the mean and its band."""
    mean, lo, hi = bootstrap_mean(errors)
    return [{"kind": kind, "name": name, "axis": axis, "x": int(x), "mean": float(m), "lo": float(l),
             "hi": float(h)} for x, m, l, h in zip(positions, mean, lo, hi)]


def _baseline_curves(setting: PromptSetting, xs, ys, device) -> list[dict]:
    rows = []
    for name, baseline in baselines_for(setting.task_name).items():
        preds = baseline(xs.to(device), ys.to(device)).cpu()
        errors = ((preds - ys) ** 2 / setting.normaliser).numpy()
        rows += _curve_rows("baseline", name, "k", range(setting.n_points), errors)
    return rows


def _load_model(trial: TrialFolder, device) -> torch.nn.Module:
    model = build_model(trial.config["model"])
    model.load_state_dict(trial.checkpoint["model"])
    return model.to(device).eval()


@torch.inference_mode()
def _model_curves(model, setting: PromptSetting, xs, ys, train_loops: int, run_loops: int, device,
                 batch_size: int) -> list[dict]:
    """The plain transformer: error vs k. A looped one: error vs k after b = train_loops iterations and
    after run_loops, and error vs iteration (1 .. run_loops) at the last position."""
    looped = isinstance(model, LoopedTransformerModel)
    at_b, at_max, at_last = [], [], []
    for start in range(0, len(xs), batch_size):
        xb, yb = xs[start:start + batch_size].to(device), ys[start:start + batch_size].to(device)
        if not looped:
            at_b.append(((model(xb, yb) - yb) ** 2).cpu())
            continue
        preds = model(xb, yb, 0, run_loops)  # run_loops x [b, n]
        at_b.append(((preds[train_loops - 1] - yb) ** 2).cpu())
        at_max.append(((preds[-1] - yb) ** 2).cpu())
        at_last.append(((torch.stack([p[:, -1] for p in preds], dim=1) - yb[:, -1:]) ** 2).cpu())
    positions, scale = range(setting.n_points), 1 / setting.normaliser
    if not looped:
        return _curve_rows("model", "model", "k", positions, torch.cat(at_b).numpy() * scale)
    return (_curve_rows("model", "model@b", "k", positions, torch.cat(at_b).numpy() * scale)
            + _curve_rows("model", "model@max_loops", "k", positions, torch.cat(at_max).numpy() * scale)
            + _curve_rows("model", "model", "loop", range(1, run_loops + 1), torch.cat(at_last).numpy() * scale))


def aggregate_evaluation(evaluation: pd.DataFrame) -> pd.DataFrame:
    """Model curves averaged over seeds (a lone seed keeps its band over prompts); baselines once per
    curve, since trials on the same prompts share them."""
    by = ["kind", "name", "axis", "x"]
    models = aggregate_seeds(evaluation[evaluation["kind"] == "model"], "mean", by=by, band=("lo", "hi"))
    baselines = evaluation[evaluation["kind"] == "baseline"].drop_duplicates(by)
    return pd.concat([models, baselines[["hypotheses", *CURVE_COLUMNS]].assign(n_seeds=1)],
                     ignore_index=True, sort=False)
