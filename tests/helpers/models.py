"""Tiny models and prompts for the model and checkpoint tests."""
import torch

from trainers.models import LoopedTransformerModel, build_model

TINY = dict(n_dims=5, n_positions=8, n_embd=16, n_layer=2, n_head=2)


def tiny(family="gpt2_loop", seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model({"family": family, **TINY, **overrides})


def prompts(batch=3, n_points=6, n_dims=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(batch, n_points, n_dims, generator=g)
    return xs, torch.randn(batch, n_points, generator=g)


def run(model, xs, ys, n_loop_start=0, n_loops=1):
    if isinstance(model, LoopedTransformerModel):
        return model(xs, ys, n_loop_start, n_loops)[-1]
    return model(xs, ys)
