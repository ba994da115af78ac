"""The rule of a group-sequential study: seeds are added in rounds, fixed before the first look, to the
comparisons still open, and each look may decide a comparison, or show it too small to matter, or leave it
open for the next round (docs/ANALYSIS.md, "Sequential studies"; the rule in words: `rule`).

A comparison is a variant against its reference on the final error, paired by seed: one difference (variant
minus reference) per seed. At each look its paired t statistic is read against the boundaries of an
alpha-spending design (`analysis.boundaries`): its sequential p-value is the least level whose design would
have rejected it at some look so far, so it never rises. Holm's procedure over a hypothesis's comparisons, on
these p-values at every look, is the group-sequential Holm procedure: each comparison is tested by its own
group-sequential test at alpha / (m - j + 1) in Holm's step-down order, which keeps the chance of any false
alarm, over all looks and comparisons together, at most alpha. The repeated confidence intervals use the
boundaries at alpha / m: together they hold every true difference at every look with probability at least
1 - alpha, so an interval is valid wherever the study stopped.

`run` applies the rule to arrays of hypotheses (the simulation in benchmarks/sequential.py), and `look` to
one hypothesis (`analysis.study`, which the report and the runner call).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from analysis.boundaries import MOST_COMPARISONS, OBRIEN_FLEMING, POCOCK, SPENDING, TOP, Table, table
from analysis.significance import ALPHA, MIN_SEEDS, holm
from analysis.verdict import MOST_SEEDS, PREDICT_ZERO, SMALLEST_EFFECT
from trainers.records import EXPECTATIONS

PATHS = 200_000  # simulated paths: the Monte Carlo error of a boundary's level is about 1% of alpha / m
FEWEST_PATHS, MOST_PATHS = 10_000, 2_000_000
OPEN, EQUIVALENT, CAPPED = "open", "equivalent", "undecided at the cap"
WORSE, BETTER = EXPECTATIONS
STATES = (OPEN, WORSE, BETTER, EQUIVALENT, CAPPED)  # `Study.state` holds their indices


def _bad(key: str, value, allowed: str) -> ValueError:
    return ValueError(f"sequential design `{key}`: {value!r} is not allowed; {allowed}")


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class Design:
    """A sequential study's plan, fixed before its first look and kept in its space record."""
    looks: tuple[int, ...] = (3, 5, 8, 12)  # seeds a variant at each look; information fraction = seeds / last
    alpha: float = ALPHA  # two-sided, for all the comparisons of a hypothesis over all the looks
    spending: str = OBRIEN_FLEMING  # or POCOCK: how alpha is spread over the looks
    smallest_effect: float = SMALLEST_EFFECT  # the equivalence margin, as a share of the predict-0 level
    paths: int = PATHS  # simulated to calibrate the boundaries

    def __post_init__(self):
        looks = self.looks
        if (not isinstance(looks, (list, tuple)) or not looks or not all(_whole(n) for n in looks)
                or looks[0] < MIN_SEEDS or looks[-1] > MOST_SEEDS or any(a >= b for a, b in zip(looks, looks[1:]))):
            raise _bad("looks", looks, f"give increasing whole seed counts a variant from {MIN_SEEDS} to "
                                       f"{MOST_SEEDS}, e.g. [3, 5, 8, 12]")
        object.__setattr__(self, "looks", tuple(int(n) for n in looks))
        if not _real(self.alpha) or not 0 < self.alpha <= TOP:
            raise _bad("alpha", self.alpha, f"give a number above 0 and at most {TOP:g}, e.g. {ALPHA:g}")
        if not isinstance(self.spending, str) or self.spending not in SPENDING:
            raise _bad("spending", self.spending, f"give one of {', '.join(SPENDING)}")
        if not _real(self.smallest_effect) or not 0 < self.smallest_effect <= 1:
            raise _bad("smallest_effect", self.smallest_effect,
                       f"give a share of the predict-0 level above 0 and at most 1, e.g. {SMALLEST_EFFECT:g}")
        if not _whole(self.paths) or not FEWEST_PATHS <= self.paths <= MOST_PATHS:
            raise _bad("paths", self.paths, f"give a whole number from {FEWEST_PATHS} to {MOST_PATHS}")

    def to_record(self) -> dict:
        return {"looks": list(self.looks), "alpha": float(self.alpha), "spending": self.spending,
                "smallest_effect": float(self.smallest_effect), "paths": int(self.paths)}

    @classmethod
    def from_record(cls, record) -> Design:
        """The design of `to_record`'s dict; a missing key takes its default."""
        keys = [f.name for f in fields(cls)]
        if not isinstance(record, Mapping):
            raise ValueError(f"sequential design: {record!r} is not allowed; give a mapping of {', '.join(keys)}")
        for key in record:
            if key not in keys:
                raise _bad(key, record[key], f"the keys are {', '.join(keys)}")
        return cls(**record)

    def table(self, gaussian: bool = False) -> Table:
        """The design's boundaries; `gaussian`: normal theory's instead, for comparison only."""
        return table(self.looks, float(self.alpha), self.spending, self.paths, gaussian)


