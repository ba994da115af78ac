"""Synthetic in-context learning tasks (Garg et al. 2022; Yang et al. 2024).

Every task draws fresh parameters per prompt. All randomness comes from the caller's CPU
`torch.Generator`, so restoring its state resumes the exact same stream of batches.
Each task is a class of static methods so tests can inspect the true parameters:
`sample_params(batch_size, n_dims, n_dims_truncated, generator, sparsity)`,
`evaluate(xs, params, generator) -> ys` and `second_moment(n_dims_truncated, sparsity) -> E[y^2]`.
"""
import math

import torch


def _truncated_normal_weights(batch_size, n_dims, n_dims_truncated, generator):
    w = torch.randn(batch_size, n_dims, generator=generator)
    # the curriculum grows the effective dimension; unused coordinates must carry no signal
    w[:, n_dims_truncated:] = 0
    return w


class LinearRegression:
    @staticmethod
    def sample_params(batch_size, n_dims, n_dims_truncated, generator, sparsity):
        return _truncated_normal_weights(batch_size, n_dims, n_dims_truncated, generator)

    @staticmethod
    def evaluate(xs, w, generator):
        return torch.einsum("bnd,bd->bn", xs, w)

    @staticmethod
    def second_moment(n_dims_truncated, sparsity):
        return float(n_dims_truncated)  # a sum of n_dims_truncated products of independent N(0, 1)


class NoisyLinearRegression(LinearRegression):
    noise_std = 0.1

    @staticmethod
    def evaluate(xs, w, generator):
        ys = LinearRegression.evaluate(xs, w, generator)
        return ys + NoisyLinearRegression.noise_std * torch.randn(ys.shape, generator=generator)

    @staticmethod
    def second_moment(n_dims_truncated, sparsity):
        return n_dims_truncated + NoisyLinearRegression.noise_std**2


class SparseLinearRegression(LinearRegression):
    @staticmethod
    def sample_params(batch_size, n_dims, n_dims_truncated, generator, sparsity):
        w = _truncated_normal_weights(batch_size, n_dims, n_dims_truncated, generator)
        # ranking i.i.d. uniform scores gives a uniformly random support per prompt, batched
        scores = torch.rand(batch_size, n_dims_truncated, generator=generator)
        support = scores.argsort(dim=1)[:, : min(sparsity, n_dims_truncated)]
        keep = torch.zeros(batch_size, n_dims, dtype=torch.bool)
        keep.scatter_(1, support, True)
        return w * keep

    @staticmethod
    def second_moment(n_dims_truncated, sparsity):
        return float(min(sparsity, n_dims_truncated))


class Relu2nnRegression:
    hidden_size = 100

    @staticmethod
    def sample_params(batch_size, n_dims, n_dims_truncated, generator, sparsity):
        hidden = Relu2nnRegression.hidden_size
        w1 = torch.randn(batch_size, n_dims, hidden, generator=generator)
        w2 = torch.randn(batch_size, hidden, 1, generator=generator)
        return w1, w2

    @staticmethod
    def evaluate(xs, params, generator):
        w1, w2 = params
        # sqrt(2 / hidden) is He scaling: keeps E[y^2] = n_dims_truncated whatever the hidden width
        scale = math.sqrt(2 / Relu2nnRegression.hidden_size)
        return (torch.relu(xs @ w1) @ w2).squeeze(-1) * scale  # [B, n, 1] -> [B, n]

    @staticmethod
    def second_moment(n_dims_truncated, sparsity):
        return float(n_dims_truncated)


class DecisionTree:
    depth = 4

    @staticmethod
    def sample_params(batch_size, n_dims, n_dims_truncated, generator, sparsity):
        n_internal = 2**DecisionTree.depth - 1
        coords = torch.randint(0, n_dims_truncated, (batch_size, n_internal), generator=generator)
        leaves = torch.randn(batch_size, 2**DecisionTree.depth, generator=generator)
        return coords, leaves

    @staticmethod
    def evaluate(xs, params, generator):
        coords, leaves = params
        n_internal = coords.shape[1]
        # heap layout: node i has children 2i+1 (left) and 2i+2 (right); one gather per level
        node = torch.zeros(xs.shape[:2], dtype=torch.long)  # [B, n]
        for _ in range(DecisionTree.depth):
            coord = coords.gather(1, node)  # [B, n]
            go_right = xs.gather(2, coord.unsqueeze(-1)).squeeze(-1) > 0
            node = 2 * node + 1 + go_right.long()
        return leaves.gather(1, node - n_internal)

    @staticmethod
    def second_moment(n_dims_truncated, sparsity):
        return 1.0  # every prediction is a leaf, and the leaves are N(0, 1)


TASKS = {
    "linear_regression": LinearRegression,
    "noisy_linear_regression": NoisyLinearRegression,
    "sparse_linear_regression": SparseLinearRegression,
    "relu_2nn_regression": Relu2nnRegression,
    "decision_tree": DecisionTree,
}


def _get_task(task_name):
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; allowed: {', '.join(TASKS)}")
    return TASKS[task_name]


def sample_xs(batch_size, n_points, n_dims, n_dims_truncated, generator):
    xs = torch.randn(batch_size, n_points, n_dims, generator=generator)
    xs[..., n_dims_truncated:] = 0
    return xs


def sample_batch(task_name, *, batch_size, n_points, n_dims, n_dims_truncated, generator, sparsity=3):
    """Returns xs [B, n_points, n_dims] and ys [B, n_points], float32 on CPU."""
    task = _get_task(task_name)
    if not 1 <= n_dims_truncated <= n_dims:
        raise ValueError(f"n_dims_truncated must be in 1..{n_dims}, got {n_dims_truncated}")
    if sparsity < 1:
        raise ValueError(f"sparsity must be >= 1, got {sparsity}")
    xs = sample_xs(batch_size, n_points, n_dims, n_dims_truncated, generator)
    params = task.sample_params(batch_size, n_dims, n_dims_truncated, generator, sparsity)
    return xs, task.evaluate(xs, params, generator)


def error_normaliser(task_name, n_dims_truncated, sparsity):
    """What evaluation divides squared error by: E[y^2] for the linear tasks, so predicting 0 scores ~1;
    the non-linear tasks are reported unnormalised (divisor 1)."""
    _get_task(task_name)
    if task_name in ("linear_regression", "noisy_linear_regression"):
        return float(n_dims_truncated)
    if task_name == "sparse_linear_regression":
        return float(min(sparsity, n_dims_truncated))
    return 1.0


def predict_zero_error(task_name, n_dims_truncated, sparsity):
    """The reported error of predicting 0, E[y^2] / error_normaliser: the score of a model that learned nothing.
    About 1 for the normalised linear tasks and decision_tree; n_dims_truncated for relu_2nn_regression."""
    return _get_task(task_name).second_moment(n_dims_truncated, sparsity) / error_normaliser(
        task_name, n_dims_truncated, sparsity)
