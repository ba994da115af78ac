"""The verdict rule on synthetic per-trial errors (its calibration is tests/test_calibration.py's), and the trend
rule."""
import math

import numpy as np
import pandas as pd
import pytest

from analysis.significance import seeds_to_detect, t_quantile
from analysis.variants import variants_of
from analysis.verdict import (AGAINST, CONTRADICTED, HOLDS, INCONCLUSIVE, NOT_SHOWN, SUPPORTED, UNCLEAR, UNDERPOWERED,
                              Hypothesis, Trend, did_not_learn, hypotheses_of, judge, predict_zero_level, trend_test)
from helpers.frames import errors_frame
from trainers.records import SpaceRecord, trend_order

MASKS = Hypothesis("information_flow", {"model.n_last_tokens": -1}, "worse")
LAYERS = Hypothesis("looped_n_layers", {"model.n_layer": 1}, "better")
LSTM = Hypothesis("looped_lstm", {"model.use_lstm_layer": False}, "worse")
DECREASING = Hypothesis("information_flow", {}, None, Trend("model.n_last_tokens", "decreasing"))


def verdict_of(key, errors, hypothesis, **columns):
    frame = errors_frame(key, errors, **columns)
    return judge(frame, variants_of(frame, "h"), hypothesis)


@pytest.mark.parametrize("key, errors, hypothesis, word, outcomes", [
    # every mask worse than all tokens on every seed, by far more than the seeds vary
    ("model.n_last_tokens", {-1: [0.10, 0.12, 0.11], 8: [0.70, 0.75, 0.72], 23: [0.40, 0.43, 0.41]}, MASKS,
     SUPPORTED, {"n_last_tokens=8": "worse", "n_last_tokens=23": "worse"}),
    # one mask does better than all tokens on every seed: against the prediction
    ("model.n_last_tokens", {-1: [0.30, 0.32, 0.31], 8: [0.70, 0.75, 0.72], 23: [0.10, 0.12, 0.11]}, MASKS,
     CONTRADICTED, {"n_last_tokens=8": "worse", "n_last_tokens=23": "better"}),
    # 23 is within a few thousandths of all tokens, and its seeds could have shown a difference of 0.1
    ("model.n_last_tokens", {-1: [0.10, 0.12, 0.11], 8: [0.70, 0.75, 0.72], 23: [0.105, 0.118, 0.112]}, MASKS,
     INCONCLUSIVE, {"n_last_tokens=8": "worse", "n_last_tokens=23": UNCLEAR}),
    # 23's seeds spread so widely that a difference of 0.1 would have gone unseen
    ("model.n_last_tokens", {-1: [0.10, 0.30, 0.20], 8: [0.70, 0.95, 0.80], 23: [0.15, 0.45, 0.20]}, MASKS,
     UNDERPOWERED, {"n_last_tokens=8": "worse", "n_last_tokens=23": UNCLEAR}),
    # more layers better on every seed, as predicted
    ("model.n_layer", {1: [0.30, 0.35, 0.32], 2: [0.10, 0.12, 0.11], 3: [0.05, 0.06, 0.055]}, LAYERS, SUPPORTED,
     {"L=2": "better", "L=3": "better"}),
    # two seeds a side: t has 1 degree of freedom and must pass 25.5 at 5% / 2, which differences that vary by a
    # tenth of their size between the seeds do not reach, however clear the seeds look
    ("model.n_last_tokens", {-1: [0.10, 0.20], 8: [0.70, 0.75], 23: [0.40, 0.43]}, MASKS, UNDERPOWERED,
     {"n_last_tokens=8": UNCLEAR, "n_last_tokens=23": UNCLEAR}),
    # one seed a side is never tested
    ("model.n_layer", {1: [0.30], 2: [0.10]}, LAYERS, UNDERPOWERED, {"L=2": UNCLEAR}),
])
def test_verdict_rule(key, errors, hypothesis, word, outcomes):
    verdict = verdict_of(key, errors, hypothesis)
    assert verdict.word == word
    assert {c.variant: c.outcome for c in verdict.comparisons} == outcomes


