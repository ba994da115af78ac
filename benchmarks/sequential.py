"""`python -m benchmarks.sequential`: the group-sequential rule (analysis/sequential.py) on synthetic
hypotheses: its false alarms over all looks with no true difference, against re-testing a fixed-sample test at
each look; its repeated intervals' coverage where the study stopped; its power and the seeds it used against
the fixed-sample test at the cap; and why its boundaries are computed for t, not taken from normal theory.
tests/test_sequential.py asserts the same simulation's rates.

The synthetic hypotheses are benchmarks/synthetic.py's, with seeds up to the design's last look; a variant's
per-seed differences to its reference are what the rule reads, the first `looks[k]` of them at look k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.boundaries import POCOCK
from analysis.sequential import BETTER, CAPPED, EQUIVALENT, STATES, WORSE, Design, run
from analysis.significance import family, seed_test
from benchmarks import print_table, simulation_parser
from benchmarks.synthetic import LARGE_EFFECT, PREDICT_ZERO, Scenario, synthetic

HYPOTHESES = 20_000
DESIGNS = {"O'Brien-Fleming": Design(), "Pocock": Design(spending=POCOCK)}
NULL_SCENARIOS = (
    Scenario("quick study's spreads"),
    Scenario("quick study's spreads, half the noise shared", shared=0.5),
    Scenario("a seed stuck at predict-0 in every variant, chance 0.2", stuck_seed=0.2),
    Scenario("spread ratios up to 15 either way", ratio=15.0),
    Scenario("each variant against its own reference", own_references=True, ratio=15.0),
    *(Scenario(f"{m} comparisons, equal spreads", variant_spreads=(0.06,) * m) for m in (2, 4, 8)),
    Scenario("8 comparisons, equal spreads, 90% of the noise shared", variant_spreads=(0.06,) * 8, shared=0.9),
)
SMALL_EFFECT = 0.1
POWER_SCENARIOS = (
    Scenario(f"+{SMALL_EFFECT} at the quick study's spreads", effect=SMALL_EFFECT),
    Scenario(f"+{SMALL_EFFECT}, equal spreads", variant_spreads=(0.06,) * 4, effect=SMALL_EFFECT),
    Scenario(f"+{LARGE_EFFECT} at the quick study's spreads", effect=LARGE_EFFECT),
)


def differences(scenario: Scenario, design: Design, hypotheses: int, seed: int) -> np.ndarray:
    """[hypotheses, m, last look's seeds]: per-seed differences, variant minus reference."""
    rng = np.random.default_rng([seed, 29])
    variant, reference, _ = synthetic(scenario, design.looks[-1], hypotheses, rng)
    return variant - reference


@dataclass(frozen=True)
class Outcome:
    decided: float  # share of hypotheses with a comparison decided (worse or better): false alarms if no effect
    supported: float  # share with every comparison decided in the direction of the effect
    power: float  # share of comparisons decided in the direction of the effect
    covered: float  # share whose intervals all hold the true difference, each where its comparison stopped
    seeds: float  # mean seeds a variant
    equivalent: float  # share of comparisons that ended equivalent
    capped: float  # share of comparisons undecided at the cap


def sequential(scenario: Scenario, design: Design, *, hypotheses: int = HYPOTHESES, seed: int = 0) -> Outcome:
    study = run(differences(scenario, design, hypotheses, seed), design, design.smallest_effect * PREDICT_ZERO)
    state = np.asarray(STATES)[study.state]
    right = state == (WORSE if scenario.effect >= 0 else BETTER)
    covered = (study.lo <= scenario.effect) & (scenario.effect <= study.hi)
    return Outcome(float(np.isin(state, (WORSE, BETTER)).any(axis=-1).mean()), float(right.all(axis=-1).mean()),
                   float(right.mean()), float(covered.all(axis=-1).mean()),
                   float(np.asarray(design.looks)[study.look].mean()), float((state == EQUIVALENT).mean()),
                   float((state == CAPPED).mean()))


def fixed(scenario: Scenario, design: Design, seeds: int, *, hypotheses: int = HYPOTHESES, seed: int = 0):
    """(decided, supported, power) of the fixed-sample rule (paired t-tests, Holm) on the first `seeds` seeds:
    the same hypotheses as `sequential`'s."""
    d = differences(scenario, design, hypotheses, seed)[..., :seeds]
    tests = seed_test(d, np.zeros_like(d), True)
    decided = family(tests).decided
    right = decided & (np.sign(tests.difference) == (1 if scenario.effect >= 0 else -1))
    return float(decided.any(axis=-1).mean()), float(right.all(axis=-1).mean()), float(right.mean())


def retested(scenario: Scenario, design: Design, *, hypotheses: int = HYPOTHESES, seed: int = 0) -> float:
    """Share of hypotheses where the fixed-sample rule, re-run at each look, decides some comparison at some
    look: what adding seeds and looking again does without a sequential rule."""
    d = differences(scenario, design, hypotheses, seed)
    decided = np.zeros(d.shape[0], dtype=bool)
    for n in design.looks:
        decided |= family(seed_test(d[..., :n], np.zeros_like(d[..., :n]), True)).decided.any(axis=-1)
    return float(decided.mean())


def crossing_rate(design: Design, comparisons: int, *, gaussian: bool, paths: int = 200_000, seed: int = 1):
    """Share of null paths of one comparison whose |t| reaches, at some look, the design's boundary at alpha /
    comparisons: calibrated for t, or normal theory's (`gaussian`). Paths of their own, not the table's."""
    critical = design.table(gaussian).critical(comparisons)
    draws = np.random.default_rng([seed, 5]).standard_normal((paths, design.looks[-1]))
    crossed = np.zeros(paths, dtype=bool)
    for k, n in enumerate(design.looks):
        window = draws[:, :n]
        crossed |= np.abs(window.mean(axis=1)) / (window.std(axis=1, ddof=1) / math.sqrt(n)) >= critical[k]
    return float(crossed.mean())


def main(argv=None) -> int:
    args = simulation_parser("python -m benchmarks.sequential", __doc__, HYPOTHESES).parse_args(argv)
    n, design = args.hypotheses, Design()
    looks = ", ".join(map(str, design.looks))
    print(f"Looks at {looks} seeds a variant, alpha {design.alpha:g}, equivalence margin "
          f"{design.smallest_effect:g} x predict-0; {n} synthetic hypotheses per cell, {design.paths} simulated "
          f"paths per boundary table")
    print(f"\nNo true difference: share of hypotheses with a comparison decided at some look (promised: <= "
          f"{design.alpha:g}); then re-testing the fixed-sample rule at each look")
    outcomes = {s: [sequential(s, d, hypotheses=n) for d in DESIGNS.values()] for s in NULL_SCENARIOS}
    names = list(DESIGNS)
    print_table(["scenario", "comparisons", *names, "fixed-sample, re-tested at each look"],
                 [[s.name, len(s.variant_spreads), *(o.decided for o in outcomes[s]), retested(s, design, hypotheses=n)]
                  for s in NULL_SCENARIOS], args.markdown)
    print(f"\nNo true difference: share of hypotheses whose intervals all hold 0 where their comparisons stopped "
          f"(promised: >= {1 - design.alpha:g}), mean seeds a variant, share of comparisons ended equivalent")
    print_table(["scenario", *(f"{k} coverage" for k in names), *(f"{k} seeds" for k in names),
                  *(f"{k} equivalent" for k in names)],
                 [[s.name, *(o.covered for o in outcomes[s]), *(o.seeds for o in outcomes[s]),
                   *(o.equivalent for o in outcomes[s])] for s in NULL_SCENARIOS], args.markdown)
    print(f"\nA true difference on every variant: share of hypotheses with every comparison decided in its "
          f"direction, share of comparisons so decided, mean seeds a variant, share of hypotheses whose intervals "
          f"all hold the true difference; the fixed-sample rule at the cap ({design.looks[-1]} seeds) alongside")
    rows = []
    for scenario in POWER_SCENARIOS:
        for name, d in DESIGNS.items():
            o = sequential(scenario, d, hypotheses=n)
            rows.append([scenario.name, name, o.supported, o.power, o.seeds, o.covered, o.capped])
        _, supported, power = fixed(scenario, design, design.looks[-1], hypotheses=n)
        rows.append([scenario.name, f"fixed sample, {design.looks[-1]} seeds", supported, power,
                     design.looks[-1], None, None])
    print_table(["scenario", "rule", "all decided", "comparisons decided", "mean seeds", "coverage",
                  "undecided at the cap"], rows, args.markdown)
    print("\nBoundaries for the paired t statistic, calibrated for t, against normal theory's, and the share of "
          "one null comparison's paths that cross one at some look (promised: the level)")
    rows = []
    for name, d in DESIGNS.items():
        for comparisons in (1, 4):
            level = d.alpha / comparisons
            for gaussian in (False, True):
                bounds = d.table(gaussian).critical(comparisons)
                rows.append([name, f"{level:g}", "normal theory" if gaussian else "t, by simulation",
                             " ".join(f"{b:.3g}" for b in bounds),
                             crossing_rate(d, comparisons, gaussian=gaussian) / level])
    print_table(["spending", "level", "computed for", f"boundaries at {looks} seeds", "crossings / level"], rows,
                 args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
