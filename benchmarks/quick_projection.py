"""`python -m benchmarks.quick_projection`: what the quick study would cost run sequentially (docs/PILOTS.md).

The pilot's data are the quick study's own at 3 seeds (docs/PILOTS.md, "The seed count": commit 784ce0a on a
fresh clone), each comparison's mean difference and the spread of its per-seed differences, recovered from the
report's interval (decided comparisons) or smallest detectable difference (the others). Taken as the truth, they
are replayed by the sequential rule over simulated seeds (normal per-seed differences, comparisons independent);
a configuration gets seeds while any comparison it is a side of is open. Its training TFLOP per trial are the dry
run's (`python -m tune_looped.run --space hypotheses --quick --dry-run`).
"""
from __future__ import annotations

import math

import numpy as np

from analysis.boundaries import POCOCK
from analysis.sequential import STATES, Design, run
from analysis.significance import ALPHA, POWER, t_quantile
from benchmarks import print_table, simulation_parser

STUDIES = 4_000
# training TFLOP of one trial of each configuration of the quick study, from its dry run
TFLOP = {"all": 1.24, "mask 8": 1.24, "mask 10": 1.24, "mask 23": 1.24, "mask 31": 1.24, "L=2": 2.47, "L=3": 3.71,
         "L=1 LSTM": 0.725, "L=2 LSTM": 1.45, "L=3 LSTM": 2.17}
SEEDS = 3  # a side, in the quick study the figures come from
# hypothesis -> (variant, reference, mean difference, how its spread is known: ("interval", half-width) or
# ("detectable", smallest detectable difference)), from the quick study's REPORT.md at 3 seeds
OBSERVED = {
    "information flow": [("mask 8", "all", 0.608, ("interval", 0.241)), ("mask 10", "all", 0.607, ("interval", 0.2175)),
                         ("mask 23", "all", 0.054, ("detectable", 0.286)),
                         ("mask 31", "all", -0.009, ("detectable", 0.082))],
    "looped n-layers": [("L=2", "all", -0.079, ("detectable", 0.264)), ("L=3", "all", -0.129, ("detectable", 0.242))],
    "looped LSTM": [("L=1 LSTM", "all", -0.008, ("detectable", 0.512)), ("L=2 LSTM", "L=2", -0.004, ("detectable", 0.213)),
                    ("L=3 LSTM", "L=3", 0.071, ("interval", 0.038))],
}
DESIGNS = {"O'Brien-Fleming": Design(), "Pocock": Design(spending=POCOCK)}


def spread(how: tuple[str, float], m: int) -> float:
    """The standard deviation of a comparison's per-seed differences, from what its fixed-sample report showed
    at SEEDS seeds in a family of m (analysis.significance.family's interval and detectable difference)."""
    kind, value = how
    critical = float(t_quantile(ALPHA / m, SEEDS - 1.0))
    factor = critical if kind == "interval" else critical + float(t_quantile(2 * (1 - POWER), SEEDS - 1.0))
    return value / factor * math.sqrt(SEEDS)


def project(design: Design, studies: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    cap = design.looks[-1]
    seeds_of = {name: np.zeros(studies, dtype=int) for name in TFLOP}
    decided = {}
    for hypothesis, comparisons in OBSERVED.items():
        m = len(comparisons)
        truth = np.array([[difference] for _, _, difference, _ in comparisons])
        noise = np.array([[spread(how, m)] for *_, how in comparisons])
        differences = truth + noise * rng.standard_normal((studies, m, cap))
        study = run(differences, design, 0.1)
        used = np.asarray(design.looks)[study.look]  # seeds a side where each comparison stopped
        for i, (variant, reference, _, _) in enumerate(comparisons):
            for name in (variant, reference):
                seeds_of[name] = np.maximum(seeds_of[name], used[:, i])
            decided[f"{hypothesis}: {variant}"] = study.state[:, i]
    trials = sum(seeds_of.values())
    tflop = sum(seeds_of[name] * TFLOP[name] for name in TFLOP)
    return {"trials": trials, "tflop": tflop, "states": decided}


def main(argv=None) -> None:
    args = simulation_parser("python -m benchmarks.quick_projection", __doc__, STUDIES).parse_args(argv)
    fixed_tflop = SEEDS * sum(TFLOP.values())
    rows, states = [], []
    for name, design in DESIGNS.items():
        out = project(design, args.hypotheses)
        trials, tflop = out["trials"], out["tflop"]
        rows.append([name, f"{trials.mean():.0f}", f"{np.percentile(trials, 90):.0f}", f"{tflop.mean():.0f}",
                     f"{tflop.mean() / fixed_tflop:.2f}"])
        for comparison, state in out["states"].items():
            shares = {s: float(np.mean(state == STATES.index(s))) for s in STATES if np.any(state == STATES.index(s))}
            states.append([name, comparison, ", ".join(f"{s} {v:.2f}" for s, v in shares.items())])
    print_table(["design", "mean trials", "90th percentile", "mean training TFLOP", "x the fixed study's"],
                rows, args.markdown)
    print()
    print_table(["design", "comparison", "how it ends (share of studies)"], states, args.markdown)
    print(f"\nthe fixed study: {SEEDS * len(TFLOP)} trials, {fixed_tflop:.0f} TFLOP")


if __name__ == "__main__":
    main()
