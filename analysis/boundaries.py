"""Group-sequential boundaries for the paired t statistic at a few seeds, calibrated by simulation.

Under no difference a comparison's per-seed differences are iid normal, and the t statistics at the looks are
then functions of standard normal draws whatever the noise's size: simulating standard normal paths gives
their joint law, up to Monte Carlo error. At level a the boundary c_k of look k solves

    P(|T_j| < c_j at every look j < k, |T_k| >= c_k) = spend(f_k, a) - spend(f_{k-1}, a),

f_k being look k's information fraction (its seeds over the last look's). Written as P(|T_k| >= c) minus
P(crossed earlier, |T_k| >= c), the first term is Student's t tail, exact; only the overlap with the earlier
looks is simulated. So the tiny increments of an O'Brien-Fleming design's first looks are as exact as the t
tail, and where the paths are too few to show an overlap it counts as 0, which raises the boundary: the
simulation's shortfall never makes a boundary liberal.

A `Table` holds the boundaries at every look for a grid of levels: the p-value grid and Holm's levels
alpha / i (i = 1 .. MOST_COMPARISONS) exactly, so that a statistic on a boundary is on it in both readings.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from analysis.significance import t_quantile, t_two_sided

OBRIEN_FLEMING, POCOCK = "obrien-fleming", "pocock"
MOST_COMPARISONS = 64  # a hypothesis's comparisons: Holm's levels are table columns up to alpha / 64
TOP, BOTTOM = 0.5, 1e-8  # the p-value grid; a p-value above TOP is given as 1, one below BOTTOM as BOTTOM
PER_DECADE = 16
FLOOR = 1e-12  # a look that may spend less than this gets an infinite boundary: it cannot reject
SEED = 29  # of the simulated paths: one design always gives the same boundaries
BLOCK = 16  # levels solved together: bounds the memory to paths x BLOCK counts


def obrien_fleming(fraction, level):
    """Lan and DeMets' O'Brien-Fleming-type spending: 2 - 2 Phi(z_{level/2} / sqrt(fraction))."""
    z = np.array([-NormalDist().inv_cdf(a / 2) for a in np.ravel(level)]).reshape(np.shape(level))
    return _normal_tail(z / np.sqrt(fraction))


def pocock(fraction, level):
    """Lan and DeMets' Pocock-type spending: level x ln(1 + (e - 1) fraction)."""
    return np.asarray(level) * np.log1p((math.e - 1) * np.asarray(fraction))


SPENDING = {OBRIEN_FLEMING: obrien_fleming, POCOCK: pocock}
_erfc = np.frompyfunc(math.erfc, 1, 1)


def _normal_tail(z):
    """P(|Z| >= z) for a standard normal Z, precise far into the tail."""
    return np.asarray(_erfc(np.asarray(z, dtype=float) / math.sqrt(2)), dtype=float)


def _normal_quantile(p):
    return np.array([-NormalDist().inv_cdf(q / 2) for q in p])


def _statistics(looks: tuple[int, ...], paths: int, gaussian: bool) -> np.ndarray:
    """[looks, paths]: |T| (or |Z| with the noise's size known) at each look of standard normal paths."""
    rng = np.random.default_rng(SEED)
    total, squares, found = np.zeros(paths), np.zeros(paths), []
    for n in range(1, looks[-1] + 1):
        draw = rng.standard_normal(paths)
        total += draw
        squares += draw * draw
        if n in looks:
            spread = 1.0 if gaussian else np.sqrt((squares - total * total / n) / (n - 1))
            found.append(np.abs(total) / (spread * math.sqrt(n)))
    return np.array(found)


def _overlap(tails: np.ndarray, earlier: np.ndarray, bounds: np.ndarray, increment: float) -> int:
    """The crossed paths to count at one look and level: `tails` [paths], increasing, the paths' tails at this
    look; `earlier` [k, paths] their statistics and `bounds` [k] the level's boundaries at the earlier looks.
    With the crossed paths in the order of their tails, the first i of them, i the least for which the
    (i + 1)-th one's tail exceeds increment + i / paths. Only paths with small tails can count, so the search
    starts with those and widens until a path beyond its reach proves the rest irrelevant."""
    paths = len(tails)
    reach = max(1, int(np.searchsorted(tails, 2 * increment + 16 / paths)))
    while True:
        crossed = (earlier[:, :reach] >= bounds[:, None]).any(axis=0)
        kept = tails[:reach][crossed]
        beyond = kept > increment + np.arange(len(kept)) / paths
        count = int(beyond.argmax()) if beyond.any() else len(kept)
        if reach == paths or tails[reach] > increment + count / paths:
            return count
        reach = min(paths, 2 * reach)


