"""Whether the data support a hypothesis, by a rule stated in every report (RULE), and whether they show its
declared trend (TREND_RULE).

A hypothesis names a reference setting and the direction its other variants are predicted to differ in
(`reference: {model.n_last_tokens: -1}`, `expect: worse`). Each variant is compared with the reference
variant that shares its other settings (`L=2 LSTM` with `L=2`), on the final error at the last position,
one value per seed, by the tests of `analysis.significance`: paired by seed where both sides have the same
seeds, Welch's statistic with conservative degrees of freedom elsewhere, Holm's correction over the
hypothesis's comparisons. With no true difference anywhere, "supported" and "contradicted" together come out
at most ALPHA of the time, whatever the number of variants and the spreads of their seeds
(tests/test_calibration.py simulates it).

Errors are on the task's own scale: predicting 0 scores the task's predict-0 level (`predict_zero_error`: 1
for the normalised tasks, d for relu_2nn_regression), the summary's `predict_zero` column. A variant that stays
at >= DID_NOT_LEARN of that level on every seed did not learn: it gets no rank, and a reference that did not
learn leaves the hypothesis inconclusive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from analysis.frames import PREDICT_ZERO_COLUMN
from analysis.significance import (ALPHA, MIN_SEEDS, POWER, Family, SeedTest, family, seed_test,
                                   seeds_to_detect)
from analysis.variants import Variants
from trainers.records import (EXPECTATIONS, SEED_KEY, TREND_DIRECTIONS, Hypothesis, SpaceRecord, Trend,
                              format_setting, short_key, trend_order)

PREDICT_ZERO = 1.0  # the predict-0 level of the normalised tasks, for frames that do not say theirs
DID_NOT_LEARN = 0.9  # of the predict-0 level, on every seed
# the smallest difference worth detecting, as a share of the predict-0 level: a tenth of the way from learning
# nothing to a perfect fit. "inconclusive" promises that the seeds would have detected a difference this large
SMALLEST_EFFECT = 0.1
MOST_SEEDS = 100  # beyond it, "underpowered" gives no seed count
SUPPORTED, CONTRADICTED, INCONCLUSIVE, UNDERPOWERED = "supported", "contradicted", "inconclusive", "underpowered"
UNCLEAR = "no clear difference"
HOLDS, AGAINST, NOT_SHOWN = "holds", "against", "not shown"
RULE = (
    f"Each variant is compared with its reference on the final error at the last position, one value per seed. "
    f"Where both have the same seeds the test is a paired t-test on the per-seed differences; otherwise it is "
    f"Welch's t statistic with the smaller side's seeds - 1 degrees of freedom. Both assume independent seeds "
    f"and roughly normal seed-to-seed variation; neither assumes the two spreads equal, and the paired test "
    f"allows any correlation between the variants of one seed. A side with fewer than {MIN_SEEDS} seeds is not "
    f"tested. Holm's correction over the hypothesis's tested comparisons (two-sided, {ALPHA:.0%} for the family) "
    f"decides which variants are *worse* or *better*; the others show *{UNCLEAR}*. The intervals are "
    f"simultaneous: each is at {ALPHA:.0%}/m for m comparisons, so together they hold every true difference "
    f"at least {1 - ALPHA:.0%} of the time, and one that excludes 0 is always a decided comparison. The "
    f"hypothesis is **{SUPPORTED}** when every variant differs in the predicted direction and "
    f"**{CONTRADICTED}** when any differs in the opposite one; with no true difference, the two together happen "
    f"at most {ALPHA:.0%} of the time. Otherwise it is **{UNDERPOWERED}** when a comparison left undecided "
    f"could not have detected a difference of {SMALLEST_EFFECT:g} x the predict-0 error (its smallest "
    f"detectable difference, at {POWER:.0%} power from its seeds' spread, is larger), with about how many seeds "
    f"would settle it, and **{INCONCLUSIVE}** when each could have: the differences left are small. A "
    f"reference that did not learn (>= {DID_NOT_LEARN:g} x predict-0 on every seed) or is missing leaves the "
    f"hypothesis {INCONCLUSIVE}, untested.")
TREND_RULE = (
    f"A declared trend (`trend: {{key, error}}`) is tested apart from the verdict. The variants are sorted by the "
    f"key (`n_last_tokens=all` last) and, on each seed that has all of them, the error's least-squares slope "
    f"against their rank (0, 1, 2, ...) is taken; where other keys vary too, the seed's slope is the mean over "
    f"their groups. A one-sample t-test on the seeds' slopes, two-sided at {ALPHA:.0%}: the trend **{HOLDS}** "
    f"when the mean slope differs from 0 in the declared direction, is **{AGAINST}** when it differs in the "
    f"other, and is **{NOT_SHOWN}** otherwise or with fewer than {MIN_SEEDS} complete seeds. It tests that the "
    f"error tends to rise or fall along the key, not that every step does.")


@dataclass(frozen=True)
class Comparison:
    variant: str
    reference: str
    difference: float  # mean of the variant minus mean of the reference (the mean per-seed difference if paired)
    lo: float  # the simultaneous interval; NaN when not tested
    hi: float
    outcome: str  # worse, better or UNCLEAR
    p: float = math.nan  # the comparison's own two-sided p-value, before Holm's correction
    detectable: float = math.nan  # the smallest difference detected with probability POWER at the family's level
    test: str = ""  # paired, Welch, or why there was none
    seeds: int = 0  # the smaller side's seeds
    spread: float = math.nan  # per-seed standard deviation of the difference, for projecting more seeds


@dataclass(frozen=True)
class Verdict:
    word: str
    reason: str
    comparisons: tuple[Comparison, ...] = ()
    smallest: float = math.nan  # the smallest difference of interest, on the error's scale
    seeds_needed: int | None = None  # for UNDERPOWERED: about how many seeds a side would settle it


@dataclass(frozen=True)
class TrendTest:
    trend: Trend
    word: str  # HOLDS, AGAINST or NOT_SHOWN
    p: float
    slope: float  # mean over seeds of the error's change per step along the key's order
    seeds: int
    reason: str = ""


def predict_zero_level(trials: pd.DataFrame) -> float:
    """The error of predicting 0 on these trials' task. A frame without the column (from before it existed, or
    made by hand) or trials without a config are taken to be of a normalised task; of several tasks, the
    largest level is kept, so that "did not learn" is never claimed below a task's own level."""
    levels = trials[PREDICT_ZERO_COLUMN].dropna() if PREDICT_ZERO_COLUMN in trials else ()
    return float(max(levels)) if len(levels) else PREDICT_ZERO


