"""The verdict rule on synthetic per-trial errors."""
import numpy as np
import pandas as pd
import pytest

from analysis.variants import variants_of
from analysis.verdict import (CONTRADICTED, INCONCLUSIVE, SUPPORTED, UNCLEAR, Hypothesis, bootstrap_difference,
                              did_not_learn, hypotheses_of, judge)
from helpers.frames import errors_frame
from trainers.records import SpaceRecord

MASKS = Hypothesis("information_flow", {"model.n_last_tokens": -1}, "worse")
LAYERS = Hypothesis("looped_n_layers", {"model.n_layer": 1}, "better")
LSTM = Hypothesis("looped_lstm", {"model.use_lstm_layer": False}, "worse")


def verdict_of(key, errors, hypothesis):
    frame = errors_frame(key, errors)
    return judge(frame, variants_of(frame, "h"), hypothesis)


@pytest.mark.parametrize("key, errors, hypothesis, word, outcomes", [
    # every mask clearly worse than all tokens, on every seed
    ("model.n_last_tokens", {-1: [0.10, 0.12], 8: [0.70, 0.75], 23: [0.20, 0.22]}, MASKS, SUPPORTED,
     {"n_last_tokens=8": "worse", "n_last_tokens=23": "worse"}),
    # one mask does better than all tokens on both seeds: against the prediction
    ("model.n_last_tokens", {-1: [0.30, 0.32], 8: [0.70, 0.75], 23: [0.10, 0.12]}, MASKS, CONTRADICTED,
     {"n_last_tokens=8": "worse", "n_last_tokens=23": "better"}),
    # the seeds overlap: no clear difference, so no verdict either way
    ("model.n_last_tokens", {-1: [0.10, 0.30], 8: [0.70, 0.75], 23: [0.12, 0.28]}, MASKS, INCONCLUSIVE,
     {"n_last_tokens=8": "worse", "n_last_tokens=23": UNCLEAR}),
    # more layers better, as predicted
    ("model.n_layer", {1: [0.30, 0.35], 2: [0.10, 0.12], 3: [0.05, 0.06]}, LAYERS, SUPPORTED,
     {"L=2": "better", "L=3": "better"}),
    # one seed a side is never a difference, however far apart
    ("model.n_layer", {1: [0.30], 2: [0.10]}, LAYERS, INCONCLUSIVE, {"L=2": UNCLEAR}),
])
def test_verdict_rule(key, errors, hypothesis, word, outcomes):
    verdict = verdict_of(key, errors, hypothesis)
    assert verdict.word == word
    assert {c.variant: c.outcome for c in verdict.comparisons} == outcomes


def test_a_reference_that_did_not_learn_leaves_the_hypothesis_inconclusive():
    verdict = verdict_of("model.n_layer", {1: [0.95, 0.97], 2: [0.10, 0.12]}, LAYERS)
    assert verdict.word == INCONCLUSIVE and verdict.comparisons == ()
    assert verdict.reason == "the reference `L=1` did not learn"


def test_a_variant_that_did_not_learn_is_still_compared():
    # LSTM L=1 never left the plateau while the transformer learned: that is a finding for the prediction
    verdict = verdict_of("model.n_layer", {1: [0.30, 0.32], 2: [0.95, 0.99]}, LAYERS)
    assert verdict.word == CONTRADICTED and [c.outcome for c in verdict.comparisons] == ["worse"]


def test_lstm_variants_compare_with_the_transformer_of_the_same_depth():
    rows = [{"hypotheses": "h", "model.n_layer": n, "model.use_lstm_layer": lstm, "training.seed": s, "error": e}
            for n, lstm, values in [(1, False, [0.2, 0.22]), (2, False, [0.1, 0.11]), (1, True, [0.5, 0.52]),
                                    (2, True, [0.05, 0.06])]
            for s, e in enumerate(values)]
    frame = pd.DataFrame(rows)
    verdict = judge(frame, variants_of(frame, "h"), LSTM)
    pairs = {c.variant: (c.reference, c.outcome) for c in verdict.comparisons}
    assert pairs == {"L=1 LSTM": ("L=1", "worse"), "L=2 LSTM": ("L=2", "better")}
    assert verdict.word == CONTRADICTED
    assert verdict.comparisons[0].difference == pytest.approx(0.51 - 0.21)


def test_missing_reference_is_inconclusive():
    verdict = verdict_of("model.n_last_tokens", {8: [0.7, 0.75], 23: [0.2, 0.22]}, MASKS)
    assert verdict.word == INCONCLUSIVE and "`n_last_tokens=all`" in verdict.reason


def test_bootstrap_difference_with_two_seeds_spans_the_extreme_seed_differences():
    # two seeds a side: each resampled mean is a seed's value with probability 1/4, so the extreme differences
    # (variant's lowest minus reference's highest, and the reverse) each carry 1/16 > 5% of the resamples and
    # are the band's ends: the band excludes 0 exactly when every seed of one side beats every seed of the other
    difference, lo, hi = bootstrap_difference([0.5, 0.7], [0.2, 0.3])
    assert difference == pytest.approx(0.35)
    assert (lo, hi) == pytest.approx((0.5 - 0.3, 0.7 - 0.2))
    difference, lo, hi = bootstrap_difference([0.25, 0.7], [0.2, 0.3])
    assert lo == pytest.approx(-0.05) and hi == pytest.approx(0.5)


def test_bootstrap_difference_band_narrows_with_seeds():
    rng = np.random.default_rng(1)
    variant, reference = 0.5 + 0.05 * rng.standard_normal(40), 0.4 + 0.05 * rng.standard_normal(40)
    difference, lo, hi = bootstrap_difference(variant, reference)
    # the standard error of a difference of two means of 40 values with sd 0.05 is 0.05 * sqrt(2 / 40) = 0.011;
    # a 5-95% band is about +-1.645 of it
    assert hi - lo == pytest.approx(2 * 1.645 * 0.05 * np.sqrt(2 / 40), rel=0.25)
    assert lo < difference < hi


@pytest.mark.parametrize("errors, expected", [
    ([0.95, 0.91], True), ([0.95, 0.5], False), ([0.9], True), ([0.899], False), ([], False)])
def test_did_not_learn_needs_every_seed_at_the_plateau(errors, expected):
    assert did_not_learn(errors) is expected


def test_hypotheses_come_from_the_space_record():
    record = {"hypotheses": [
        {"name": "information_flow", "reference": {"model.n_last_tokens": -1}, "expect": "worse"},
        {"name": "free", "description": "no prediction", "reference": {}, "expect": None}]}
    assert hypotheses_of(SpaceRecord.model_validate(record)) == {"information_flow": MASKS}
    assert hypotheses_of(SpaceRecord()) == {}
    assert hypotheses_of(None) == {}
