"""The training loop: one run of one configuration, importable and free of globals.

`train(config, out_dir=...)` is what both the single-run CLI (`python -m trainers.train`) and the Ray
trainable call. It never imports Ray, so a single run starts fast.
"""
from __future__ import annotations

import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from trainers.checkpoint import checkpoint_dir_of, load_checkpoint, load_research_checkpoint, save_checkpoint
from trainers.config import Config, config_to_dict
from trainers.curriculum import CurriculumState, curriculum_at, final_state, loop_window_start
from trainers.models import LoopedTransformerModel, build_model
from trainers.onednn import ONEDNN, ONEDNN_KEY, PRODUCTS_KEY, library_name, preferred_library, read_cpu
from trainers.tasks import error_normaliser, sample_batch

EVAL_SEED = 20240101
EVAL_BATCH = 64
Reporter = Callable[[dict, "Path | None"], None]


def resolve_device(config: Config, device: str | None = None) -> torch.device:
    """`training.device` unless the caller decides; `auto` means CUDA when present and allowed by `gpu`."""
    wanted = device or config.training.device
    if wanted == "auto":
        allowed = config.gpu.cuda and config.gpu.n_gpu != 0
        wanted = "cuda" if allowed and torch.cuda.is_available() else "cpu"
    return torch.device(wanted)


def predict(model, xs, ys, n_loops: int, n_loop_start: int) -> list[torch.Tensor]:
    """Predictions [B, n] of every iteration that carries gradient (one for the plain transformer)."""
    if isinstance(model, LoopedTransformerModel):
        return model(xs, ys, n_loop_start, n_loops)
    return [model(xs, ys)]


def autocast(device: torch.device, precision: str, cache_enabled: bool = True):
    # a CUDA graph capture needs the weight-cast cache off: cached casts would outlive the capture
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16",
                          cache_enabled=cache_enabled)


def make_eval_set(config: Config) -> tuple[torch.Tensor, torch.Tensor, CurriculumState]:
    """A fixed held-out set at the curriculum's final size, the same for every trial so they compare."""
    final = final_state(config.training.curriculum)
    generator = torch.Generator().manual_seed(EVAL_SEED)
    xs, ys = sample_batch(
        config.training.task_name, batch_size=config.training.eval_prompts, n_points=final.n_points,
        n_dims=config.model.n_dims, n_dims_truncated=final.n_dims, generator=generator,
        sparsity=config.training.sparsity,
    )
    return xs, ys, final


@torch.no_grad()
def evaluate(model, config: Config, eval_set, device: torch.device) -> dict:
    """`eval/loss`: squared error / normaliser over all positions; `eval/loss_last`: at the last position."""
    xs, ys, final = eval_set
    model.eval()
    errors = []
    for start in range(0, len(xs), EVAL_BATCH):
        xb, yb = xs[start:start + EVAL_BATCH].to(device), ys[start:start + EVAL_BATCH].to(device)
        with autocast(device, config.training.precision):
            pred = predict(model, xb, yb, final.n_loops, final.n_loops - 1)[-1]
        errors.append((pred.float() - yb) ** 2)
    model.train()
    error = torch.cat(errors) / error_normaliser(config.training.task_name, final.n_dims, config.training.sparsity)
    return {"eval/loss": error.mean().item(), "eval/loss_last": error[:, -1].mean().item()}


def _train_step(model, optimizer, xs, ys, state: CurriculumState, config: Config, device,
               cache_enabled: bool = True) -> tuple:
    """One Adam step on the loss averaged over the last `n_loop_window` iterations; returns device tensors."""
    n_loop_start = loop_window_start(state.n_loops, config.training.n_loop_window)
    with autocast(device, config.training.precision, cache_enabled):
        preds = predict(model, xs, ys, state.n_loops, n_loop_start)
        loss = torch.stack([((p.float() - ys) ** 2).mean() for p in preds]).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
    optimizer.step()
    return loss.detach(), grad_norm


def prepare_model(model, config: Config, onednn: bool | None = None):
    """The performance options that change how the model computes, not what. `onednn`: the products' library
    (default: as `choose_onednn` decides it for the model's device)."""
    if onednn is None:
        onednn = choose_onednn(config, next(model.parameters()).device)[0]
    model.use_onednn(onednn)
    if config.training.compile:
        model.compile_backbone()
    return model


