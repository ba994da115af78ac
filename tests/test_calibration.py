"""The verdict's rule, calibrated by simulation: with no true difference it rarely decides, with a large one at
the shipped seed count it nearly always does. The simulation is benchmarks/calibration.py's (`python -m
benchmarks.calibration` prints its tables); each cell judges 2000 synthetic hypotheses with a fixed seed.
"""
import math

import numpy as np
import pandas as pd
import pytest

from analysis.significance import ALPHA, holm, regularised_beta, seeds_to_detect, t_quantile, t_two_sided
from analysis.variants import variants_of
from analysis.verdict import Hypothesis, decide, judge
from benchmarks.calibration import (NULL_SCENARIOS, POWER_SCENARIOS, QUICK_MEAN, SEED_COUNTS,
                                    TREND_MEANS, Scenario, decided_rate, single_test_size, synthetic, trend_rate)
from tune_looped.space import load_space

# the promise is ALPHA; 0.07 leaves room for the simulation's own noise (2000 hypotheses: +-0.005 at 0.05)
FALSE_ALARMS = 0.07
POWER = 0.9


def shipped_quick_seeds() -> int:
    return len({t.values["training.seed"] for t in load_space("hypotheses", quick=True).trials})


@pytest.mark.parametrize("seeds", SEED_COUNTS)
@pytest.mark.parametrize("scenario", NULL_SCENARIOS, ids=lambda s: s.name)
def test_no_true_difference_is_rarely_decided(scenario, seeds):
    decided, _ = decided_rate(scenario, seeds)
    assert decided <= FALSE_ALARMS


@pytest.mark.parametrize("scenario", POWER_SCENARIOS[:2], ids=lambda s: s.name)
def test_a_large_effect_is_found_at_the_shipped_seed_count(scenario):
    assert shipped_quick_seeds() == 3
    _, supported = decided_rate(scenario, shipped_quick_seeds())
    assert supported >= POWER


def test_two_seeds_cannot_find_a_large_effect():
    # why --quick runs 3 seeds: at 2 the test has 1 degree of freedom, and t(1) at 5%/4 is 51
    _, supported = decided_rate(POWER_SCENARIOS[0], 2)
    assert supported < 0.5


@pytest.mark.parametrize("seeds", SEED_COUNTS)
@pytest.mark.parametrize("shared", [0.0, 0.9])
def test_no_trend_is_rarely_shown(seeds, shared):
    shown, _ = trend_rate((QUICK_MEAN,) * len(TREND_MEANS), seeds, shared=shared)
    assert shown <= FALSE_ALARMS


def test_the_quick_study_trend_is_found_at_the_shipped_seed_count():
    _, holds = trend_rate(TREND_MEANS, shipped_quick_seeds())
    assert holds >= POWER


@pytest.mark.parametrize("n_variant, n_reference, ratio", [
    (2, 2, 15.0), (3, 3, 15.0), (5, 5, 15.0), (2, 5, 4.0), (5, 2, 0.25), (2, 5, 15.0), (3, 2, 1 / 15), (3, 3, 1.0)])
def test_the_unpaired_test_is_never_liberal(n_variant, n_reference, ratio):
    # Welch's statistic on the smaller side's seeds - 1 degrees of freedom: at most the level, whatever the
    # ratio of the spreads, at the Bonferroni level of 4 comparisons, where Satterthwaite's degrees of freedom
    # reject up to 5 times too often (the first cases are the worst for them)
    _, rule = single_test_size(n_variant, n_reference, ratio, ALPHA / 4, draws=60_000)
    assert rule <= 1.1


def test_the_simulation_is_what_judge_decides():
    # the same synthetic hypotheses as frames, through judge: the same words, seed by seed missing included
    scenario = Scenario("mixed", ratio=15.0, missing=True, effect=0.3)
    rng = np.random.default_rng(5)
    variant, reference, aligned = synthetic(scenario, 3, 16, rng)
    words = decide(variant, reference, aligned, "worse", 0.1).words
    hypothesis = Hypothesis("h", {"model.n_last_tokens": -1}, "worse")
    for h in range(len(words)):
        rows = [{"hypotheses": "h", "model.n_last_tokens": n, "training.seed": s, "error": e}
                for n, values in [(-1, reference[h, 0]), *zip((8, 10, 23, 31), variant[h])]
                for s, e in enumerate(values) if not math.isnan(e)]
        frame = pd.DataFrame(rows)
        verdict = judge(frame, variants_of(frame, "h"), hypothesis)
        assert verdict.word == words[h]


