"""A sequential study's verdicts: each hypothesis judged by the group-sequential rule (`analysis.sequential`) on
its seeds so far, taken in the order its design gives them, in place of the fixed-sample rule of
`analysis.verdict`; and which comparisons are still open, the ones the runner's next round gives seeds to.

A comparison's per-seed differences run over the design's seeds in order, up to the first seed that either side
lacks a final error for: a look needs every one of its seeds on both sides. As in the fixed rule, a reference
that did not learn leaves its hypothesis inconclusive before any test: two variants stuck at predict-0 differ by
nothing on every seed, which the rule would otherwise read as a certain equivalence.
"""
from __future__ import annotations

import math

import pandas as pd

from analysis.sequential import CAPPED, EQUIVALENT, OPEN, ComparisonState, Design, look
from analysis.variants import Variants
from analysis.verdict import (CONTRADICTED, INCONCLUSIVE, SUPPORTED, Comparison, Hypothesis, Verdict, did_not_learn,
                              predict_zero_level, reference_label)
from trainers.records import EXPECTATIONS, OVER_BUDGET, SEED_KEY, SpaceRecord, StudyRecord

UNDECIDED = "undecided so far"  # a hypothesis with a comparison still open: its next look decides more
AT_BUDGET = "undecided at the budget"  # a comparison still open when the runner stopped the study at its budget
NOT_TESTED = "not tested"  # a comparison with a seed that a side ran without a final error (it diverged)
DESIGN_KEYS = ("looks", "alpha", "spending", "smallest_effect", "paths")


def stopped_at_budget(record: SpaceRecord | None) -> bool:
    """Whether the runner stopped the sequential study of `record` at its budget: no look follows its last."""
    return record is not None and bool(record.looks) and record.looks[-1].ended == OVER_BUDGET


def design_of(study: StudyRecord) -> Design:
    return Design.from_record(study.model_dump(include=set(DESIGN_KEYS)))


def _by_seed(trials: pd.DataFrame) -> dict:
    """Each seed the trials ran, to its final error (NaN: the trial ended without one)."""
    return dict(zip(trials[SEED_KEY], trials["error"].astype(float))) if SEED_KEY in trials else {}


def differences(variant: pd.DataFrame, reference: pd.DataFrame, seeds: list) -> tuple[list[float], object]:
    """Variant minus reference, per seed of `seeds` in order, up to the first seed a side has not run yet; and the
    first seed both ran that a side has no final error for (a diverged trial), which ends the comparison's test,
    or None."""
    errors_v, errors_r = _by_seed(variant), _by_seed(reference)
    out = []
    for seed in seeds:
        if seed not in errors_v or seed not in errors_r:
            break
        if math.isnan(errors_v[seed]) or math.isnan(errors_r[seed]):
            return out, seed
        out.append(errors_v[seed] - errors_r[seed])
    return out, None


def judge_sequential(errors: pd.DataFrame, variants: Variants, hypothesis: Hypothesis,
                     study: StudyRecord, at_budget: bool = False) -> Verdict:
    """`errors` as `analysis.verdict.judge` takes them. The verdict by the sequential rule at the hypothesis'
    latest look; each comparison's `outcome` is its state (`analysis.sequential.STATES`) and its `test` says at
    which look it stands. `at_budget`: the runner stopped the study at its budget, so no look will follow."""
    design = design_of(study)
    level = predict_zero_level(errors)
    smallest = design.smallest_effect * level
    labels = errors.apply(variants.label, axis=1) if len(errors) else pd.Series(dtype=str)
    settings = {variants.label(row): {k: row[k] for k in variants.keys} for _, row in errors.iterrows()}
    compared, missing = {}, []
    for label in (label for label in variants.labels if label in settings):
        reference = reference_label(variants, settings[label], hypothesis)
        if reference == label:
            continue
        own_r = errors[labels == reference]
        finished_r = own_r["error"].dropna()
        if finished_r.empty:
            missing.append(reference)
        elif did_not_learn(finished_r, predict_zero_level(own_r)):
            return Verdict(INCONCLUSIVE, f"the reference `{reference}` did not learn, so no variant is tested",
                           smallest=smallest)
        else:
            compared[(label, reference)] = differences(errors[labels == label], own_r, study.seeds)
    if missing or not compared:
        shown = ", ".join(f"`{label}`" for label in sorted(set(missing))) or "no variant to compare"
        return Verdict(INCONCLUSIVE, f"no reference to compare with ({shown})", smallest=smallest)
    # a comparison stopped by a seed without an error is left out of the looks, so that the others go on; Holm's
    # m counts the comparisons tested, as the fixed rule's does
    tested = {variant: values for (variant, _), (values, stuck) in compared.items() if stuck is None}
    states = dict(zip(tested, look(tested, design, level))) if tested else {}
    comparisons = tuple(_comparison(variant, reference, states[variant], design) if stuck is None
                        else _not_tested(variant, reference, values, stuck)
                        for (variant, reference), (values, stuck) in compared.items())
    return _verdict(comparisons, hypothesis.expect, smallest, design, at_budget)


