"""Synthetic analysis frames, one row per trial, for the verdict and ranking tests."""
import pandas as pd


def errors_frame(key: str, errors: dict, hypothesis: str = "h") -> pd.DataFrame:
    """One row per trial: `errors` maps a value of `key` to its seeds' final errors."""
    rows = [{"hypotheses": hypothesis, key: value, "training.seed": seed, "error": error}
            for value, values in errors.items() for seed, error in enumerate(values)]
    return pd.DataFrame(rows)
