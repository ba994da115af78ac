"""Ray Tune experiments from search-space files: `python -m tune_looped.run --space FILE`.

From Python, `run_space` runs a sweep as the command line does and returns the experiment folder and Tune's
ResultGrid; a space file is parsed and checked, without Ray, by `load_space`; `trial_config` gives one trial's
full config.
"""
from tune_looped.space import Space, SpaceError, load_space, trial_config
from tune_looped.rounds import run_space
from tune_looped.sweep import Sweep, SweepError

__all__ = ["Space", "SpaceError", "Sweep", "SweepError", "load_space", "run_space", "trial_config"]