def did_not_learn(errors, level: float = PREDICT_ZERO) -> bool:
    errors = np.asarray(errors, dtype=float)
    return len(errors) > 0 and bool(np.all(errors >= DID_NOT_LEARN * level))


@dataclass(frozen=True)
class Decision:
    """The rule on arrays: hypotheses on the leading axes, their comparisons on the last."""
    words: np.ndarray
    outcomes: np.ndarray
    tests: SeedTest
    family: Family


def decide(variant, reference, aligned, expect: str, smallest) -> Decision:
    """variant, reference [..., m, n]: per comparison, one error per seed (NaN: none); `aligned` [..., m]: the
    seeds sit at the same positions on both sides; `smallest` [...] or a number: the difference of interest.
    What `judge` applies to one hypothesis, and the calibration simulation to thousands."""
    tests = seed_test(variant, reference, aligned)
    judged = family(tests)
    sign = 1 if expect == EXPECTATIONS[0] else -1
    direction = np.sign(tests.difference)
    outcomes = np.where(judged.decided, np.where(direction > 0, EXPECTATIONS[0], EXPECTATIONS[1]), UNCLEAR)
    agree = judged.decided & (direction == sign)
    against = judged.decided & (direction == -sign)
    smallest = np.asarray(smallest, dtype=float)[..., None]
    short = ~judged.decided & ~(judged.detectable <= smallest)  # NaN detectable: not tested, so short
    words = np.select([against.any(axis=-1), agree.all(axis=-1), short.any(axis=-1)],
                      [CONTRADICTED, SUPPORTED, UNDERPOWERED], INCONCLUSIVE)
    return Decision(words, outcomes, tests, judged)


def reference_label(variants: Variants, settings: dict, hypothesis: Hypothesis) -> str:
    """The label of the variant with the hypothesis's reference values and `settings`' other values."""
    return variants.label({**settings, **{k: v for k, v in hypothesis.reference.items() if k in variants.keys}})


