"""A parsed `Space` -> Ray Tune's param_space and scheduler (one pure function each)."""
from __future__ import annotations

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from tune_looped.space import Space, trial_config

SAMPLERS = {
    "loguniform": tune.loguniform,
    "uniform": tune.uniform,
    # the grammar's randint(a, b) includes b, as Python's random.randint does; Tune's excludes it
    "randint": lambda low, high: tune.randint(low, high + 1),
}


def param_space(space: Space) -> dict:
    """`{"variant": grid_search([...]), sampled_key: domain}`: the grid is the deduplicated list of trials,
    so a configuration shared by several experiments is one trial tagged with all of them."""
    variants = [{"experiments": list(t.experiments), **t.values} for t in space.trials]
    out: dict = {"variant": tune.grid_search(variants)}
    for key, dist in space.sample.items():
        out[key] = tune.choice(list(dist.args)) if dist.kind == "choice" else SAMPLERS[dist.kind](*dist.args)
    return out


def make_scheduler(space: Space):
    spec = dict(space.scheduler)
    if spec.pop("type") == "fifo":
        return FIFOScheduler()
    spec.setdefault("max_t", max(trial_config(space.base, t.values).training.train_steps for t in space.trials))
    return ASHAScheduler(time_attr="step", **spec)
