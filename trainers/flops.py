"""The matrix-product FLOPs of one training step and of a whole run, counted from the config (no profiler).

Per token, per layer, one forward pass of a GPT-2 block costs 24 C^2 in its linear layers (q, k, v: 6 C^2;
attention output: 2 C^2; MLP: 8 C^2 + 8 C^2) and 4 T C in attention (scores q k^T and the weighted sum of
v, each 2 T C; counted over all T x T pairs as is usual, although the causal half is all that is needed).
An LSTM layer costs 16 C^2 (4 gates, input and hidden products). The looped model runs the backbone
n_loops times: the iterations before the loss window forward only, the window's T iterations forward and
backward (the backward costs two forwards: gradients of inputs and of weights). Read-in (d -> C) and
read-out (C -> 1) are counted too, although they are small. Element-wise work (LayerNorm, GELU, Adam) is
not counted: it is what separates achieved FLOP/s from the matrix product's. A run's total adds up its
steps, each at its own curriculum state.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainers.config import Config
from trainers.curriculum import CurriculumState, curriculum_at, loop_window_start


@dataclass(frozen=True)
class StepFlops:
    backbone: int          # one forward pass of the backbone over the batch
    io: int                # read-in and the read-outs of the loss window, forward
    forward_passes: int    # iterations without gradient
    window: int            # iterations with gradient
    formula: str

    @property
    def total(self) -> int:
        return (self.forward_passes + 3 * self.window) * self.backbone + 3 * self.io


def step_flops(config: Config, state: CurriculumState) -> StepFlops:
    m = config.model
    B, C, L = config.training.batch_size, m.n_embd, m.n_layer
    tokens = 2 * state.n_points
    if m.family == "gpt2_loop":
        start = loop_window_start(state.n_loops, config.training.n_loop_window)
        forward_passes, window = start, state.n_loops - start
    else:
        forward_passes, window = 0, 1
    if m.use_lstm_layer:
        per_token, per_token_text = 16 * C * C, f"16·{C}²"
    else:
        per_token, per_token_text = 24 * C * C + 4 * tokens * C, f"(24·{C}² + 4·{tokens}·{C})"
    backbone = L * B * tokens * per_token
    io = 2 * B * tokens * m.n_dims * C + window * 2 * B * state.n_points * C
    flops = StepFlops(backbone, io, forward_passes, window, "")
    formula = (f"({forward_passes} + 3·{window}) passes · {L} layer(s) · {B}·{tokens} tokens · {per_token_text}"
               f" + 3·{io / 1e6:.0f} MFLOP read-in/out = {flops.total / 1e9:.1f} GFLOP")
    return StepFlops(backbone, io, forward_passes, window, formula)


def training_flops(config: Config, steps: int | None = None) -> int:
    """The sum of `step_flops` over the first `steps` steps (all `train_steps` by default); the curriculum only
    changes at multiples of its intervals, so each stretch between two such steps is counted once."""
    curriculum = config.training.curriculum
    steps = config.training.train_steps if steps is None else max(0, min(steps, config.training.train_steps))
    changes = {0, steps}
    for schedule in (curriculum.dims, curriculum.points, curriculum.loops):
        changes.update(range(schedule.interval, steps, schedule.interval))
    bounds = sorted(changes)
    return sum((end - start) * step_flops(config, curriculum_at(curriculum, start)).total
               for start, end in zip(bounds, bounds[1:]))