def _solve(statistics: np.ndarray, spent: np.ndarray, tail, quantile) -> np.ndarray:
    """statistics [looks, paths]; spent [looks, levels]: each level's spending at each look. The boundaries
    [looks, levels], look by look: c = quantile(increment + overlap / paths)."""
    bounds = np.empty(spent.shape)
    previous = np.zeros(spent.shape[1])
    for k, statistic in enumerate(statistics):
        increment, previous = spent[k] - previous, spent[k]
        target = increment.copy()
        if k:
            tails = tail(statistic, k)
            order = np.argsort(tails, kind="stable")
            tails, earlier = tails[order], statistics[:k, order]
            overlap = [_overlap(tails, earlier, bounds[:k, g], a) for g, a in enumerate(increment)]
            target += np.array(overlap) / len(tails)
        bounds[k] = np.where(target < FLOOR, np.inf, quantile(np.maximum(target, FLOOR), k))
    return bounds


@dataclass(frozen=True)
class Table:
    levels: np.ndarray  # [levels], increasing
    bounds: np.ndarray  # [looks, levels]: each look's boundary, non-increasing along the levels
    holm_columns: np.ndarray  # [MOST_COMPARISONS]: the column of level alpha / i at i - 1

    def critical(self, comparisons: int) -> np.ndarray:
        """[looks]: the boundaries at alpha / comparisons."""
        return self.bounds[:, self.holm_columns[comparisons - 1]]

    def p_values(self, statistic, k: int) -> np.ndarray:
        """The smallest level whose boundary at look k the |statistic| reaches (NaN stays NaN), read between
        the grid's levels linearly in log level."""
        a = np.abs(np.asarray(statistic, dtype=float))
        row, logs = self.bounds[k], np.log(self.levels)
        # the first boundary <= a; an infinite statistic (no spread) passes every finite boundary, not an infinite one
        g = np.searchsorted(-row, -np.nan_to_num(a, nan=0.0), side="left")
        inside = np.clip(g, 1, len(row) - 1)
        upper, lower = row[inside - 1], row[inside]
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(np.isinf(upper), 1.0, (upper - a) / (upper - lower))
        between = np.exp(logs[inside - 1] + share * (logs[inside] - logs[inside - 1]))
        p = np.select([g == 0, g == len(row)], [self.levels[0], 1.0], between)
        return np.where(np.isnan(a), np.nan, p)


@functools.cache
def table(looks: tuple[int, ...], alpha: float, spending: str, paths: int, gaussian: bool = False) -> Table:
    """The boundaries of a design at every look and level. `gaussian`: normal-theory boundaries, those of
    the statistic with the noise's size known, for comparison only: at a few seeds they are too low for t."""
    holm = alpha / np.arange(1, MOST_COMPARISONS + 1)
    grid = np.logspace(math.log10(BOTTOM), math.log10(TOP), round(PER_DECADE * math.log10(TOP / BOTTOM)) + 1)
    levels, inverse = np.unique(np.concatenate([holm, grid]), return_inverse=True)
    fractions = np.asarray(looks, dtype=float) / looks[-1]
    spent = SPENDING[spending](fractions[:, None], levels[None, :])
    statistics = _statistics(looks, paths, gaussian)
    if gaussian:
        bounds = _solve(statistics, spent, lambda a, k: _normal_tail(a), lambda p, k: _normal_quantile(p))
    else:
        df = np.asarray(looks, dtype=float) - 1
        bounds = _solve(statistics, spent, lambda a, k: t_two_sided(a, df[k]), lambda p, k: t_quantile(p, df[k]))
    # a p-value is the smallest level that rejects: where a higher level's boundary lies above a lower one's at a
    # look (O'Brien-Fleming-type increments shrink as the level nears 1), the lower level rejects there first
    return Table(levels, np.minimum.accumulate(bounds, axis=1), inverse[:MOST_COMPARISONS])
