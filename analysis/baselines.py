"""Classical in-context learners the paper compares the models with.

Every baseline maps xs [B, n, d] and ys [B, n] to predictions [B, n]: prediction k is fitted only on the
examples (x_j, y_j), j < k, and evaluated at x_k; with no examples (k = 0) it predicts 0.
"""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import torch

# scikit-learn is imported where Lasso runs: its import takes 1.5-2.5 s, which every runner, analysis and test
# process would pay
SKLEARN = importlib.util.find_spec("sklearn") is not None

N_NEIGHBOURS = 3
LASSO_ALPHA = 0.01


def least_squares(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The minimum-norm least-squares fit: exact once k >= d on noiseless data, and well defined below d
    or when the curriculum zeroes coordinates (rank-deficient prefixes)."""
    xs64, ys64 = xs.double(), ys.double()
    preds = torch.zeros(ys.shape, dtype=torch.float64, device=ys.device)
    for k in range(1, xs.shape[1]):
        w = _min_norm_solution(xs64[:, :k], ys64[:, :k, None])  # [B, d, 1]
        preds[:, k] = (xs64[:, k, None, :] @ w)[:, 0, 0]  # [B, 1, d] @ [B, d, 1] -> [B]
    return preds.to(ys.dtype)


def _min_norm_solution(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # LAPACK's SVD-based gelsd is min-norm and ~10x faster than a batched pinv on CPU (gelsy, faster still,
    # mis-ranks some prefixes with zeroed coordinates); CUDA's lstsq only handles full-rank tall systems
    if a.device.type == "cpu":
        return torch.linalg.lstsq(a, b, driver="gelsd").solution
    return torch.linalg.pinv(a) @ b  # [B, d, k] @ [B, k, 1]


def averaging(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """w_k = mean over j < k of y_j x_j (the estimator of w when x ~ N(0, I))."""
    n = xs.shape[1]
    sums = (ys.unsqueeze(-1) * xs).cumsum(dim=1)  # [B, n, d]: sum over j <= k
    w = torch.zeros_like(sums)
    counts = torch.arange(1, n, device=xs.device, dtype=xs.dtype).view(1, n - 1, 1)
    w[:, 1:] = sums[:, :-1] / counts  # shifted by one: position k sees j < k only
    return (w * xs).sum(dim=-1)


def nearest_neighbours(xs: torch.Tensor, ys: torch.Tensor, n_neighbours: int = N_NEIGHBOURS) -> torch.Tensor:
    """Mean y of the n_neighbours nearest earlier x (of all of them while k < n_neighbours)."""
    B, n, _ = xs.shape
    m = min(n_neighbours, n - 1)
    if m == 0:
        return torch.zeros_like(ys)
    distances = torch.cdist(xs.double(), xs.double())  # [B, n, n]: row k holds |x_k - x_j|
    earlier = torch.ones(n, n, dtype=torch.bool, device=xs.device).tril(diagonal=-1)
    distances = distances.masked_fill(~earlier, torch.inf)
    nearest, index = distances.topk(m, dim=-1, largest=False)  # [B, n, m]
    found = nearest.isfinite()
    neighbour_ys = ys.unsqueeze(1).expand(B, n, n).gather(2, index)  # [B, n, m]
    return (neighbour_ys * found).sum(dim=-1) / found.sum(dim=-1).clamp(min=1)


def lasso(xs: torch.Tensor, ys: torch.Tensor, alpha: float = LASSO_ALPHA) -> torch.Tensor:
    """scikit-learn's Lasso per prompt and prefix; each fit starts from the previous prefix's solution."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    X, Y = xs.double().cpu().numpy(), ys.double().cpu().numpy()
    preds = np.zeros(Y.shape)
    with warnings.catch_warnings():
        # tiny prefixes rarely converge to the tolerance; their predictions are still the estimator's
        warnings.simplefilter("ignore", ConvergenceWarning)
        for b in range(X.shape[0]):
            model = Lasso(alpha=alpha, fit_intercept=False, warm_start=True, max_iter=10_000)
            for k in range(1, X.shape[1]):
                preds[b, k] = model.fit(X[b, :k], Y[b, :k]).predict(X[b, k:k + 1])[0]
    return torch.from_numpy(preds).to(device=ys.device, dtype=ys.dtype)


def baselines_for(task_name: str) -> dict:
    """name -> baseline for a task: Lasso only for sparse regression, and only with scikit-learn installed."""
    chosen = {"least_squares": least_squares, "averaging": averaging, f"{N_NEIGHBOURS}nn": nearest_neighbours}
    if task_name == "sparse_linear_regression" and SKLEARN:
        chosen["lasso"] = lasso
    return chosen