@dataclass(frozen=True)
class Study:
    """The rule on arrays: hypotheses on the leading axes, their comparisons on the last. Each value is the one
    of the comparison's last look (its stopping look once it is no longer open)."""
    state: np.ndarray  # index into STATES
    look: np.ndarray  # index into the design's looks; -1: not looked at yet
    difference: np.ndarray  # mean per-seed difference, variant minus reference
    p: np.ndarray  # the sequential p-value
    lo: np.ndarray  # the repeated confidence interval
    hi: np.ndarray


def run(differences, design: Design, margin) -> Study:
    """differences [..., m, n]: each comparison's per-seed differences in seed order, NaN where a seed has none
    yet; margin [...] or a number: the equivalence margin on the error's scale. The study replayed look by look:
    a hypothesis takes look k once each of its open comparisons has the look's seeds, and seeds beyond wait for
    the next look."""
    differences = np.asarray(differences, dtype=float)
    shape, seeds_given = differences.shape[:-1], differences.shape[-1]
    boundaries = design.table()
    critical = boundaries.critical(shape[-1])
    margin = np.asarray(margin, dtype=float)[..., None]
    state, look = np.zeros(shape, dtype=int), np.full(shape, -1)
    difference, p, lo, hi = (np.full(shape, np.nan) for _ in range(4))
    reached = np.ones(shape[:-1], dtype=bool)
    for k, n in enumerate(design.looks):
        if seeds_given < n:
            break
        seeds = differences[..., :n]
        open_ = state == STATES.index(OPEN)
        reached &= (~np.isnan(seeds).any(axis=-1) | ~open_).all(axis=-1)
        now = open_ & reached[..., None]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean, se = seeds.mean(axis=-1), seeds.std(axis=-1, ddof=1) / math.sqrt(n)
            # no spread: any difference is certain, and none is no evidence at all (as analysis.significance)
            t = np.where(se > 0, np.abs(mean) / se, np.where(mean == 0, 0.0, np.inf))
        p = np.where(now, np.fmin(p, boundaries.p_values(np.where(now, t, np.nan), k)), p)
        difference = np.where(now, mean, difference)
        half = critical[k] * se if np.isfinite(critical[k]) else np.inf  # an infinite one holds even at no spread
        lo, hi = np.where(now, mean - half, lo), np.where(now, mean + half, hi)
        look = np.where(now, k, look)
        rejected = now & holm(p, design.alpha)
        within = now & (lo > -margin) & (hi < margin)
        capped = now & (k == len(design.looks) - 1)
        state = np.select([rejected & (mean > 0), rejected, within, capped],
                          [STATES.index(s) for s in (WORSE, BETTER, EQUIVALENT, CAPPED)], state)
    return Study(state, look, difference, p, lo, hi)


@dataclass(frozen=True)
class ComparisonState:
    name: str
    state: str  # one of STATES
    look: int | None  # index into the design's looks: the last look, where it stopped if no longer open
    seeds: int  # a side, at that look
    difference: float  # mean per-seed difference, variant minus reference: biased away from 0 by an early stop
    p: float  # the sequential p-value
    lo: float  # the repeated confidence interval, at alpha / m
    hi: float
    next_seeds: int | None  # open: the seeds a side the next look needs; else None

    @property
    def largest_effect(self) -> float:
        """The largest true difference, either way, that the interval still allows."""
        return max(abs(self.lo), abs(self.hi))


