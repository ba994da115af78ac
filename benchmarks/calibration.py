"""`python -m benchmarks.calibration`: how often the verdict's rule says "supported" or "contradicted" when no
variant differs from its reference (its false alarms), and how often it finds a large effect (its power), at 2,
3 and 5 seeds, on synthetic hypotheses with the quick study's seed noise and harder ones; then why the rule
uses the tests it does. tests/test_calibration.py asserts the same simulation's rates.

A synthetic hypothesis (benchmarks/synthetic.py) is 4 variants against one reference (or, like looped_lstm, each
against its own), one final error per seed. It is judged by `analysis.verdict.decide`, the array
form of the rule `judge` applies; `judge` only adds the "reference did not learn" check, which can turn a
decision into "inconclusive" but never makes one, so these rates bound the report's.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from analysis.significance import ALPHA, SeedTest, family, seed_test, t_two_sided
from analysis.verdict import CONTRADICTED, SUPPORTED, decide, trend_decide
from benchmarks import print_table, simulation_parser
from benchmarks.synthetic import LARGE_EFFECT, PREDICT_ZERO, QUICK_MEAN, QUICK_VARIANT_SPREADS, Scenario, synthetic

SEED_COUNTS = (2, 3, 5)
HYPOTHESES = 2000

NULL_SCENARIOS = (
    Scenario("quick study's spreads"),
    Scenario("quick study's spreads, half the noise shared", shared=0.5),
    Scenario("equal spreads", variant_spreads=(0.06,) * 4),
    Scenario("equal spreads, 90% of the noise shared", variant_spreads=(0.06,) * 4, shared=0.9),
    Scenario("spread ratios up to 15 either way", ratio=15.0),
    Scenario("variants 15 times noisier than the reference", reference_spread=0.004, variant_spreads=(0.06,) * 4),
    Scenario("each trial stuck at predict-0 with chance 0.1", stuck=0.1),
    Scenario("a seed stuck at predict-0 in every variant, chance 0.2", stuck_seed=0.2),
    Scenario("a seed missing on half the variants", missing=True, ratio=15.0),
    Scenario("each variant against its own reference", own_references=True, ratio=15.0),
)
POWER_SCENARIOS = (
    Scenario(f"+{LARGE_EFFECT} at the quick study's spreads", effect=LARGE_EFFECT),
    Scenario(f"+{LARGE_EFFECT}, half the noise shared", effect=LARGE_EFFECT, shared=0.5),
    Scenario(f"+{LARGE_EFFECT}, a seed missing on half the variants", effect=LARGE_EFFECT, missing=True),
    Scenario("+0.2 at the quick study's spreads", effect=0.2),
)


def decided_rate(scenario: Scenario, seeds: int, *, hypotheses: int = HYPOTHESES, seed: int = 0):
    """(share "supported" or "contradicted", share "supported") for predicted-worse synthetic hypotheses."""
    rng = np.random.default_rng([seed, seeds])
    words = decide(*synthetic(scenario, seeds, hypotheses, rng), "worse", 0.1 * PREDICT_ZERO).words
    return float(np.isin(words, (SUPPORTED, CONTRADICTED)).mean()), float((words == SUPPORTED).mean())


TREND_MEANS = (0.78, 0.78, 0.2, 0.14, 0.16)  # the quick study's masks 8, 10, 23, 31 and all tokens
TREND_SPREADS = (0.004, 0.004, 0.02, 0.04, 0.06)


def trend_rate(means, seeds: int, *, hypotheses: int = HYPOTHESES, seed: int = 0, shared: float = 0.0) -> tuple:
    """(share "holds" or "against", share "holds") of the trend test for error decreasing along the variants."""
    rng = np.random.default_rng([seed, seeds, 7])
    noise = (math.sqrt(shared) * rng.standard_normal((hypotheses, 1, seeds))
             + math.sqrt(1 - shared) * rng.standard_normal((hypotheses, len(means), seeds)))
    errors = np.asarray(means)[:, None] + np.asarray(TREND_SPREADS)[:, None] * noise
    rank = np.arange(len(means)) - (len(means) - 1) / 2
    slopes = np.einsum("hkn,k->hn", errors, rank / (rank @ rank))
    words, _ = trend_decide(slopes, "decreasing")
    return float((words != "not shown").mean()), float((words == "holds").mean())


def _satterthwaite(variant, reference) -> SeedTest:
    """Welch's test with Satterthwaite's degrees of freedom, the textbook choice the rule does not make."""
    test = seed_test(variant, reference, False)
    n_v, n_r = (np.sum(~np.isnan(side), axis=-1) for side in (variant, reference))
    a, b = np.nanvar(variant, axis=-1, ddof=1) / n_v, np.nanvar(reference, axis=-1, ddof=1) / n_r
    return replace(test, df=(a + b) ** 2 / (a * a / (n_v - 1) + b * b / (n_r - 1)))


def single_test_size(n_variant: int, n_reference: int, ratio: float, level: float, *, draws: int = 200_000,
                     seed: int = 0) -> tuple[float, float]:
    """Rejection rate / level of one comparison under no difference, with Satterthwaite's df and with the
    rule's (the smaller side's seeds - 1), for a variant `ratio` times as spread as its reference."""
    rng = np.random.default_rng([seed, n_variant, n_reference])
    width = max(n_variant, n_reference)
    variant, reference = np.full((draws, width), np.nan), np.full((draws, width), np.nan)
    variant[:, :n_variant] = ratio * rng.standard_normal((draws, n_variant))
    reference[:, :n_reference] = rng.standard_normal((draws, n_reference))
    rates = []
    for test in (_satterthwaite(variant, reference), seed_test(variant, reference, False)):
        t = np.abs(test.difference) / test.se
        rates.append(float((t_two_sided(t, test.df) < level).mean()) / level)
    return rates[0], rates[1]


def _pairing_power(scenario: Scenario, seeds: int, *, hypotheses: int = HYPOTHESES, seed: int = 0):
    """Share "supported" with the rule's pairing and with Welch's statistic on every comparison."""
    rng = np.random.default_rng([seed, seeds, 3])
    variant, reference, aligned = synthetic(scenario, seeds, hypotheses, rng)
    shares = []
    for pair in (aligned, ~aligned):
        tests = seed_test(variant, reference, pair)
        shares.append(float((family(tests).decided & (tests.difference > 0)).all(axis=-1).mean()))
    return shares[0], shares[1]


def main(argv=None) -> int:
    args = simulation_parser("python -m benchmarks.calibration", __doc__, HYPOTHESES).parse_args(argv)
    n = args.hypotheses
    header = ["scenario", *(f"{s} seeds" for s in SEED_COUNTS)]
    print(f"No true difference: share of {n} hypotheses judged supported or contradicted (the rule promises "
          f"<= {ALPHA:g})")
    print_table(header, [[s.name, *(decided_rate(s, k, hypotheses=n)[0] for k in SEED_COUNTS)]
                         for s in NULL_SCENARIOS], args.markdown)
    print("\nA true difference on every variant: share judged supported")
    print_table(header, [[s.name, *(decided_rate(s, k, hypotheses=n)[1] for k in SEED_COUNTS)]
                         for s in POWER_SCENARIOS], args.markdown)
    print("\nThe trend test (error decreasing along 5 variants): share holds or against with equal means, "
          "share holds with the quick study's means")
    print_table(header, [["no trend", *(trend_rate((QUICK_MEAN,) * 5, k, hypotheses=n)[0] for k in SEED_COUNTS)],
                         ["no trend, 90% of the noise shared",
                          *(trend_rate((QUICK_MEAN,) * 5, k, hypotheses=n, shared=0.9)[0] for k in SEED_COUNTS)],
                         ["the quick study's masks", *(trend_rate(TREND_MEANS, k, hypotheses=n)[1]
                                                       for k in SEED_COUNTS)]], args.markdown)
    print(f"\nOne comparison, no difference, at {ALPHA:g}/4 (4 comparisons): rejection rate / level, Satterthwaite's "
          "df against the rule's")
    print_table(["variant seeds", "reference seeds", "variant spread / reference's", "Satterthwaite", "rule"],
                [[a, b, r, *single_test_size(a, b, r, ALPHA / 4)] for a, b in ((2, 2), (3, 3), (2, 5), (5, 5))
                 for r in (1.0, 4.0, 15.0)], args.markdown)
    print("\nPairing by seed: share supported for +0.2 with the rule (paired where the seeds match) and with "
          "Welch's statistic everywhere")
    rows = []
    for shared in (0.0, 0.5, 0.9):
        for name, spreads in (("quick study's spreads", QUICK_VARIANT_SPREADS), ("equal spreads", (0.06,) * 4)):
            scenario = Scenario(name, variant_spreads=spreads, shared=shared, effect=0.2)
            rows.append([f"{name}, {shared:.0%} shared", *(f"{p:.3f} / {w:.3f}" for p, w in
                                                           (_pairing_power(scenario, k, hypotheses=n)
                                                            for k in SEED_COUNTS))])
    print_table(header, rows, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