def test_pairing_by_seed_and_welch_where_a_seed_is_missing():
    # seeds in shuffled rows: the pairs are made by seed, not by row order
    frame = errors_frame("model.n_layer", {1: [0.20, 0.30, 0.25], 2: [0.50, 0.70, 0.60], 3: [0.50, 0.70, None]})
    frame = frame.sample(frac=1, random_state=3)
    verdict = judge(frame, variants_of(frame, "h"), LAYERS)
    paired, welch = verdict.comparisons
    # L=2: per-seed differences 0.3, 0.4, 0.35: mean 0.35, sd 0.05, t = 0.35 / (0.05 / sqrt 3) on 2 df
    t = 0.35 / (0.05 / math.sqrt(3))
    assert (paired.test, paired.seeds, paired.difference) == ("paired", 3, pytest.approx(0.35))
    assert paired.p == pytest.approx(1 - t / math.sqrt(2 + t * t))  # t's two-sided tail, closed form at 2 df
    assert paired.spread == pytest.approx(0.05)
    # L=3 lacks seed 2: Welch's statistic on all of both sides' seeds, 2 - 1 degrees of freedom (Cauchy)
    se = math.sqrt(0.02 / 2 + 0.0025 / 3)
    assert (welch.test, welch.seeds, welch.difference) == ("Welch", 2, pytest.approx(0.6 - 0.25))
    assert welch.p == pytest.approx(1 - 2 * math.atan(0.35 / se) / math.pi)
    assert welch.spread == pytest.approx(math.sqrt(0.02 + 0.0025))


def test_trials_without_seeds_are_compared_unpaired():
    frame = errors_frame("model.n_layer", {1: [0.20, 0.30, 0.25], 2: [0.50, 0.70, 0.60]}).drop(columns="training.seed")
    (comparison,) = judge(frame, variants_of(frame, "h"), LAYERS).comparisons
    assert comparison.test == "Welch" and comparison.spread == pytest.approx(math.sqrt(0.0025 + 0.01))


@pytest.mark.parametrize("variant, reference, outcome, p", [
    # identical values on both sides: no spread, no difference, and no division by zero
    ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5], UNCLEAR, 1.0),
    # no spread on either side, yet different: the difference is certain
    ([0.5, 0.5, 0.5], [0.2, 0.2, 0.2], "worse", 0.0),
])
def test_no_spread_on_either_side(variant, reference, outcome, p):
    verdict = verdict_of("model.n_last_tokens", {-1: reference, 8: variant}, MASKS)
    (comparison,) = verdict.comparisons
    assert (comparison.outcome, comparison.p) == (outcome, p)
    assert comparison.lo == comparison.hi == pytest.approx(comparison.difference) and comparison.detectable == 0


def test_holm_decides_what_the_simultaneous_intervals_leave_open():
    # four masks 0.3 worse on average, paired differences 0.3 -+ 0.01, 0.035, 0.075 and 0.11 on 3 seeds: p of
    # 0.0004, 0.0045, 0.020 and 0.042. Bonferroni (0.05/4 each) decides the first two; Holm steps down to
    # 0.05/3, 0.05/2 and 0.05/1 and decides all four
    errors = {-1: [0.20, 0.30, 0.25], 8: [0.49, 0.61, 0.55], 10: [0.465, 0.635, 0.55], 23: [0.425, 0.675, 0.55],
              31: [0.39, 0.71, 0.55]}
    verdict = verdict_of("model.n_last_tokens", errors, MASKS)
    ps = [c.p for c in verdict.comparisons]  # in display order: 8, 10, 23, 31
    assert ps == pytest.approx([0.00037, 0.0045, 0.0202, 0.042], abs=5e-4)
    assert verdict.word == SUPPORTED and all(c.outcome == "worse" for c in verdict.comparisons)
    # each interval is difference +- t(0.05 / 4, 2) se: excluding 0 is p < 0.05 / 4, a subset of Holm's decisions
    critical = t_quantile(0.05 / 4, 2)
    for c in verdict.comparisons:
        se = (c.hi - c.lo) / (2 * critical)
        assert c.lo == pytest.approx(c.difference - critical * se)
        assert (c.lo > 0) == (c.p < 0.05 / 4)


