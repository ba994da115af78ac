"""The seed-level statistics behind the verdict: Student's t distribution, the test of one comparison, Holm's
correction over a hypothesis's comparisons, simultaneous intervals, and the smallest difference a comparison's
seeds could have detected.

Every function works on numpy arrays: the seeds on the last axis for `seed_test`, the comparisons of one
hypothesis on the last axis for `family`. A report judges one hypothesis with them, and the calibration
simulation (tests/test_calibration.py) judges thousands at once with the very same code.

Without scipy: the two-sided tail of t with df degrees of freedom is the regularised incomplete beta function
I_x(df/2, 1/2) at x = df / (df + t^2), summed by its continued fraction (modified Lentz); quantiles invert it
by Newton's method in log t, where the tail is close to a straight line (a power law for large t).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05  # two-sided, family-wise: for all the comparisons of one hypothesis together
POWER = 0.8  # of the smallest detectable difference
MIN_SEEDS = 2  # a side: one seed has no spread, so no test

_lgamma_scalar = np.frompyfunc(math.lgamma, 1, 1)
_TINY = 1e-300


def _lgamma(x) -> np.ndarray:
    return np.asarray(_lgamma_scalar(np.asarray(x, dtype=float)), dtype=float)


def _continued_fraction(a, b, x, *, tolerance=1e-15, most=500):
    """The continued fraction of I_x(a, b) (Numerical Recipes' betacf); converges fast for x < (a+1)/(a+b+2)."""
    def clamp(v):
        return np.where(np.abs(v) < _TINY, _TINY, v)

    c = np.ones_like(x)
    d = 1 / clamp(1 - (a + b) * x / (a + 1))
    h = d.copy()
    for m in range(1, most + 1):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d, c = 1 / clamp(1 + even * d), clamp(1 + even / c)
        h *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d, c = 1 / clamp(1 + odd * d), clamp(1 + odd / c)
        h *= d * c
        if np.all(np.abs(d * c - 1) < tolerance):
            break
    return h


def regularised_beta(a, b, x) -> np.ndarray:
    """I_x(a, b), elementwise, for a, b > 0 and 0 <= x <= 1."""
    a, b, x = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (a, b, x)))
    flip = x > (a + 1) / (a + b + 2)  # I_x(a, b) = 1 - I_{1-x}(b, a), whose fraction converges there
    a, b, x = np.where(flip, b, a), np.where(flip, a, b), np.where(flip, 1 - x, x)
    inside = x > 0
    safe = np.where(inside, x, 0.5)
    log_front = _lgamma(a + b) - _lgamma(a) - _lgamma(b) + a * np.log(safe) + b * np.log1p(-safe)
    tail = np.where(inside, np.exp(log_front) / a * _continued_fraction(a, b, safe), 0.0)
    return np.where(flip, 1 - tail, tail)


def t_two_sided(t, df) -> np.ndarray:
    """P(|T| >= |t|) for T ~ Student's t with `df` degrees of freedom (df > 0, t may be inf)."""
    t, df = np.broadcast_arrays(np.abs(np.asarray(t, dtype=float)), np.asarray(df, dtype=float))
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.where(np.isinf(t), 0.0, df / (df + t * t))
    return regularised_beta(df / 2, 0.5, x)


def _log_density(t, df):
    return _lgamma((df + 1) / 2) - _lgamma(df / 2) - 0.5 * np.log(df * np.pi) - (df + 1) / 2 * np.log1p(t * t / df)


def t_quantile(p_two, df) -> np.ndarray:
    """The t >= 0 with P(|T| >= t) = p_two (0 < p_two <= 0.5), elementwise. Reports ask for few distinct
    (p_two, df) pairs, so each is solved once."""
    p_two, df = np.broadcast_arrays(np.asarray(p_two, dtype=float), np.asarray(df, dtype=float))
    pairs, inverse = np.unique(np.stack([p_two.ravel(), df.ravel()], axis=1), axis=0, return_inverse=True)
    p, nu = pairs[:, 0], pairs[:, 1]
    log_t = np.full(len(pairs), math.log(3.0))
    for _ in range(60):
        t = np.exp(log_t)
        tail = t_two_sided(t, nu)
        with np.errstate(divide="ignore", invalid="ignore"):
            # d log P / d log t = -2 t density(t) / P; an underflowed tail means t is far too large
            slope = -2 * t * np.exp(_log_density(t, nu)) / tail
            step = np.where(tail > 0, (np.log(tail) - np.log(p)) / slope, -1.0)
        step = np.clip(step, -1.0, 1.0)
        log_t -= step
        if np.all(np.abs(step) < 1e-13):
            break
    return np.exp(log_t)[inverse.ravel()].reshape(p_two.shape)


