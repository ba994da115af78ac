"""Synthetic experiment directories in Ray Tune's on-disk layout with the runner's trial records, written by hand for
the analysis tests."""
import json
from pathlib import Path

import torch

from trainers.layout import CHECKPOINT_FILE, ERROR_FILES, RESULT_FILE, TRIAL_RECORD, checkpoint_folder
from trainers.models import build_model


def config_dict(*, family="gpt2_loop", n_layer=1, n_last_tokens=-1, use_lstm_layer=False, seed=0,
                n_embd=16, n_head=2, n_dims=4, n_dims_truncated=3, n_points=7, n_loops=3, train_steps=100,
                log_every=10, task_name="linear_regression"):
    """A complete nested config as a checkpoint stores it (the keys the analysis reads)."""
    schedule = dict(inc=1, interval=1000)
    return {
        "model": dict(family=family, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_dims=n_dims,
                      n_positions=n_points, n_last_tokens=n_last_tokens, use_lstm_layer=use_lstm_layer,
                      pred_type="regression", loop_func="z=f(x+z)"),
        "training": dict(task_name=task_name, train_steps=train_steps, seed=seed, sparsity=2, curriculum=dict(
            dims=dict(start=n_dims_truncated, end=n_dims_truncated, **schedule),
            points=dict(start=n_points, end=n_points, **schedule),
            loops=dict(start=n_loops, end=n_loops, **schedule))),
        "wandb": dict(log_every_steps=log_every),
    }


def metric_row(step, loss, *, eval_loss=None):
    row = {"step": step, "overall_loss": loss, "n_loops": 3, "n_points": 7, "n_dims": 3, "lr": 1e-3,
           "grad_norm": 0.5, "elapsed_s": step / 10, "steps_per_s": 10.0, "prompts_per_s": 640.0}
    if eval_loss is not None:
        row.update({"eval/loss": eval_loss, "eval/loss_last": eval_loss / 2})
    return row


def ray_row(row, trial_id, iteration, *, done=False, node_id="node-a"):
    """A result.json line: our metrics plus Ray's bookkeeping."""
    return {**row, "trial_id": trial_id, "training_iteration": iteration, "time_total_s": row["step"] / 5,
            "timestamp": 1700000000 + iteration, "hostname": "host", "node_ip": "10.0.0.1", "pid": 1,
            "done": done, "config": {"variant": {}}, "node_id": node_id}


def write_trial(experiment_dir, name, *, hypotheses, values=None, trial_id=None, rows=(), checkpoint=None,
                error=False, truncated_tail=None):
    """One trial folder with the runner's `trial.json` (the trial id defaults to the rows', as Ray writes them,
    else the folder's name); `rows` are result.json rows as dicts, `checkpoint` a dict saved as the latest
    checkpoint, `truncated_tail` text appended after the last line as a half-written row."""
    folder = Path(experiment_dir) / name
    folder.mkdir(parents=True)
    trial_id = trial_id or (rows[0]["trial_id"] if rows else name)
    record = {"trial_id": trial_id, "hypotheses": list(hypotheses), "values": values or {}}
    (folder / TRIAL_RECORD).write_text(json.dumps(record))
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    (folder / RESULT_FILE).write_text(lines + (truncated_tail or ""))
    if checkpoint is not None:
        checkpoint_folder(folder, 1).mkdir()
        torch.save(checkpoint, checkpoint_folder(folder, 1) / CHECKPOINT_FILE)
    if error:
        (folder / ERROR_FILES[0]).write_text("Traceback: boom\n")
    return folder


def checkpoint_state(config, *, step, metrics=(), model_seed=0):
    torch.manual_seed(model_seed)
    model = build_model(config["model"])
    return {"model": model.state_dict(), "config": config, "step": step, "metrics": list(metrics)}


def write_finished_trial(experiment_dir, name, *, hypotheses, variant, config, eval_losses, trial_id,
                         log_every=10, with_model=True):
    """A trial that ran to its end: one row every `log_every` steps, eval/loss at every row from
    `eval_losses` (one value per row), a checkpoint holding the model and the whole history."""
    steps = range(0, len(eval_losses) * log_every, log_every)
    rows = [metric_row(step, 2 * loss, eval_loss=loss) for step, loss in zip(steps, eval_losses)]
    ray_rows = [ray_row(row, trial_id, i + 1, done=i == len(rows) - 1) for i, row in enumerate(rows)]
    state = checkpoint_state(config, step=steps[-1] + 1, metrics=rows) if with_model else None
    values = {**variant, "training.seed": config["training"]["seed"]}
    return write_trial(experiment_dir, name, hypotheses=hypotheses, values=values, trial_id=trial_id, rows=ray_rows,
                       checkpoint=state)


# trial id -> (hypotheses, variant, config overrides); t1/t2 belong to both hypotheses, t3/t4 leave
# model.n_layer and t5 leaves model.n_last_tokens to the base config
TRIALS = {
    "t1": (["information_flow", "looped_n_layers"], {"model.n_last_tokens": -1, "model.n_layer": 1},
           dict(n_last_tokens=-1, n_layer=1, seed=0)),
    "t2": (["information_flow", "looped_n_layers"], {"model.n_last_tokens": -1, "model.n_layer": 1},
           dict(n_last_tokens=-1, n_layer=1, seed=1)),
    "t3": (["information_flow"], {"model.n_last_tokens": 2}, dict(n_last_tokens=2, seed=0)),
    "t4": (["information_flow"], {"model.n_last_tokens": 2}, dict(n_last_tokens=2, seed=1)),
    "t5": (["looped_n_layers"], {"model.n_layer": 2}, dict(n_layer=2, seed=0)),
}
N_ROWS = 10


def eval_losses(trial_id):
    """A decaying curve, different for every trial, so every aggregate can be recomputed by hand."""
    scale = {"t1": 1.0, "t2": 1.2, "t3": 2.0, "t4": 2.6, "t5": 0.5}[trial_id]
    return [scale * 0.8 ** i for i in range(N_ROWS)]


def write_experiment(root, *, with_model=True):
    root = Path(root)
    for trial_id, (hypotheses, variant, overrides) in TRIALS.items():
        write_finished_trial(root, f"train_{trial_id}_00000_0", hypotheses=hypotheses, variant=variant,
                             config=config_dict(train_steps=N_ROWS * 10 - 9, **overrides),
                             eval_losses=eval_losses(trial_id), trial_id=trial_id, with_model=with_model)
    return root
