"""The group-sequential rule (analysis/sequential.py), calibrated by simulation: with no true difference it
rarely decides over all its looks, its repeated intervals hold the truth wherever a study stopped, a large
effect stops early and a null one with a small spread ends equivalent. The boundaries are checked against a
brute-force simulation of their own. The simulation is benchmarks/sequential.py's (`python -m
benchmarks.sequential` prints its tables), with fewer hypotheses and fixed seeds.
"""
import math
from statistics import NormalDist

import numpy as np
import pytest

from analysis.boundaries import POCOCK, table
from analysis.sequential import CAPPED, EQUIVALENT, OPEN, STATES, WORSE, Design, look, rule, run
from benchmarks.synthetic import LARGE_EFFECT, Scenario
from benchmarks.sequential import (NULL_SCENARIOS, POWER_SCENARIOS, crossing_rate, differences, main, retested,
                                   sequential)

HYPOTHESES = 3000
# the promise is 0.05; 0.065 leaves room for the simulation's noise (3000 hypotheses: +-0.004 at 0.05)
FALSE_ALARMS = 0.065
COVERAGE = 0.935  # promised 0.95, less the same room
DESIGN = Design()


@pytest.mark.parametrize("scenario", NULL_SCENARIOS, ids=lambda s: s.name)
def test_no_true_difference_is_rarely_decided_and_the_intervals_hold(scenario):
    outcome = sequential(scenario, DESIGN, hypotheses=HYPOTHESES)
    assert outcome.decided <= FALSE_ALARMS
    assert outcome.covered >= COVERAGE


@pytest.mark.parametrize("scenario", NULL_SCENARIOS[5:7], ids=lambda s: s.name)
def test_pocock_spending_keeps_the_promise_too(scenario):
    outcome = sequential(scenario, Design(spending=POCOCK), hypotheses=HYPOTHESES)
    assert outcome.decided <= FALSE_ALARMS
    assert outcome.covered >= COVERAGE


def test_re_testing_the_fixed_sample_rule_at_each_look_is_not_calibrated():
    # the contrast the rule exists for: the same hypotheses, judged afresh at 3, 5, 8 and 12 seeds
    assert retested(NULL_SCENARIOS[6], DESIGN, hypotheses=HYPOTHESES) > 0.1


@pytest.mark.parametrize("spending, most_seeds", [("obrien-fleming", 6), (POCOCK, 4)])
def test_a_large_effect_stops_early(spending, most_seeds):
    scenario = POWER_SCENARIOS[-1]
    assert scenario.effect == LARGE_EFFECT
    outcome = sequential(scenario, Design(spending=spending), hypotheses=1000)
    assert outcome.supported >= 0.99
    assert outcome.seeds <= most_seeds
    assert outcome.covered >= COVERAGE


def test_no_difference_with_a_small_spread_ends_equivalent_before_the_cap():
    scenario = Scenario("small spread", reference_spread=0.01, variant_spreads=(0.01,) * 4)
    outcome = sequential(scenario, DESIGN, hypotheses=1000)
    assert outcome.equivalent >= 0.99
    assert outcome.seeds <= 8


def _spend(spending: str, fraction: float, level: float) -> float:
    if spending == POCOCK:
        return level * math.log(1 + (math.e - 1) * fraction)
    return math.erfc(-NormalDist().inv_cdf(level / 2) / math.sqrt(fraction) / math.sqrt(2))


@pytest.mark.parametrize("spending", ["obrien-fleming", POCOCK])
@pytest.mark.parametrize("comparisons", [1, 4])
def test_boundaries_spend_alpha_as_designed(spending, comparisons):
    # brute force, with its own random numbers: the share of null paths first crossing at each look is that
    # look's spending increment, within the noise of these paths and of the paths the table was computed on
    design = Design(spending=spending)
    critical = design.table().critical(comparisons)
    level, paths = design.alpha / comparisons, 400_000
    draws = np.random.default_rng(2013).normal(size=(paths, design.looks[-1]))
    crossed, previous = np.zeros(paths, dtype=bool), 0.0
    for k, n in enumerate(design.looks):
        seeds = draws[:, :n]
        t = seeds.mean(axis=1) * math.sqrt(n) / seeds.std(axis=1, ddof=1)
        first = ~crossed & (np.abs(t) >= critical[k])
        spent = _spend(spending, n / design.looks[-1], level)
        tolerance = 4 * math.sqrt((spent - previous) / paths + spent / design.paths) + 1e-6
        assert first.mean() == pytest.approx(spent - previous, abs=tolerance), k
        crossed |= first
        previous = spent


