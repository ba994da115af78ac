"""Synthetic analysis frames, one row per trial, for the verdict and ranking tests."""
import math

import pandas as pd


def errors_frame(key: str, errors: dict, hypothesis: str = "h", **columns) -> pd.DataFrame:
    """One row per trial: `errors` maps a value of `key` to its seeds' final errors (None: no final error)."""
    rows = [{"hypotheses": hypothesis, key: value, "training.seed": seed, "error": math.nan if e is None else e,
             **columns}
            for value, values in errors.items() for seed, e in enumerate(values)]
    return pd.DataFrame(rows)