def _seed_values(trials: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """The trials' final errors, and their seeds where every trial names a distinct one (else None)."""
    errors = trials["error"].to_numpy(dtype=float)
    finished = ~np.isnan(errors)
    seeds = trials[SEED_KEY].to_numpy()[finished] if SEED_KEY in trials else None
    named = seeds is not None and not pd.isna(seeds).any() and len(set(seeds)) == len(seeds)
    return errors[finished], seeds if named else None


def _side_by_side(pairs: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(variant [1, m, n], reference [1, m, n], aligned [1, m]) from each comparison's two (errors, seeds):
    aligned on the union of the seeds where both sides name theirs, NaN where a side lacks a seed."""
    rows = []
    for (errors_v, seeds_v), (errors_r, seeds_r) in pairs:
        if seeds_v is None or seeds_r is None:
            rows.append((errors_v, errors_r, False))
            continue
        seeds = sorted(set(seeds_v) | set(seeds_r))
        at_v, at_r = dict(zip(seeds_v, errors_v)), dict(zip(seeds_r, errors_r))
        rows.append((np.array([at_v.get(s, np.nan) for s in seeds]), np.array([at_r.get(s, np.nan) for s in seeds]),
                     True))
    width = max(1, *(max(len(v), len(r)) for v, r, _ in rows))

    def padded(values):
        return np.concatenate([values, np.full(width - len(values), np.nan)])

    return (np.array([[padded(v) for v, _, _ in rows]]), np.array([[padded(r) for _, r, _ in rows]]),
            np.array([[aligned for _, _, aligned in rows]]))


def _listed(labels) -> str:
    return ", ".join(f"`{label}`" for label in labels)


def judge(errors: pd.DataFrame, variants: Variants, hypothesis: Hypothesis, *,
          smallest_effect: float = SMALLEST_EFFECT) -> Verdict:
    """`errors`: one row per trial with the variants' config columns and `error` (NaN: no final error), and
    `predict_zero` where known. The verdict and the comparisons it rests on, in the variants' display order.
    `smallest_effect`: the difference of interest, as a share of the task's predict-0 level."""
    labels = errors.apply(variants.label, axis=1)
    trials = {label: errors[labels == label] for label in variants.labels}
    settings = {variants.label(row): {k: row[k] for k in variants.keys} for _, row in errors.iterrows()}
    smallest = smallest_effect * predict_zero_level(errors)
    compared, pairs, missing = [], [], set()
    for label in (label for label in variants.labels if label in settings):
        reference = reference_label(variants, settings[label], hypothesis)
        if reference == label:
            continue
        values_r = _seed_values(trials.get(reference, errors.iloc[:0]))
        if not len(values_r[0]):
            missing.add(reference)
        elif did_not_learn(values_r[0], predict_zero_level(trials[reference])):
            return Verdict(INCONCLUSIVE, f"the reference `{reference}` did not learn", smallest=smallest)
        else:
            compared.append((label, reference))
            pairs.append((_seed_values(trials[label]), values_r))
    if missing or not pairs:
        shown = _listed(sorted(missing)) or "no variant to compare"
        return Verdict(INCONCLUSIVE, f"no reference to compare with ({shown})", smallest=smallest)
    decision = decide(*_side_by_side(pairs), hypothesis.expect, smallest)
    comparisons = tuple(_comparison(variant, reference, decision, i) for i, (variant, reference) in enumerate(compared))
    return _verdict(str(decision.words[0]), comparisons, hypothesis.expect, smallest)


def _comparison(variant: str, reference: str, decision: Decision, i: int) -> Comparison:
    tests, judged = decision.tests, decision.family
    testable = bool(tests.testable[0, i])
    test = ("paired" if tests.paired[0, i] else "Welch") if testable else f"fewer than {MIN_SEEDS} seeds a side"
    return Comparison(variant, reference, float(tests.difference[0, i]), float(judged.lo[0, i]),
                      float(judged.hi[0, i]), str(decision.outcomes[0, i]), float(judged.p[0, i]),
                      float(judged.detectable[0, i]), test, int(tests.seeds[0, i]), float(tests.spread[0, i]))


def _verdict(word: str, comparisons: tuple[Comparison, ...], expect: str, smallest: float) -> Verdict:
    opposite = EXPECTATIONS[1 - EXPECTATIONS.index(expect)]
    if word == CONTRADICTED:
        against = [c.variant for c in comparisons if c.outcome == opposite]
        return Verdict(word, f"{_listed(against)} {opposite} than the reference, against the prediction",
                       comparisons, smallest)
    agree = sum(c.outcome == expect for c in comparisons)
    reason = f"{agree} of {len(comparisons)} variants {expect} than their reference, as predicted"
    undecided = [c for c in comparisons if c.outcome == UNCLEAR]
    if word == INCONCLUSIVE:
        return Verdict(word, f"{reason}; for {_listed(c.variant for c in undecided)} no difference of "
                             f"{smallest:.3g} or more was found, though the seeds would have detected one",
                       comparisons, smallest)
    if word == SUPPORTED:
        return Verdict(word, reason, comparisons, smallest)
    short = [c for c in undecided if not c.detectable <= smallest]
    few = [c.variant for c in short if math.isnan(c.detectable)]
    weak = [c for c in short if not math.isnan(c.detectable)]
    parts = [f"{_listed(few)} {'has' if len(few) == 1 else 'have'} fewer than {MIN_SEEDS} seeds a side"] if few else []
    if weak:
        shown = ", ".join(f"`{c.variant}` {c.detectable:.3g}" for c in weak)
        parts.append(f"the seeds could not have detected a difference of {smallest:.3g} (smallest detectable: "
                     f"{shown})")
    needed = _seeds_needed(weak, smallest, len(comparisons)) if weak else None
    if needed is not None:
        parts.append(f"about {needed} seeds a variant would settle it")
    elif weak:
        parts.append(f"more than {MOST_SEEDS} seeds a variant would be needed")
    return Verdict(word, "; ".join([reason, *parts]), comparisons, smallest, needed)


def _seeds_needed(short: list[Comparison], smallest: float, m: int) -> int | None:
    """The seeds a side at which every short comparison detects, with probability POWER, a difference as large
    as its observed one or the smallest of interest, whichever is larger: it is then decided, or shown small.
    The spreads are the observed ones."""
    needed = [seeds_to_detect(c.spread, max(abs(c.difference), smallest), m, most=MOST_SEEDS) for c in short]
    return None if None in needed else max(needed)


def trend_decide(slopes, error: str) -> tuple[np.ndarray, np.ndarray]:
    """slopes [..., n]: one slope per seed (NaN: none). (words [...], two-sided p [...]): the same t-test as a
    paired comparison, of the slopes against 0, alone in its family."""
    slopes = np.asarray(slopes, dtype=float)[..., None, :]
    tests = seed_test(slopes, np.where(np.isnan(slopes), np.nan, 0.0), True)
    judged = family(tests)
    sign = -1 if error == TREND_DIRECTIONS[1] else 1
    direction = np.sign(tests.difference)
    words = np.select([judged.decided & (direction == sign), judged.decided & (direction == -sign)],
                      [HOLDS, AGAINST], NOT_SHOWN)
    return words[..., 0], judged.p[..., 0]


def trend_test(errors: pd.DataFrame, variants: Variants, hypothesis: Hypothesis) -> TrendTest | None:
    """The hypothesis's declared trend by TREND_RULE, or None when it declares none."""
    trend = hypothesis.trend
    if trend is None:
        return None
    short = short_key(trend.key)
    if trend.key not in variants.keys:
        return TrendTest(trend, NOT_SHOWN, math.nan, math.nan, 0, f"the trials have one value of {short}")
    if SEED_KEY not in errors:
        return TrendTest(trend, NOT_SHOWN, math.nan, math.nan, 0, "the trials name no seeds")
    others = [k for k in variants.keys if k != trend.key]
    finished = errors.dropna(subset=["error"])
    per_group = []
    for _, group in errors.groupby(others, dropna=False, sort=False) if others else [((), errors)]:
        order = sorted(group[trend.key].unique(), key=lambda v: trend_order(trend.key, v))
        if len(order) < 2:  # a group with one value of the key has no slope
            continue
        done = finished.loc[finished.index.intersection(group.index)]
        table = done.pivot_table(index=SEED_KEY, columns=trend.key, values="error", aggfunc="first")
        table = table.reindex(columns=order).dropna()
        rank = np.arange(len(order)) - (len(order) - 1) / 2
        per_group.append(pd.Series(table.to_numpy() @ rank / (rank @ rank), index=table.index))
    slopes = pd.concat(per_group, axis=1).dropna().mean(axis=1) if per_group else pd.Series(dtype=float)
    words, p = trend_decide(slopes.to_numpy(), trend.error)
    mean = float(slopes.mean()) if len(slopes) else math.nan
    reason = (f"mean slope {mean:+.3g} of the error per step along {short}, over {len(slopes)} seeds" if len(slopes)
              >= MIN_SEEDS else f"{len(slopes)} seed{'s' * (len(slopes) != 1)} with every value of {short}")
    return TrendTest(trend, str(words), float(p), mean, len(slopes), reason)


def describe_reference(hypothesis: Hypothesis) -> str:
    return ", ".join(format_setting(k, v) or f"{short_key(k)}={v}" for k, v in hypothesis.reference.items())


def hypotheses_of(record: SpaceRecord | None) -> dict[str, Hypothesis]:
    """The hypotheses a space record declares with a reference and an expectation, or a trend, by name."""
    found = {}
    for h in record.hypotheses if record is not None else ():
        expect = h.expect if h.reference and h.expect else None
        if expect or h.trend:
            found[h.name] = replace(h, reference=dict(h.reference) if expect else {}, expect=expect)
    return found