def test_normal_theory_boundaries_are_too_liberal_at_a_few_seeds():
    # the boundaries of a statistic whose noise size is known, applied to t at 3 to 12 seeds
    assert crossing_rate(DESIGN, 1, gaussian=True, paths=100_000) > 2 * DESIGN.alpha
    assert crossing_rate(DESIGN, 1, gaussian=False, paths=100_000) == pytest.approx(DESIGN.alpha, abs=0.004)
    gaussian, calibrated = DESIGN.table(gaussian=True).critical(1), DESIGN.table().critical(1)
    assert (gaussian < calibrated).all()
    # the first look of O'Brien-Fleming-type spending is its normal quantile, 1.96 / sqrt(3 / 12)
    assert gaussian[0] == pytest.approx(3.92, abs=0.01)


def test_the_boundaries_are_reproducible():
    small = dict(looks=(2, 4, 7), alpha=0.05, spending="obrien-fleming", paths=20_000)
    again = table.__wrapped__(**small)
    np.testing.assert_array_equal(table(**small).bounds, again.bounds)
    assert table(**small).critical(2)[-1] == pytest.approx(Design().table().critical(2)[-1], rel=0.2)


def test_sequential_p_values_never_rise_and_agree_with_the_boundaries():
    rng = np.random.default_rng(3)
    values = {f"v{i}": 0.05 * rng.standard_normal(12) + shift for i, shift in enumerate((0.0, 0.03, 0.06, -0.04))}
    critical = DESIGN.table().critical(len(values))
    last = {name: 1.0 for name in values}
    for n in DESIGN.looks:
        for s in look({name: v[:n] for name, v in values.items()}, DESIGN):
            assert s.p <= last[s.name]
            last[s.name] = s.p
            assert s.seeds == n or s.state != OPEN
            if s.state == OPEN:
                v = values[s.name][:n]
                half = critical[s.look] * v.std(ddof=1) / math.sqrt(n)
                assert (s.lo, s.hi) == pytest.approx((v.mean() - half, v.mean() + half))
    # on the boundary at alpha / m the p-value is alpha / m; just inside it, more
    boundaries = DESIGN.table()
    for k in range(len(DESIGN.looks)):
        assert boundaries.p_values(critical[k], k) == pytest.approx(DESIGN.alpha / 4, rel=1e-9)
        assert boundaries.p_values(critical[k] * 0.999, k) > DESIGN.alpha / 4
    assert boundaries.p_values(0.0, 3) == 1.0


def test_a_sequential_p_value_keeps_its_best_look():
    # a strong start that later seeds undo: the p-value stays the first look's, and the interval widens again
    seeds = np.array([1.0, 1.05, 0.95, -1.5, -1.4])
    (start,) = look({"a": seeds[:3]}, DESIGN)
    (later,) = look({"a": seeds}, DESIGN)
    assert start.p < 0.5 and later.state == OPEN
    assert later.p == start.p
    t = abs(seeds.mean()) / (seeds.std(ddof=1) / math.sqrt(5))
    assert DESIGN.table().p_values(t, 1) > start.p  # the second look's own


def test_a_decided_comparison_stays_decided():
    seeds = np.array([0.61, 0.58, 0.6, 0.63, 0.59])
    worse = look({"a": seeds, "b": [0.01, -0.02, 0.0, 0.02, -0.01]}, DESIGN)[0]
    assert (worse.state, worse.look, worse.next_seeds) == (WORSE, 1, None)
    # the seeds a decided comparison got beyond its look change nothing, however they fall
    later = look({"a": [*seeds, -5, -5, -5], "b": [0.01, -0.02, 0.0, 0.02, -0.01, 0.3, -0.2, 0.1]}, DESIGN)[0]
    assert later == worse


def test_a_look_waits_for_every_open_comparison():
    rng = np.random.default_rng(4)
    a, b = 0.05 * rng.standard_normal(8), 0.05 * rng.standard_normal(8)
    states = look({"a": a[:8], "b": b[:6]}, DESIGN)  # b has not reached the third look's 8 seeds
    assert [s.look for s in states] == [1, 1]
    assert [s.next_seeds for s in states if s.state == OPEN] == [8] * sum(s.state == OPEN for s in states)
    assert look({"a": a[:2], "b": b[:2]}, DESIGN)[0].next_seeds == 3


def test_undecided_at_the_cap():
    rng = np.random.default_rng(6)
    states = look({"a": 0.1 + 0.4 * rng.standard_normal(12)}, DESIGN)
    (s,) = states
    assert (s.state, s.seeds, s.next_seeds) == (CAPPED, 12, None)
    assert s.lo < 0 < s.hi
    assert s.largest_effect == max(-s.lo, s.hi)


