"""Hypotheses and their variants: which trials answer which question, and how a variant is named and drawn.

A variant is a configuration without the seed. Its label uses only the keys that vary among the trials of
the hypothesis (`n_last_tokens=55`, `L=2 LSTM`); its colour follows the variants' display order, so every
figure of one hypothesis draws a variant in the same colour.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.frames import config_columns
from trainers.records import SEED_KEY, variant_label

UNTAGGED = "all"  # trials whose search space names no hypothesis
# matplotlib's tab10, without its grey: grey and black draw the baselines
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")


def hypotheses(frame: pd.DataFrame) -> list[str]:
    return sorted({tag or UNTAGGED for joined in frame["hypotheses"].fillna("") for tag in str(joined).split(";")})


def of_hypothesis(frame: pd.DataFrame, hypothesis: str) -> pd.DataFrame:
    tags = frame["hypotheses"].fillna("").astype(str).str.split(";")
    # as bool: an empty frame's mask is of objects, which pandas would take for column names and drop every column
    return frame[tags.map(lambda t: hypothesis in t or (hypothesis == UNTAGGED and t == [""])).astype(bool)]


def _sort_key(value):
    """Numbers (numpy's too) in numeric order, then text, then gaps."""
    if value is None or pd.isna(value):
        return (2, 0.0, "")
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


@dataclass(frozen=True)
class Variants:
    hypothesis: str
    keys: tuple[str, ...]  # config keys that vary within the hypothesis, the seed aside
    labels: tuple[str, ...]  # in display order

    def label(self, row) -> str:
        return variant_label({key: row[key] for key in self.keys}, default=self.hypothesis)

    def colour(self, label: str) -> str:
        return PALETTE[self.labels.index(label) % len(PALETTE)]


def variants_of(trials: pd.DataFrame, hypothesis: str) -> Variants:
    """The variants among `trials` (any frame with one row per trial or more, already of one hypothesis)."""
    candidates = [c for c in config_columns(trials) if c != SEED_KEY]
    keys = tuple(c for c in candidates if trials[c].astype(str).nunique() > 1)
    configs = trials[list(keys)].drop_duplicates().to_dict("records") if keys else [{}]
    configs.sort(key=lambda config: tuple(_sort_key(config[k]) for k in keys))
    partial = Variants(hypothesis, keys, ())
    labels = tuple(dict.fromkeys(partial.label(config) for config in configs))
    return Variants(hypothesis, keys, labels)
