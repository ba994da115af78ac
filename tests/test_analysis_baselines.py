import subprocess
import sys

import numpy as np
import pytest
import torch

from analysis.baselines import SKLEARN, averaging, baselines_for, lasso, least_squares, nearest_neighbours


def prompts(batch=16, n_points=15, n_dims=6, n_dims_truncated=None, seed=0, noise=0.0):
    """Linear-regression prompts; coordinates from n_dims_truncated on are zero, as the curriculum makes them."""
    generator = torch.Generator().manual_seed(seed)
    xs = torch.randn(batch, n_points, n_dims, generator=generator)
    xs[..., n_dims_truncated or n_dims:] = 0
    w = torch.randn(batch, n_dims, generator=generator)
    ys = torch.einsum("bnd,bd->bn", xs, w) + noise * torch.randn(batch, n_points, generator=generator)
    return xs, ys


def numpy_least_squares(xs, ys):
    X, Y = xs.double().numpy(), ys.double().numpy()
    preds = np.zeros(Y.shape)
    for b in range(X.shape[0]):
        for k in range(1, X.shape[1]):
            w = np.linalg.lstsq(X[b, :k], Y[b, :k], rcond=None)[0]
            preds[b, k] = X[b, k] @ w
    return preds


@pytest.mark.parametrize("n_dims_truncated", [6, 4])
def test_least_squares_matches_numpy_min_norm_solution(n_dims_truncated):
    xs, ys = prompts(n_dims_truncated=n_dims_truncated, noise=0.5)
    np.testing.assert_allclose(least_squares(xs, ys).numpy(), numpy_least_squares(xs, ys), atol=1e-4)


def test_least_squares_is_exact_once_k_reaches_the_dimension():
    xs, ys = prompts(n_dims=6, n_dims_truncated=4)
    errors = ((least_squares(xs, ys) - ys) ** 2).mean(dim=0)
    assert errors[0] == pytest.approx((ys[:, 0] ** 2).mean().item())  # predicts 0 with no examples
    assert errors[4:].max() < 1e-8
    assert errors[1:4].min() > 1e-3


def test_averaging_matches_a_direct_implementation():
    xs, ys = prompts(noise=0.1)
    X, Y = xs.double().numpy(), ys.double().numpy()
    expected = np.zeros(Y.shape)
    for b in range(X.shape[0]):
        for k in range(1, X.shape[1]):
            w = np.mean(Y[b, :k, None] * X[b, :k], axis=0)
            expected[b, k] = X[b, k] @ w
    np.testing.assert_allclose(averaging(xs, ys).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_nearest_neighbours_matches_a_direct_implementation():
    xs, ys = prompts(noise=0.1)
    X, Y = xs.double().numpy(), ys.double().numpy()
    expected = np.zeros(Y.shape)
    for b in range(X.shape[0]):
        for k in range(1, X.shape[1]):
            distances = np.linalg.norm(X[b, :k] - X[b, k], axis=1)
            expected[b, k] = Y[b, np.argsort(distances)[:3]].mean()
    np.testing.assert_allclose(nearest_neighbours(xs, ys).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_baselines_see_only_earlier_examples():
    xs, ys = prompts()
    changed = ys.clone()
    changed[:, 8:] += 100.0  # what follows position 8 must not move predictions up to 8
    for name, baseline in baselines_for("linear_regression").items():
        before, after = baseline(xs, ys), baseline(xs, changed)
        torch.testing.assert_close(before[:, :9], after[:, :9], msg=name)
        assert (before[:, 0] == 0).all(), name


def test_single_point_prompts_predict_zero():
    xs, ys = prompts(n_points=1)
    for baseline in baselines_for("linear_regression").values():
        assert baseline(xs, ys).abs().max() == 0


@pytest.mark.skipif(not SKLEARN, reason="scikit-learn is not installed")
def test_lasso_for_sparse_regression_only():
    from sklearn.linear_model import Lasso

    assert "lasso" in baselines_for("sparse_linear_regression")
    assert set(baselines_for("linear_regression")) == {"least_squares", "averaging", "3nn"}
    xs, ys = prompts(batch=2, n_points=8, n_dims=5)
    preds = lasso(xs, ys, alpha=0.01)
    fitted = Lasso(alpha=0.01, fit_intercept=False, max_iter=10_000).fit(xs[1, :6].double().numpy(),
                                                                        ys[1, :6].double().numpy())
    assert preds[1, 6].item() == pytest.approx(fitted.predict(xs[1, 6:7].double().numpy())[0], abs=1e-3)
    assert (preds[:, 0] == 0).all()


@pytest.mark.slow
@pytest.mark.skipif(not SKLEARN, reason="scikit-learn is not installed")
def test_scikit_learn_is_imported_only_where_lasso_runs():
    """Its import costs every process that evaluates (the runner, `python -m analysis`) 1.5-2.5 s."""
    code = ("import sys, torch\nfrom analysis.evaluation import evaluate_experiment\nprint('sklearn' in sys.modules)\n"
            "from analysis.baselines import baselines_for\n"
            "baselines_for('sparse_linear_regression')['lasso'](torch.ones(1, 3, 2), torch.ones(1, 3))\n"
            "print('sklearn' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
