"""A parsed `Space` -> Ray Tune's param_space and scheduler (one pure function each)."""
from __future__ import annotations

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from tune_looped.space import Space, start_order, trial_config
from tune_looped.trials import encode

SAMPLERS = {
    "loguniform": tune.loguniform,
    "uniform": tune.uniform,
    # the grammar's randint(a, b) includes b, as Python's random.randint does; Tune's excludes it
    "randint": lambda low, high: tune.randint(low, high + 1),
}


def param_space(space: Space) -> dict:
    """The trials in run order, as `tune_looped.trials` encodes them, with the sampled keys' Tune domains."""
    sampled = {key: tune.choice(list(dist.args)) if dist.kind == "choice" else SAMPLERS[dist.kind](*dist.args)
               for key, dist in space.sample.items()}
    return encode(start_order(space), sampled)


def make_scheduler(space: Space):
    spec = dict(space.scheduler)
    if spec.pop("type") == "fifo":
        return FIFOScheduler()
    spec.setdefault("max_t", max(trial_config(space.base, t.values).training.train_steps for t in space.trials))
    return ASHAScheduler(time_attr="step", **spec)
