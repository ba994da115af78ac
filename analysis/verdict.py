"""Whether the data support a hypothesis, by a rule stated in every report (RULE).

A hypothesis names a reference setting and the direction its other variants are predicted to differ in
(`reference: {model.n_last_tokens: -1}`, `expect: worse`). Each variant is compared with the reference
variant that shares its other settings (`L=2 LSTM` with `L=2`), on the final error at the last position,
one value per seed. A variant that stays at >= DID_NOT_LEARN of predict-0's error on every seed did not
learn: it gets no rank, and a reference that did not learn leaves the hypothesis inconclusive.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.stats import N_RESAMPLES, QUANTILES
from analysis.variants import Variants
from trainers.records import EXPECTATIONS, SpaceRecord, format_setting, short_key

PREDICT_ZERO = 1.0  # the normalised error of predicting 0: E[y^2] / d = 1 for y = w . x, w and x ~ N(0, I_d)
DID_NOT_LEARN = 0.9 * PREDICT_ZERO
MIN_SEEDS = 2
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
UNCLEAR = "no clear difference"
RULE = (f"Each variant is compared with its reference on the final error at the last position: a seed-level "
        f"bootstrap ({N_RESAMPLES} resamples of each side's seeds) of the difference of the means. The variant "
        f"is *worse* when the {QUANTILES[0]:.0%}-{QUANTILES[1]:.0%} band of the difference lies above 0, "
        f"*better* when it lies below 0, and otherwise shows *{UNCLEAR}*; fewer than {MIN_SEEDS} seeds on "
        f"either side is never a difference. The hypothesis is **{SUPPORTED}** when every variant differs in "
        f"the predicted direction, **{CONTRADICTED}** when any variant differs in the opposite one, and "
        f"**{INCONCLUSIVE}** otherwise, or when the reference did not learn (error >= {DID_NOT_LEARN:g} of "
        f"predict-0 on every seed).")


@dataclass(frozen=True)
class Hypothesis:
    name: str
    reference: dict  # dotted key -> the reference value
    expect: str  # how the other variants are predicted to compare with the reference: worse or better


@dataclass(frozen=True)
class Comparison:
    variant: str
    reference: str
    difference: float  # mean of the variant minus mean of the reference
    lo: float
    hi: float
    outcome: str  # worse, better or UNCLEAR


@dataclass(frozen=True)
class Verdict:
    word: str
    reason: str
    comparisons: tuple[Comparison, ...] = ()


def did_not_learn(errors) -> bool:
    errors = np.asarray(errors, dtype=float)
    return len(errors) > 0 and bool(np.all(errors >= DID_NOT_LEARN))


def bootstrap_difference(variant, reference, *, seed: int = 0) -> tuple[float, float, float]:
    """(mean difference, lo, hi): each side's seeds resampled with replacement, independently."""
    variant, reference = np.asarray(variant, dtype=float), np.asarray(reference, dtype=float)
    rng = np.random.default_rng(seed)
    means_v = rng.choice(variant, size=(N_RESAMPLES, len(variant))).mean(axis=1)
    means_r = rng.choice(reference, size=(N_RESAMPLES, len(reference))).mean(axis=1)
    lo, hi = np.quantile(means_v - means_r, QUANTILES)
    return float(variant.mean() - reference.mean()), float(lo), float(hi)


def compare(variant: str, reference: str, errors_v, errors_r) -> Comparison:
    difference, lo, hi = bootstrap_difference(errors_v, errors_r)
    enough = min(len(errors_v), len(errors_r)) >= MIN_SEEDS
    outcome = "worse" if enough and lo > 0 else "better" if enough and hi < 0 else UNCLEAR
    return Comparison(variant, reference, difference, lo, hi, outcome)


def _reference_label(variants: Variants, settings: dict, hypothesis: Hypothesis) -> str:
    """The label of the variant with the hypothesis's reference values and `settings`' other values."""
    return variants.label({**settings, **{k: v for k, v in hypothesis.reference.items() if k in variants.keys}})


def judge(errors: pd.DataFrame, variants: Variants, hypothesis: Hypothesis) -> Verdict:
    """`errors`: one row per trial with the variants' config columns and `error`. The verdict and the
    comparisons it rests on, in the variants' display order."""
    labels = errors.apply(variants.label, axis=1)
    by_label = {label: errors.loc[labels == label, "error"].dropna().to_numpy() for label in variants.labels}
    settings = {variants.label(row): {k: row[k] for k in variants.keys} for _, row in errors.iterrows()}
    comparisons, missing = [], set()
    for label in (label for label in variants.labels if label in settings):
        reference = _reference_label(variants, settings[label], hypothesis)
        if reference == label:
            continue
        if not len(by_label.get(reference, ())):
            missing.add(reference)
        elif did_not_learn(by_label[reference]):
            return Verdict(INCONCLUSIVE, f"the reference `{reference}` did not learn")
        elif len(by_label[label]):
            comparisons.append(compare(label, reference, by_label[label], by_label[reference]))
    if missing or not comparisons:
        shown = ", ".join(f"`{m}`" for m in sorted(missing)) or "no variant to compare"
        return Verdict(INCONCLUSIVE, f"no reference to compare with ({shown})", tuple(comparisons))
    opposite = EXPECTATIONS[1 - EXPECTATIONS.index(hypothesis.expect)]
    against = [c.variant for c in comparisons if c.outcome == opposite]
    agree = sum(c.outcome == hypothesis.expect for c in comparisons)
    if against:
        return Verdict(CONTRADICTED, f"{', '.join(f'`{v}`' for v in against)} {opposite} than the reference, "
                                     f"against the prediction", tuple(comparisons))
    word = SUPPORTED if agree == len(comparisons) else INCONCLUSIVE
    return Verdict(word, f"{agree} of {len(comparisons)} variants {hypothesis.expect} than their reference, "
                         f"as predicted", tuple(comparisons))


def describe_reference(hypothesis: Hypothesis) -> str:
    return ", ".join(format_setting(k, v) or f"{short_key(k)}={v}" for k, v in hypothesis.reference.items())


def hypotheses_of(record: SpaceRecord | None) -> dict[str, Hypothesis]:
    """The hypotheses a space record declares with a reference and an expectation, by name."""
    return {h.name: Hypothesis(h.name, dict(h.reference), h.expect)
            for h in (record.hypotheses if record is not None else ()) if h.reference and h.expect}