def look(differences: Mapping[str, Sequence[float]], design: Design,
         predict_zero: float = PREDICT_ZERO) -> tuple[ComparisonState, ...]:
    """The state of each comparison of one hypothesis, in the mapping's order. `differences`: comparison name ->
    its per-seed differences so far (variant minus reference, seeds in order); `predict_zero`: the task's
    predict-0 level, which the equivalence margin is a share of."""
    if not _real(predict_zero) or predict_zero <= 0:
        raise ValueError(f"predict_zero: {predict_zero!r} is not allowed; give the task's predict-0 error, above 0")
    if not 1 <= len(differences) <= MOST_COMPARISONS:
        raise ValueError(f"sequential study: {len(differences)} comparisons is not allowed; give 1 to "
                         f"{MOST_COMPARISONS} for a hypothesis")
    rows = []
    for name, values in differences.items():
        values = np.asarray(values, dtype=float)
        if values.ndim != 1 or not np.isfinite(values).all():
            raise ValueError(f"comparison `{name}`: {values.tolist()!r} is not allowed; give one finite difference "
                             f"per seed, in seed order")
        rows.append(values)
    padded = np.full((len(rows), max(1, *map(len, rows))), np.nan)
    for row, values in zip(padded, rows):
        row[:len(values)] = values
    study = run(padded, design, design.smallest_effect * predict_zero)
    states = []
    for i, name in enumerate(differences):
        state, k = STATES[study.state[i]], int(study.look[i])
        states.append(ComparisonState(
            name, state, k if k >= 0 else None, design.looks[k] if k >= 0 else 0, float(study.difference[i]),
            float(study.p[i]), float(study.lo[i]), float(study.hi[i]), design.looks[k + 1] if state == OPEN else None))
    return tuple(states)


def rule(design: Design) -> str:
    """The rule in plain words, for a report."""
    looks, alpha = ", ".join(map(str, design.looks)), design.alpha
    name, shape = {OBRIEN_FLEMING: ("O'Brien-Fleming", "high at the first looks, close to the usual one at the last"),
                   POCOCK: ("Pocock", "about equally high at every look")}[design.spending]
    return (
        f"The variants get seeds in rounds, {looks} seeds a variant, a schedule fixed before the first look. At "
        f"each look, each comparison still open is tested by a paired t-test on its per-seed differences (variant "
        f"minus reference) against a boundary that spreads the {alpha:.0%} chance of a false alarm over the looks "
        f"({name}-type spending: {shape}), computed for Student's t at these seed counts. A comparison's "
        f"sequential p-value is the smallest false-alarm chance at which it would have crossed a boundary at some "
        f"look so far, so it never rises. Holm's correction over the hypothesis's "
        f"comparisons decides which variants are *{WORSE}* or *{BETTER}*; with no true difference anywhere, any "
        f"such decision happens at most {alpha:.0%} of the time, over all the looks together. A decided "
        f"comparison gets no more seeds. Each interval is a repeated confidence interval at {alpha:.0%}/m for m "
        f"comparisons: together they hold every true difference at every look at least {1 - alpha:.0%} of the "
        f"time, so they are valid wherever the study stopped. A comparison whose interval lies within "
        f"+-{design.smallest_effect:g} x the predict-0 error ends as *{EQUIVALENT}*: no difference that large. "
        f"That stop uses none of the false-alarm chance, and the comparison still counts among Holm's m, which "
        f"only makes the rule more cautious. A comparison still open at the last look ({design.looks[-1]} seeds) "
        f"is *{CAPPED}*, with its interval: the larger end, either way, is the largest difference the seeds "
        f"still allow. A study that stops early tends to stop on a lucky run of seeds, so the mean difference of "
        f"an early decision overstates the true one (it is biased away from zero): read the interval, not the "
        f"mean. The tests assume independent seeds and roughly normal seed-to-seed variation.")