def choose_onednn(config: Config, device: torch.device) -> tuple[bool, str]:
    """`training.onednn_linear` as set, or for `auto` on the CPU the library this CPU type prefers
    (`preferred_library`), and the line that says which and why."""
    setting = config.training.onednn_linear
    if setting != "auto":
        return setting, ""
    if device.type != "cpu" or not ONEDNN:
        return False, ""  # the products never reach oneDNN there
    onednn, why = preferred_library(read_cpu())
    return onednn, f"training.onednn_linear auto: {why}"


CUDA_GRAPH_WARMUP_STEPS = 3


def uses_cuda_graphs(config: Config, device: torch.device) -> bool:
    return config.training.cuda_graphs and device.type == "cuda"


class StepRunner:
    """`_train_step` as the config asks: eager, or replayed from a CUDA graph (`training.cuda_graphs`, CUDA only).

    A graph fixes every shape and loop count, so there is one per curriculum state, which changes only every
    `interval` steps. The first CUDA_GRAPH_WARMUP_STEPS steps of a state run eagerly on a side stream, as
    capture requires (cuBLAS handles and autograd's lazily built state must exist first); they are ordinary
    training steps. The next step is captured, and it and every later step of the state replay the graph.

    Each graph has a memory pool of its own. One pool shared by successive graphs broke at the second capture
    whenever a tensor allocated during the first outlived its graph: the allocator's "use_count > 0" assertion,
    on an H200 at the research model's second curriculum state, in a fresh process. A dropped graph's pool is
    freed once its tensors are, and each capture empties the allocator's cache first.
    """

    def __init__(self, model, optimizer, config: Config, device: torch.device):
        self.model, self.optimizer, self.config, self.device = model, optimizer, config, device
        self.graphed = uses_cuda_graphs(config, device)
        if config.training.cuda_graphs and not self.graphed:
            warnings.warn(f"training.cuda_graphs: the run is on {device.type}, not CUDA; its steps run eagerly",
                          stacklevel=2)
        self.state: CurriculumState | None = None
        self.graph, self.static, self.eager_left = None, (), 0

    def __call__(self, xs, ys, state: CurriculumState) -> tuple:
        if not self.graphed:
            return _train_step(self.model, self.optimizer, xs, ys, state, self.config, self.device)
        if state != self.state:
            self.state, self.graph, self.static, self.eager_left = state, None, (), CUDA_GRAPH_WARMUP_STEPS
        if self.eager_left:
            self.eager_left -= 1
            return self._side_stream_step(xs, ys, state)
        if self.graph is None:
            self._capture(xs, ys, state)
        return self._replay(xs, ys)

    def _side_stream_step(self, xs, ys, state: CurriculumState) -> tuple:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = _train_step(self.model, self.optimizer, xs, ys, state, self.config, self.device)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, xs, ys, state: CurriculumState) -> None:
        static_xs, static_ys = xs.clone(), ys.clone()
        graph = torch.cuda.CUDAGraph()
        # with no .grad, backward allocates the gradients inside the graph's pool, at fixed addresses
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            loss, grad_norm = _train_step(self.model, self.optimizer, static_xs, static_ys, state, self.config,
                                         self.device, cache_enabled=False)
        self.graph, self.static = graph, (static_xs, static_ys, loss, grad_norm)

    def _replay(self, xs, ys) -> tuple:
        static_xs, static_ys, loss, grad_norm = self.static
        static_xs.copy_(xs, non_blocking=True)
        static_ys.copy_(ys, non_blocking=True)
        self.graph.replay()
        # the next replay overwrites the outputs in place
        return loss.clone(), grad_norm.clone()


def make_optimizer(model, config: Config, device: torch.device) -> torch.optim.Adam:
    # a captured optimizer step must keep its step count on the device (capturable)
    return torch.optim.Adam(model.parameters(), lr=config.training.learning_rate,
                            weight_decay=config.training.weight_decay, capturable=uses_cuda_graphs(config, device))


def is_due(step: int, every: int) -> bool:
    return every > 0 and step > 0 and step % every == 0