def test_the_intervals_widen_with_the_family():
    alone = verdict_of("model.n_last_tokens", {-1: [0.20, 0.30, 0.25], 8: [0.50, 0.62, 0.55]}, MASKS).comparisons[0]
    among = verdict_of("model.n_last_tokens", {-1: [0.20, 0.30, 0.25], 8: [0.50, 0.62, 0.55], 10: [0.2, 0.3, 0.3],
                                                23: [0.2, 0.3, 0.3], 31: [0.2, 0.3, 0.3]}, MASKS).comparisons[0]
    assert alone.difference == among.difference and alone.p == among.p
    assert (among.hi - among.lo) / (alone.hi - alone.lo) == pytest.approx(t_quantile(0.05 / 4, 2) / t_quantile(0.05, 2))
    assert among.detectable > alone.detectable


def test_an_interval_that_excludes_zero_is_always_a_decided_comparison():
    rng = np.random.default_rng(0)
    for _ in range(25):
        seeds = int(rng.integers(2, 6))
        errors = {value: list(0.2 + rng.normal(shift, rng.uniform(0.005, 0.1), seeds))
                  for value, shift in ((-1, 0.0), (8, rng.uniform(0, 0.3)), (10, rng.uniform(-0.1, 0.3)),
                                       (23, rng.uniform(0, 0.1)))}
        for c in verdict_of("model.n_last_tokens", errors, MASKS).comparisons:
            if c.lo > 0 or c.hi < 0:
                assert c.outcome != UNCLEAR


def test_underpowered_says_how_many_seeds_would_settle_it():
    errors = {-1: [0.10, 0.30, 0.20], 8: [0.70, 0.95, 0.80], 23: [0.15, 0.45, 0.20]}
    verdict = verdict_of("model.n_last_tokens", errors, MASKS)
    short = verdict.comparisons[1]
    assert short.variant == "n_last_tokens=23" and short.detectable > 0.1
    # the seeds at which a difference as large as 23's (0.067) or the smallest of interest (0.1) is detected
    needed = seeds_to_detect(short.spread, max(abs(short.difference), 0.1), 2)
    assert verdict.seeds_needed == needed and 3 < needed < 100
    assert verdict.reason == (f"1 of 2 variants worse than their reference, as predicted; the seeds could not have "
                              f"detected a difference of 0.1 (smallest detectable: `n_last_tokens=23` "
                              f"{short.detectable:.3g}); about {needed} seeds a variant would settle it")
    one_seed = verdict_of("model.n_layer", {1: [0.30], 2: [0.10]}, LAYERS)
    assert one_seed.seeds_needed is None and one_seed.reason.endswith("`L=2` has fewer than 2 seeds a side")


def test_inconclusive_says_the_difference_is_small():
    verdict = verdict_of("model.n_last_tokens", {-1: [0.10, 0.12, 0.11], 23: [0.105, 0.118, 0.112]}, MASKS)
    assert verdict.word == INCONCLUSIVE and verdict.comparisons[0].detectable <= 0.1
    assert verdict.reason == ("0 of 1 variants worse than their reference, as predicted; for `n_last_tokens=23` no "
                              "difference of 0.1 or more was found, though the seeds would have detected one")


def test_the_task_sets_predict_zero_and_the_smallest_difference():
    # relu_2nn_regression at d = 4: predicting 0 scores 4, so 0.95 is a model that learned most of the way
    errors = {1: [0.95, 0.97, 0.96], 2: [0.50, 0.52, 0.51]}
    relu = verdict_of("model.n_layer", errors, LAYERS, predict_zero=4.0)
    assert relu.word == SUPPORTED and relu.smallest == pytest.approx(0.4)
    normalised = verdict_of("model.n_layer", errors, LAYERS, predict_zero=1.0)
    assert normalised.word == INCONCLUSIVE and normalised.reason == "the reference `L=1` did not learn"
    assert predict_zero_level(errors_frame("model.n_layer", errors)) == 1.0


