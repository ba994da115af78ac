"""What a trial costs, from its config alone: parameters, matrix-product FLOPs of one step at the final
curriculum state, and of the whole run (`trainers.flops`). Wall time is measured, not computed: it is
in the summary beside these, and it depends on the machine and its load, so it is reported but not used to
compare variants.
"""
from __future__ import annotations

import functools
import math

from trainers.config import ConfigError, ModelConfig, config_from_dict
from trainers.curriculum import final_state
from trainers.flops import step_flops, training_flops
from trainers.models import build_model

COST_COLUMNS = ("parameters", "step_flops", "training_flops")


@functools.cache
def _parameter_count(model: ModelConfig) -> int:
    return sum(p.numel() for p in build_model(model).parameters())


def trial_cost(config: dict) -> dict:
    """The cost columns of one trial's config (the nested dict its checkpoint holds); NaN when it has none."""
    try:
        parsed = config_from_dict(config) if config else None
    except ConfigError:
        parsed = None
    if parsed is None:
        return dict.fromkeys(COST_COLUMNS, math.nan)
    return {"parameters": _parameter_count(parsed.model),
            "step_flops": step_flops(parsed, final_state(parsed.training.curriculum)).total,
            "training_flops": training_flops(parsed)}