def train(config: Config, *, out_dir: Path, reporter: Reporter | None = None, resume_from: Path | None = None,
          device: str | None = None, num_threads: int | None = None) -> dict:
    """Train one run; checkpoints go to `out_dir/checkpoints/step_NNNNNN/`. Returns the last metrics row.

    `reporter(row, checkpoint_dir)` is called on every logged step (every `wandb.log_every_steps`, every
    evaluation and every checkpoint), with the directory of the checkpoint written at that step or None.
    """
    dev = resolve_device(config, device)
    if num_threads and dev.type == "cpu":
        torch.set_num_threads(num_threads)
    torch.manual_seed(config.training.seed)
    model = build_model(config.model).to(dev)
    if config.model.pretrained_path:
        load_research_checkpoint(model, config.model.pretrained_path)
    state = load_checkpoint(resume_from) if resume_from is not None else None
    if state is not None and isinstance(state.get(ONEDNN_KEY), bool):
        onednn = state[ONEDNN_KEY]  # what the run chose at its start, so that it resumes bit for bit
    else:
        onednn, line = choose_onednn(config, dev)
        if line:
            print(line, flush=True)
    prepare_model(model, config, onednn)
    optimizer = make_optimizer(model, config, dev)
    generator = torch.Generator().manual_seed(config.training.seed)
    history: list[dict] = []
    first_step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["rng"]["data"])
        torch.set_rng_state(state["rng"]["torch"])
        history, first_step = list(state["metrics"]), state["step"]
    loop = TrainingLoop(config, model, optimizer, generator, dev, out_dir, reporter, history, onednn)
    if resume_from is not None and Path(resume_from).resolve().is_relative_to(loop.checkpoints.resolve()):
        loop.previous_checkpoint = checkpoint_dir_of(resume_from)
    return loop.run(first_step)


class TrainingLoop:
    """The state one run carries between steps; `run` is the loop itself."""

    def __init__(self, config, model, optimizer, generator, device, out_dir, reporter, history, onednn: bool):
        self.config, self.model, self.optimizer, self.generator = config, model, optimizer, generator
        self.onednn = onednn
        self.device, self.out_dir, self.reporter, self.history = device, Path(out_dir), reporter, history
        self.eval_set = make_eval_set(config)
        self.step_fn = StepRunner(model, optimizer, config, device)
        self.checkpoints = self.out_dir / "checkpoints"
        self.previous_checkpoint: Path | None = None

    def run(self, first_step: int) -> dict:
        t, log_every = self.config.training, self.config.wandb.log_every_steps
        last_step = t.train_steps - 1
        started, steps_done = time.perf_counter(), 0
        row = self.history[-1] if self.history else {}
        elapsed_before = row.get("elapsed_s", 0.0)
        for step in range(first_step, t.train_steps):
            state = curriculum_at(t.curriculum, step)
            xs, ys = sample_batch(t.task_name, batch_size=t.batch_size, n_points=state.n_points,
                                  n_dims=self.config.model.n_dims, n_dims_truncated=state.n_dims,
                                  generator=self.generator, sparsity=t.sparsity)
            loss, grad_norm = self.step_fn(xs.to(self.device), ys.to(self.device), state)
            steps_done += 1
            diverged = (self.device.type == "cpu" or step % log_every == 0) and not math.isfinite(loss.item())
            evaluate_now = step == 0 or step == last_step or is_due(step, t.eval_every_steps)
            save_now = step == last_step or is_due(step, t.save_every_steps) or diverged
            if not (step % log_every == 0 or evaluate_now or save_now):
                continue
            wall = time.perf_counter() - started
            row = {
                "step": step, "overall_loss": loss.item(), "n_loops": state.n_loops, "n_points": state.n_points,
                "n_dims": state.n_dims, "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm.item(),
                "elapsed_s": elapsed_before + wall, "steps_per_s": steps_done / wall,
                "prompts_per_s": steps_done * t.batch_size / wall,
            }
            if diverged:
                row["diverged"] = True
            elif evaluate_now:
                row.update(evaluate(self.model, self.config, self.eval_set, self.device))
            self.history.append(row)
            checkpoint_dir = self.save(step) if save_now and not diverged else None
            if self.reporter is not None:
                self.reporter(row, checkpoint_dir)
            if diverged:
                break
        return row

    def save(self, step: int) -> Path:
        """Write a checkpoint; the previous one goes unless `keep_every_steps` marks it permanent."""
        path = self.checkpoints / f"step_{step:06d}"
        save_checkpoint(path, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": step + 1,
            "rng": {"data": self.generator.get_state(), "torch": torch.get_rng_state()},
            "metrics": self.history, "config": config_to_dict(self.config), ONEDNN_KEY: self.onednn,
            PRODUCTS_KEY: library_name(self.onednn, self.device),
        })
        previous, self.previous_checkpoint = self.previous_checkpoint, path
        keep_every = self.config.training.keep_every_steps
        if previous is not None and not (keep_every > 0 and int(previous.name[5:]) % keep_every == 0):
            shutil.rmtree(previous, ignore_errors=True)
        return path