def _mean_and_variance(values: np.ndarray):
    """(count, mean, sample variance) over the last axis, NaN = no seed; mean NaN for 0 seeds, variance for < 2."""
    present = ~np.isnan(values)
    n = present.sum(axis=-1)
    filled = np.where(present, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(axis=-1) / n
        squares = np.where(present, (values - mean[..., None]) ** 2, 0.0).sum(axis=-1)
        variance = np.where(n > 1, squares / np.maximum(n - 1, 1), np.nan)
    return n, mean, variance


@dataclass(frozen=True)
class SeedTest:
    """One test per comparison (arrays of one shape): the variant's mean error minus its reference's."""
    difference: np.ndarray
    se: np.ndarray  # the standard error of the difference
    df: np.ndarray  # degrees of freedom of the t reference distribution
    paired: np.ndarray  # True: a paired test on the per-seed differences; False: Welch's statistic
    spread: np.ndarray  # per-seed standard deviation of the difference: with n seeds a side, se = spread / sqrt(n)
    seeds: np.ndarray  # the smaller side's number of seeds
    testable: np.ndarray  # at least MIN_SEEDS on each side


def seed_test(variant, reference, aligned) -> SeedTest:
    """variant [..., n], reference [..., n]: one final error per seed, NaN where a seed has none. Where
    `aligned` is true position i is the same seed on both sides, and where moreover both sides hold the same
    seeds the test is paired: a t-test on the per-seed differences, exact for normal differences whatever the
    two spreads and their correlation. Elsewhere it is Welch's statistic referred to t with the smaller side's
    seeds - 1 degrees of freedom (Hsu's choice), never liberal whatever the ratio of the spreads, where
    Satterthwaite's degrees of freedom reject up to 5 times too often at 2 to 5 seeds and Bonferroni levels."""
    variant, reference = np.asarray(variant, dtype=float), np.asarray(reference, dtype=float)
    n_v, mean_v, var_v = _mean_and_variance(variant)
    n_r, mean_r, var_r = _mean_and_variance(reference)
    paired = np.asarray(aligned, dtype=bool) & np.all(np.isnan(variant) == np.isnan(reference), axis=-1)
    n_d, mean_d, var_d = _mean_and_variance(variant - reference)
    with np.errstate(invalid="ignore", divide="ignore"):
        se_welch = np.sqrt(var_v / n_v + var_r / n_r)
        se_paired = np.sqrt(var_d / n_d)
    seeds = np.minimum(n_v, n_r)
    return SeedTest(
        difference=np.where(paired, mean_d, mean_v - mean_r),
        se=np.where(paired, se_paired, se_welch),
        df=(seeds - 1).astype(float),
        paired=paired,
        spread=np.where(paired, np.sqrt(var_d), np.sqrt(var_v + var_r)),
        seeds=seeds,
        testable=seeds >= MIN_SEEDS,
    )


def _two_sided_p(test: SeedTest) -> np.ndarray:
    """NaN where the comparison is not testable. No spread on either side: any difference is certain (p = 0)
    and none is no evidence at all (p = 1)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(test.se > 0, np.abs(test.difference) / test.se, np.where(test.difference == 0, 0.0, np.inf))
    df = np.where(test.testable, test.df, 1.0)
    return np.where(test.testable, t_two_sided(np.where(test.testable, t, 0.0), df), np.nan)


def holm(p, alpha: float = ALPHA) -> np.ndarray:
    """Holm's step-down rejections over the last axis (NaN = not tested, never rejected): the k-th smallest
    p-value of m is compared with alpha / (m - k + 1), and testing stops at the first that fails."""
    p = np.asarray(p, dtype=float)
    tested = ~np.isnan(p)
    m = tested.sum(axis=-1, keepdims=True)
    ordered = np.where(tested, p, np.inf)
    order = np.argsort(ordered, axis=-1, kind="stable")
    rank = np.arange(p.shape[-1])
    passed = np.take_along_axis(ordered, order, axis=-1) <= alpha / np.maximum(m - rank, 1)
    rejected = np.empty_like(passed)
    np.put_along_axis(rejected, order, np.logical_and.accumulate(passed, axis=-1), axis=-1)
    return rejected


@dataclass(frozen=True)
class Family:
    """The comparisons of a hypothesis (last axis) judged together."""
    p: np.ndarray  # each comparison's own two-sided p-value
    decided: np.ndarray  # rejected by Holm at ALPHA
    lo: np.ndarray  # Bonferroni intervals: together they cover every true difference with probability >= 1 - ALPHA
    hi: np.ndarray
    detectable: np.ndarray  # the smallest true difference found with probability POWER at the family's level
    tested: np.ndarray  # m, the number of testable comparisons, broadcast along the last axis


def family(test: SeedTest, alpha: float = ALPHA, power: float = POWER) -> Family:
    """Each interval is difference +- t(alpha / m, df) se: it excludes 0 exactly when p < alpha / m, and such a
    p is always rejected by Holm, so an interval that excludes 0 is always a decided comparison."""
    p = _two_sided_p(test)
    tested = np.broadcast_to(test.testable.sum(axis=-1, keepdims=True), p.shape)
    df = np.where(test.testable, test.df, 1.0)
    critical = t_quantile(alpha / np.maximum(tested, 1), df)
    beyond = t_quantile(2 * (1 - power), df)
    nan = np.full(p.shape, np.nan)
    return Family(
        p=p,
        decided=holm(p, alpha),
        lo=np.where(test.testable, test.difference - critical * test.se, nan),
        hi=np.where(test.testable, test.difference + critical * test.se, nan),
        detectable=np.where(test.testable, (critical + beyond) * test.se, nan),
        tested=tested,
    )


def seeds_to_detect(spread: float, target: float, tested: int, *, alpha: float = ALPHA, power: float = POWER,
                    most: int = 100) -> int | None:
    """The fewest seeds a side (2 .. most; None beyond) at which a comparison whose per-seed differences spread
    by `spread` detects a true difference of `target` with probability `power`, in a family of `tested`."""
    n = np.arange(MIN_SEEDS, most + 1)
    factor = t_quantile(alpha / max(tested, 1), n - 1.0) + t_quantile(2 * (1 - power), n - 1.0)
    enough = factor * spread / np.sqrt(n) <= target
    return int(n[np.argmax(enough)]) if enough.any() else None
