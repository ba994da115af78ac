"""Synthetic hypotheses with the quick study's seed noise, for the simulations of the verdict's rules
(benchmarks/calibration.py, the fixed-sample rule; benchmarks/sequential.py, the sequential one) and their tests.

A synthetic hypothesis is m variants against one reference (or each against its own), one final error per
seed: mean QUICK_MEAN plus normal seed noise, of which a share `shared` is common to every variant of a seed
(they share their training prompts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

QUICK_MEAN = 0.16  # the all-tokens reference's mean error in the quick study
# per-seed standard deviations in the quick study (docs/PILOTS.md): the all-tokens reference, then the late
# masks and the two early ones; the early masks vary 15 times less than the reference
QUICK_REFERENCE_SPREAD = 0.06
QUICK_VARIANT_SPREADS = (0.04, 0.02, 0.004, 0.004)
PREDICT_ZERO = 1.0
LARGE_EFFECT = 0.6  # the early masks' difference to all tokens in the quick study


@dataclass(frozen=True)
class Scenario:
    name: str
    reference_spread: float = QUICK_REFERENCE_SPREAD
    variant_spreads: tuple = QUICK_VARIANT_SPREADS
    ratio: float | None = None  # each variant's spread drawn log-uniformly in [1/ratio, ratio] x the reference's
    shared: float = 0.0  # the share of a seed's noise variance common to every variant of that seed
    stuck: float = 0.0  # the chance that a trial ends at the predict-0 level
    stuck_seed: float = 0.0  # the chance that a seed ends at the predict-0 level in every variant
    missing: bool = False  # the last seed of half the variants is missing: those comparisons are unpaired
    own_references: bool = False  # each variant has its own reference, as in looped_lstm
    effect: float = 0.0  # every variant's true difference to its reference



def synthetic(scenario: Scenario, seeds: int, hypotheses: int, rng: np.random.Generator):
    """(variant [H, m, n], reference [H, m, n], aligned [H, m]) of `hypotheses` synthetic hypotheses."""
    m = len(scenario.variant_spreads)
    if scenario.ratio is None:
        spreads = np.broadcast_to(np.asarray(scenario.variant_spreads, dtype=float), (hypotheses, m))
    else:
        spreads = scenario.reference_spread * np.exp(rng.uniform(-1, 1, (hypotheses, m)) * math.log(scenario.ratio))
    arms = m + m if scenario.own_references else m + 1
    spread = np.concatenate([spreads, np.full((hypotheses, arms - m), scenario.reference_spread)], axis=1)
    common = rng.standard_normal((hypotheses, 1, seeds))
    own = rng.standard_normal((hypotheses, arms, seeds))
    noise = math.sqrt(scenario.shared) * common + math.sqrt(1 - scenario.shared) * own
    errors = QUICK_MEAN + spread[..., None] * noise
    errors[:, :m] += scenario.effect
    errors = np.where(rng.random(errors.shape) < scenario.stuck, PREDICT_ZERO, errors)
    errors = np.where(rng.random((hypotheses, 1, seeds)) < scenario.stuck_seed, PREDICT_ZERO, errors)
    variant = errors[:, :m].copy()
    reference = errors[:, m:] if scenario.own_references else np.broadcast_to(errors[:, m:], variant.shape)
    if scenario.missing:
        variant[:, ::2, -1] = np.nan
    return variant, reference, np.ones((hypotheses, m), dtype=bool)