# Student's t two-sided tail and quantiles, against printed tables (two-sided 5% and 1%, and the 80% power point)
@pytest.mark.parametrize("df, t05, t01, t40", [
    (1, 12.7062, 63.6567, 1.3764), (2, 4.3027, 9.9248, 1.0607), (3, 3.1824, 5.8409, 0.9785),
    (5, 2.5706, 4.0321, 0.9195), (10, 2.2281, 3.1693, 0.8791), (30, 2.0423, 2.7500, 0.8538),
])
def test_t_quantiles_match_the_tables(df, t05, t01, t40):
    assert t_quantile([0.05, 0.01, 0.4], df) == pytest.approx([t05, t01, t40], abs=1e-4)
    assert t_two_sided([t05, t01, t40], df) == pytest.approx([0.05, 0.01, 0.4], rel=1e-4)


def test_t_tails_in_closed_form():
    t = np.array([0.0, 0.3, 1.0, 4.0, 50.0])
    # df = 1 is Cauchy: P(|T| >= t) = 1 - 2 atan(t) / pi; df = 2: 1 - t / sqrt(2 + t^2)
    assert t_two_sided(t, 1) == pytest.approx(1 - 2 * np.arctan(t) / np.pi, rel=1e-10, abs=1e-15)
    assert t_two_sided(t, 2) == pytest.approx(1 - t / np.sqrt(2 + t * t), rel=1e-10, abs=1e-15)
    assert t_two_sided(np.inf, 3) == 0
    # I_x(a, 1) = x^a
    assert regularised_beta(2.5, 1.0, [0.1, 0.6, 0.95]) == pytest.approx(np.array([0.1, 0.6, 0.95]) ** 2.5)


def test_t_distribution_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    df, t = rng.integers(1, 200, 2000).astype(float), np.abs(rng.standard_t(2, 2000)) * 3
    assert t_two_sided(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9, abs=1e-15)
    p = 10 ** rng.uniform(-6, math.log10(0.4), 2000)
    assert t_quantile(p, df) == pytest.approx(stats.t.isf(p / 2, df), rel=1e-9)


@pytest.mark.parametrize("p, rejected", [
    # 4 tests: 0.01 <= 0.05/4, 0.015 <= 0.05/3, 0.02 <= 0.05/2, 0.04 <= 0.05
    ([0.01, 0.015, 0.02, 0.04], [True, True, True, True]),
    # stops at the first failure: 0.02 > 0.05/3, and 0.03 is not tested although below 0.05/2
    ([0.001, 0.02, 0.03, 0.5], [True, False, False, False]),
    # Bonferroni would keep only 0.012; Holm steps down to 0.016 <= 0.05/3 and 0.024 <= 0.05/2
    ([0.012, 0.016, 0.024, 0.06], [True, True, True, False]),
    # an untested comparison (NaN) is out of the family: 3 tests, 0.016 <= 0.05/3
    ([0.016, np.nan, 0.5, 0.024], [True, False, False, True]),
    ([np.nan, np.nan], [False, False]),
])
def test_holm(p, rejected):
    assert holm(np.array(p)).tolist() == rejected


def test_seeds_to_detect():
    # t(0.05/4, 6) + t(0.4, 6) = 3.5212 + 0.9057: 7 seeds detect 4.4269 x spread / sqrt(7)
    spread = 1.0
    reach = 4.4269 * spread / math.sqrt(7)
    assert seeds_to_detect(spread, reach + 1e-3, 4) == 7
    assert seeds_to_detect(spread, reach - 1e-3, 4) == 8
    assert seeds_to_detect(0.0, 0.01, 4) == 2
    assert seeds_to_detect(spread, 0.01, 4) is None
