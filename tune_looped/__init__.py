"""Ray Tune experiments from search-space files: `python -m tune_looped.run --space FILE`.

From Python, a space file is parsed and checked, without Ray, by `load_space`; `trial_config` gives one trial's
full config.
"""
from tune_looped.space import Space, SpaceError, load_space, trial_config

__all__ = ["Space", "SpaceError", "load_space", "trial_config"]
