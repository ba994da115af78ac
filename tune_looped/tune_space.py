"""A parsed `Space` -> Ray Tune's param_space and scheduler (one pure function each)."""
from __future__ import annotations

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from trainers.flops import training_flops
from tune_looped.space import Space, Trial, trial_config

SAMPLERS = {
    "loguniform": tune.loguniform,
    "uniform": tune.uniform,
    # the grammar's randint(a, b) includes b, as Python's random.randint does; Tune's excludes it
    "randint": lambda low, high: tune.randint(low, high + 1),
}


def run_order(space: Space) -> list[Trial]:
    """The trials by training FLOPs, most first (ties keep the space's order): Tune starts grid trials in
    order, so the longest ones no longer run alone at the end of a sweep while the other slots stand idle."""
    return sorted(space.trials, key=lambda t: -training_flops(trial_config(space.base, t.values)))


def param_space(space: Space) -> dict:
    """`{"variant": grid_search([...]), sampled_key: domain}`: the grid is the deduplicated list of trials,
    so a configuration shared by several experiments is one trial tagged with all of them."""
    variants = [{"experiments": list(t.experiments), **t.values} for t in run_order(space)]
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