def _not_tested(variant: str, reference: str, values: list[float], seed) -> Comparison:
    return Comparison(variant, reference, math.nan, math.nan, math.nan, NOT_TESTED,
                      test=f"not tested: seed {seed} has no final error on one side", seeds=len(values))


def _comparison(variant: str, reference: str, state: ComparisonState, design: Design) -> Comparison:
    where = (f"look {state.look + 1} of {len(design.looks)}" if state.look is not None
             else f"before the first look, which needs {design.looks[0]} seeds a side")
    return Comparison(variant, reference, state.difference, state.lo, state.hi, state.state, state.p,
                      test=f"paired, sequential, {where}", seeds=state.seeds)


def _verdict(comparisons: tuple[Comparison, ...], expect: str, smallest: float, design: Design,
             at_budget: bool) -> Verdict:
    opposite = EXPECTATIONS[1 - EXPECTATIONS.index(expect)]

    def named(outcome):
        return ", ".join(f"`{c.variant}`" for c in comparisons if c.outcome == outcome)

    if any(c.outcome == opposite for c in comparisons):
        return Verdict(CONTRADICTED, f"{named(opposite)} {opposite} than the reference, against the prediction",
                       comparisons, smallest)
    agree = sum(c.outcome == expect for c in comparisons)
    parts = [f"{agree} of {len(comparisons)} variants decided {expect} than their reference, as predicted"]
    if agree == len(comparisons):
        return Verdict(SUPPORTED, parts[0], comparisons, smallest)
    if any(c.outcome == EQUIVALENT for c in comparisons):
        parts.append(f"{named(EQUIVALENT)}: no difference of {smallest:.3g} or more")
    if any(c.outcome == CAPPED for c in comparisons):
        largest = max(max(abs(c.lo), abs(c.hi)) for c in comparisons if c.outcome == CAPPED)
        parts.append(f"{named(CAPPED)} {CAPPED} ({design.looks[-1]} seeds), with differences up to {largest:.3g} "
                     "still possible")
    if any(c.outcome == NOT_TESTED for c in comparisons):
        parts.append(f"{named(NOT_TESTED)} {NOT_TESTED}: a seed without a final error")
    if any(c.outcome == OPEN for c in comparisons) and at_budget:
        parts.append(f"{named(OPEN)} {AT_BUDGET}")
    elif any(c.outcome == OPEN for c in comparisons):
        parts.append(f"{named(OPEN)} open, for the next look")
        return Verdict(UNDECIDED, "; ".join(parts), comparisons, smallest)
    return Verdict(INCONCLUSIVE, "; ".join(parts), comparisons, smallest)


def open_comparisons(verdict: Verdict | None) -> list[Comparison]:
    """The comparisons of a sequential verdict that the next round gives seeds to."""
    return [c for c in (verdict.comparisons if verdict is not None else ()) if c.outcome == OPEN]


def undecided(verdict: Verdict | None) -> bool:
    """Whether a comparison of a sequential verdict is left without a decision: open, at the cap, or not tested."""
    return any(c.outcome in (OPEN, CAPPED, NOT_TESTED) for c in (verdict.comparisons if verdict is not None else ()))


def largest_effect(comparison: Comparison) -> float:
    """The largest true difference, either way, that a comparison's repeated interval still allows."""
    return max(abs(comparison.lo), abs(comparison.hi)) if not math.isnan(comparison.lo) else math.nan

