"""The progress line: the share of the sweep's training FLOPs done and the ETA from the running trials' pace. On
a real sweep (test_runner.py) the share only grows and ends at 100%."""
import math

import pytest

from tune_looped.progress import measure, progress_line


class Trial:
    def __init__(self, status, flops, step=None, elapsed_s=None, per_step=10):
        self.status, self.flops, self.per_step = status, flops, per_step
        self.last_result = {} if step is None else {"step": step, "elapsed_s": elapsed_s}


def flops_of(trial, steps):
    return trial.flops if steps is None else min(trial.flops, trial.per_step * steps)


def test_share_of_flops_and_eta_from_the_running_trials():
    trials = [Trial("TERMINATED", 100, step=9), Trial("RUNNING", 100, step=4, elapsed_s=5.0),
              Trial("RUNNING", 200, step=9, elapsed_s=20.0), Trial("PENDING", 600)]
    progress = measure(trials, flops_of, elapsed_s=125.0)
    # done: 100 whole, 50 and 100 of the running ones; their pace 50/5 + 100/20 = 15 FLOP/s
    assert progress.share == pytest.approx(250 / 1000)
    assert progress.flops_per_s == pytest.approx(15.0)
    assert progress.eta_s == pytest.approx(750 / 15)
    assert progress.counts == {"done": 1, "running": 2, "pending": 1}
    assert progress_line(progress) == ("progress: 25% of the training FLOPs; 1 done, 2 running, 1 pending; elapsed "
                                       "2 min; ETA 50 s (at the running trials' 1.5e-08 GFLOP/s)")
    assert progress_line(progress, bar=True).startswith("progress: [#####...............] 25% of")


def test_an_ended_sweep_is_at_100_percent_and_one_not_started_has_no_eta():
    ended = measure([Trial("TERMINATED", 100, step=9), Trial("ERROR", 50, step=2)], flops_of, 60.0)
    assert ended.share == 1.0 and ended.eta_s == 0.0 and progress_line(ended).endswith("elapsed 60 s; ended")
    waiting = measure([Trial("PENDING", 100), Trial("RUNNING", 100)], flops_of, 3.0)
    assert waiting.share == 0.0 and math.isnan(waiting.eta_s)
    assert progress_line(waiting).endswith("ETA once a running trial reports")
