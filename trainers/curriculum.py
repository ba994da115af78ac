"""The curriculum: dims, points and loops grow with the step.

Each value is a pure function of the step, so a resumed run needs no replay of the schedule.
"""
from __future__ import annotations

from dataclasses import dataclass

from trainers.config import CurriculumConfig, Schedule


@dataclass(frozen=True)
class CurriculumState:
    n_dims: int
    n_points: int
    n_loops: int


def _schedule_value(schedule: Schedule, step: int) -> int:
    return min(schedule.start + (step // schedule.interval) * schedule.inc, schedule.end)


def curriculum_at(curriculum: CurriculumConfig, step: int) -> CurriculumState:
    return CurriculumState(
        n_dims=_schedule_value(curriculum.dims, step),
        n_points=_schedule_value(curriculum.points, step),
        n_loops=_schedule_value(curriculum.loops, step),
    )


def loop_window_start(n_loops: int, n_loop_window: int) -> int:
    """The first iteration inside the loss window; the ones before it run without gradient."""
    return max(0, n_loops - n_loop_window)


def final_state(curriculum: CurriculumConfig) -> CurriculumState:
    return CurriculumState(curriculum.dims.end, curriculum.points.end, curriculum.loops.end)