def test_a_look_that_may_spend_nothing_decides_nothing():
    # 2 of 60 seeds: O'Brien-Fleming-type spending allows about 1e-26 of 0.05 there, so the boundary is infinite,
    # and even seeds that agree exactly leave the comparison open with an unbounded interval; only levels above
    # 0.2 may spend enough to reject at all
    (s,) = look({"a": [0.3, 0.3]}, Design(looks=(2, 60), paths=10_000))
    assert (s.state, s.lo, s.hi) == (OPEN, -math.inf, math.inf)
    assert s.p > 0.2


def test_the_margin_is_a_share_of_the_predict_zero_level():
    zero = [0.01, -0.01, 0.005, -0.005, 0.0]
    assert look({"a": zero}, DESIGN)[0].state == EQUIVALENT
    assert look({"a": [50 * v for v in zero]}, DESIGN, predict_zero=50.0)[0].state == EQUIVALENT
    assert look({"a": [50 * v for v in zero]}, DESIGN)[0].state == OPEN


def test_the_simulation_is_what_look_decides():
    # the array form on 40 synthetic hypotheses, then each hypothesis through `look`: the same states and numbers
    d = differences(POWER_SCENARIOS[0], DESIGN, 40, seed=8)
    study = run(d, DESIGN, DESIGN.smallest_effect)
    for h in range(len(d)):
        states = look({f"c{i}": d[h, i] for i in range(d.shape[1])}, DESIGN)
        assert [s.state for s in states] == [STATES[i] for i in study.state[h]]
        assert [s.p for s in states] == pytest.approx(study.p[h])
        assert [s.lo for s in states] == pytest.approx(study.lo[h])


def test_the_design_record_round_trips():
    design = Design(looks=(2, 4, 6), alpha=0.1, spending=POCOCK, smallest_effect=0.05, paths=50_000)
    record = design.to_record()
    assert record == {"looks": [2, 4, 6], "alpha": 0.1, "spending": POCOCK, "smallest_effect": 0.05,
                      "paths": 50_000}
    assert Design.from_record(record) == design
    assert Design.from_record({"looks": [3, 6]}) == Design(looks=(3, 6))


@pytest.mark.parametrize("record, key", [
    ({"looks": [3, 3, 5]}, "looks"), ({"looks": [1, 3]}, "looks"), ({"looks": []}, "looks"),
    ({"looks": [3, 5.5]}, "looks"), ({"looks": "3, 5"}, "looks"), ({"looks": [3, 200]}, "looks"),
    ({"alpha": 0}, "alpha"), ({"alpha": 0.6}, "alpha"), ({"alpha": True}, "alpha"), ({"alpha": "0.05"}, "alpha"),
    ({"spending": "haybittle"}, "spending"), ({"spending": ["pocock"]}, "spending"),
    ({"smallest_effect": -0.1}, "smallest_effect"), ({"smallest_effect": float("nan")}, "smallest_effect"),
    ({"paths": 100}, "paths"), ({"paths": 2e5}, "paths"),
    ({"look": [3, 5]}, "look"),
])
def test_bad_design_values_name_their_key(record, key):
    with pytest.raises(ValueError, match=rf"^sequential design `{key}`: .* is not allowed; ") as error:
        Design.from_record(record)
    assert "\n" not in str(error.value)


def test_bad_look_input():
    with pytest.raises(ValueError, match="not allowed; give a mapping"):
        Design.from_record([3, 5, 8])
    with pytest.raises(ValueError, match=r"^comparison `b`: .* one finite difference per seed"):
        look({"a": [0.1, 0.2, 0.3], "b": [0.1, float("nan"), 0.3]}, DESIGN)
    with pytest.raises(ValueError, match="0 comparisons"):
        look({}, DESIGN)
    with pytest.raises(ValueError, match="predict_zero"):
        look({"a": [0.1, 0.2, 0.3]}, DESIGN, predict_zero=0.0)


def test_the_rule_in_words():
    words = rule(DESIGN)
    for phrase in ("3, 5, 8, 12 seeds", "never rises", "Holm", "at every look", "within +-0.1 x the predict-0",
                   "biased away from zero", "read the interval", CAPPED):
        assert phrase in words


def test_the_benchmark_prints_its_tables(capsys):
    assert main(["--hypotheses", "200", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("|---|") for line in out.splitlines()) == 4
    assert "| O'Brien-Fleming | 0.05 | t, by simulation | 106 6.89 3.22 2.32 |" in out