def test_a_reference_that_did_not_learn_leaves_the_hypothesis_inconclusive():
    verdict = verdict_of("model.n_layer", {1: [0.95, 0.97, 0.96], 2: [0.10, 0.12, 0.11]}, LAYERS)
    assert verdict.word == INCONCLUSIVE and verdict.comparisons == ()
    assert verdict.reason == "the reference `L=1` did not learn"


def test_a_variant_that_did_not_learn_is_still_compared():
    # L=2 never left the plateau while L=1 learned: that is a finding against the prediction
    verdict = verdict_of("model.n_layer", {1: [0.30, 0.32, 0.31], 2: [0.95, 0.99, 0.97]}, LAYERS)
    assert verdict.word == CONTRADICTED and [c.outcome for c in verdict.comparisons] == ["worse"]


def test_a_variant_without_a_finished_trial_is_not_tested():
    verdict = verdict_of("model.n_layer", {1: [0.30, 0.32, 0.31], 2: [0.10, 0.11, 0.12], 3: [None, None, None]},
                         LAYERS)
    assert verdict.word == UNDERPOWERED
    assert [(c.variant, c.outcome, c.seeds) for c in verdict.comparisons] == [("L=2", "better", 3),
                                                                             ("L=3", UNCLEAR, 0)]


def test_lstm_variants_compare_with_the_transformer_of_the_same_depth():
    rows = [{"hypotheses": "h", "model.n_layer": n, "model.use_lstm_layer": lstm, "training.seed": s, "error": e}
            for n, lstm, values in [(1, False, [0.2, 0.22, 0.21]), (2, False, [0.1, 0.11, 0.105]),
                                    (1, True, [0.5, 0.52, 0.51]), (2, True, [0.05, 0.06, 0.055])]
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


# docs/PILOTS.md: the shipped quick study's REPORT.md, on the evaluation's fresh prompts, two seeds
QUICK_STUDY = {
    "information_flow": ("model.n_last_tokens", MASKS, {-1: [0.203, 0.119], 31: [0.179, 0.123], 23: [0.200, 0.200],
                                                        10: [0.780, 0.774], 8: [0.775, 0.781]}),
    "looped_n_layers": ("model.n_layer", LAYERS, {1: [0.203, 0.119], 2: [0.052, 0.080], 3: [0.029, 0.042]}),
}


def test_the_quick_study_at_two_seeds_decides_nothing():
    key, hypothesis, errors = QUICK_STUDY["information_flow"]
    masks = verdict_of(key, errors, hypothesis)
    assert masks.word == UNDERPOWERED and all(c.outcome == UNCLEAR for c in masks.comparisons)
    # the p of about 0.04 for mask 8 against all tokens, before any correction: far above 0.05 / 4
    assert {c.variant: round(c.p, 3) for c in masks.comparisons}["n_last_tokens=8"] == 0.046
    key, hypothesis, errors = QUICK_STUDY["looped_n_layers"]
    assert verdict_of(key, errors, hypothesis).word == UNDERPOWERED
    trend = trend_test(errors_frame("model.n_last_tokens", QUICK_STUDY["information_flow"][2]),
                       variants_of(errors_frame("model.n_last_tokens", QUICK_STUDY["information_flow"][2]), "h"),
                       DECREASING)
    assert trend.word == HOLDS and trend.seeds == 2


@pytest.mark.parametrize("errors, word, seeds", [
    # all tokens (-1) sorts last: the error falls from the early masks to all tokens
    ({8: [0.78, 0.77, 0.79], 10: [0.70, 0.72, 0.71], 23: [0.20, 0.25, 0.22], -1: [0.15, 0.12, 0.14]}, HOLDS, 3),
    ({8: [0.10, 0.12, 0.11], 10: [0.30, 0.33, 0.31], 23: [0.50, 0.52, 0.55], -1: [0.70, 0.73, 0.72]}, AGAINST, 3),
    ({8: [0.20, 0.10, 0.25], 10: [0.15, 0.22, 0.10], 23: [0.21, 0.12, 0.16], -1: [0.12, 0.24, 0.18]}, NOT_SHOWN, 3),
    # a seed without every variant is left out of the trend
    ({8: [0.78, 0.77, 0.79], 10: [0.70, 0.72, None], 23: [0.20, 0.25, 0.22], -1: [0.15, 0.12, 0.14]}, HOLDS, 2),
    ({8: [0.78, None], 10: [0.70, 0.72], -1: [0.15, 0.12]}, NOT_SHOWN, 1),
])
def test_trend_rule(errors, word, seeds):
    frame = errors_frame("model.n_last_tokens", errors)
    result = trend_test(frame, variants_of(frame, "h"), DECREASING)
    assert (result.word, result.seeds) == (word, seeds)


def test_trend_slope_is_per_seed_against_the_rank():
    errors = {8: [0.9, 0.8], 10: [0.6, 0.5], 23: [0.4, 0.45], 31: [0.3, 0.2], -1: [0.1, 0.15]}
    frame = errors_frame("model.n_last_tokens", errors)
    result = trend_test(frame, variants_of(frame, "h"), DECREASING)
    rank = np.arange(5) - 2
    slopes = [rank @ [errors[n][s] for n in (8, 10, 23, 31, -1)] / 10 for s in (0, 1)]
    assert result.slope == pytest.approx(np.mean(slopes))
    t = abs(np.mean(slopes)) / (np.std(slopes, ddof=1) / math.sqrt(2))
    assert result.p == pytest.approx(1 - 2 * math.atan(t) / math.pi)
    assert result.reason == f"mean slope {np.mean(slopes):+.3g} of the error per step along n_last_tokens, over 2 seeds"


def test_trend_within_groups_of_the_other_keys():
    # more layers help the transformer and the LSTM alike, by different amounts: each seed's slope is the mean
    rows = [{"hypotheses": "h", "model.n_layer": n, "model.use_lstm_layer": lstm, "training.seed": s,
             "error": base - step * n + 0.01 * s * (n == 2)}
            for lstm, base, step in ((False, 0.5, 0.1), (True, 0.9, 0.2)) for n in (1, 2, 3) for s in range(3)]
    frame = pd.DataFrame(rows)
    result = trend_test(frame, variants_of(frame, "h"), Hypothesis("h", {}, None, Trend("model.n_layer", "decreasing")))
    assert result.word == HOLDS and result.seeds == 3 and result.slope == pytest.approx(-0.15)


def test_trend_order():
    assert sorted([-1, 31, 8], key=lambda v: trend_order("model.n_last_tokens", v)) == [8, 31, -1]
    assert sorted([3, -1, 2], key=lambda v: trend_order("model.n_layer", v)) == [-1, 2, 3]
    assert trend_order("model.use_lstm_layer", True) == 1


@pytest.mark.parametrize("errors, level, expected", [
    ([0.95, 0.91], 1.0, True), ([0.95, 0.5], 1.0, False), ([0.9], 1.0, True), ([0.899], 1.0, False),
    ([], 1.0, False), ([3.7, 3.65], 4.0, True), ([3.5, 3.9], 4.0, False), ([0.95, 0.97], 4.0, False)])
def test_did_not_learn_needs_every_seed_at_the_plateau(errors, level, expected):
    assert did_not_learn(errors, level) is expected


def test_hypotheses_come_from_the_space_record():
    record = {"hypotheses": [
        {"name": "information_flow", "reference": {"model.n_last_tokens": -1}, "expect": "worse", "trend": None},
        {"name": "ordered", "reference": {}, "expect": None,
         "trend": {"key": "model.n_last_tokens", "error": "decreasing"}},
        {"name": "free", "description": "no prediction", "reference": {}, "expect": None}]}
    assert hypotheses_of(SpaceRecord.model_validate(record)) == {"information_flow": MASKS, "ordered": Hypothesis(
        "ordered", {}, None, Trend("model.n_last_tokens", "decreasing"))}
    assert hypotheses_of(SpaceRecord()) == {}
    assert hypotheses_of(None) == {}
