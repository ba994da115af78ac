"""End-to-end sweeps on a real embedded Ray: dedup, fractional GPUs, two nodes, crash + retry, and the W&B key
reaching the trial workers but never a file. Trials are tiny (a few dozen steps, n_embd 16). Interrupting the
driver, divergence, load and bad input are in test_reliability.py and test_bad_input.py."""
import io
import os
import re
import signal
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from analysis import AnalysisWarning, load_curves
from helpers.sweeps import (TINY_BASE, TrialBarrier, TrialEvents, descendants, finish, local_cluster, ray_session_of,
                            record, rows, start_sweep, trial_dirs, wait_for, write_space)
from trainers.checkpoint import load_checkpoint
from trainers.config import apply_overrides, config_from_dict
from trainers.training import train
from trainers.wandb_log import offline_runs
from tune_looped.run import main

pytestmark = pytest.mark.slow  # every test here runs a sweep on a real Ray

HYPOTHESES = [
    {"name": "information_flow", "grid": {"model.n_last_tokens": [2, -1]}},
    {"name": "looped_n_layers", "grid": {"model.n_layer": [1, 2]}},
    {"name": "looped_lstm", "grid": {"model.use_lstm_layer": [True, False], "model.n_layer": [1]}},
]


class Terminal(io.StringIO):
    """stderr as a terminal, where the analysis shows its progress bar."""

    def isatty(self):
        return True


def test_fractional_gpus_share_one_gpu(tmp_path, monkeypatch):
    """A logical GPU on a CPU machine: at 0.5 a trial, only 2 of the 4 run at a time, though 4 CPUs are free. A
    share that lets more run together is test_gpus.py::test_auto_packs_trials_onto_a_gpu_ray_is_told_of (0.125,
    the same path into Ray)."""
    space = write_space(tmp_path / "space.yaml", [{"name": "g", "grid": {"training.seed": [0, 1, 2, 3]}}])
    recorder = TrialEvents()
    recorder.install(monkeypatch)
    with TrialBarrier(2) as barrier:  # two short trials overlap: neither trains before both have started
        rc = main(["--space", str(space), "--storage", str(tmp_path / "r"), "--name", "g", "--num-cpus", "4",
                   "--no-dashboard", "--num-gpus", "1", "--gpus-per-trial", "0.5", "--no-report"])
    assert rc == 0 and len(barrier.held) == 2
    ids = {trial_id for _, trial_id in recorder.events}
    assert len(ids) == 4
    assert sorted(recorder.events) == sorted([("start", i) for i in ids] + [("end", i) for i in ids])
    assert recorder.max_running() == 2, recorder.events


def test_two_worker_nodes_share_the_trials(tmp_path, capsys):
    cluster = local_cluster(num_cpus=0)
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # two actors of one CPU each, one per node, whatever the trials' length
        base = apply_overrides(TINY_BASE, {"training.train_steps": 40})
        space = write_space(tmp_path / "space.yaml", [{"name": "n", "grid": {"training.seed": [0, 1, 2, 3]}}], base)
        rc = main(["--space", str(space), "--storage", str(tmp_path / "r"), "--name", "n",
                   "--address", cluster.address, "--no-report"])
    finally:
        cluster.shutdown()
    assert rc == 0
    assert "local path on a 3-node cluster" in capsys.readouterr().err
    trials = trial_dirs(tmp_path / "r" / "n")
    assert len(trials) == 4 and all(rows(t)[-1]["step"] == 39 for t in trials)
    assert len({rows(t)[-1]["node_id"] for t in trials}) == 2


def checkpointed_trial(experiment_dir: Path, before: int):
    """A running trial that has logged its second checkpoint and not yet step `before`: (trial_dir, its worker pid).
    The second: Tune writes a result's row before it registers the result's checkpoint, so a kill just after the
    first checkpoint's row can find none registered, and the retry starts again from step 0 (seen once on 2 busy
    cores); results are processed in order, so once the second's row is written the first is registered. Well
    before its last step, so that the kill cannot land after the trial has returned (then Tune has nothing to
    retry)."""
    for trial in trial_dirs(experiment_dir):
        done = rows(trial)
        if sum(bool(row.get("checkpoint_dir_name")) for row in done) >= 2:
            assert done[-1]["step"] < before, "the trial passed its first half before it was seen"
            return trial, done[-1]["pid"]
    return None


def worker_environment(pid: int) -> dict:
    """The environment a trial's worker process started with, as /proc keeps it."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_killed_worker_is_retried_from_its_checkpoint(tmp_path, monkeypatch, commands):
    """Also the W&B key, given only in the space's base config: in the trial worker's environment (so W&B can log
    online), and in no file under the results, the W&B folders or Ray's session, the retry's included."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    key = "fakekey" + "0123456789abcdef" * 2
    base = apply_overrides(TINY_BASE, {"training.train_steps": 200, "training.save_every_steps": 20,
                                       "training.eval_every_steps": 100, "wandb.log_every_steps": 20})
    keyed = {**base, "wandb": {**base["wandb"], "key": key, "project": "tiny"}}
    space = write_space(tmp_path / "space.yaml", [{"name": "k", "grid": {"training.seed": [7]}}], keyed)
    sweep = start_sweep(tmp_path, space, "--wandb", "--wandb-mode", "offline", commands=commands)
    trial, pid = wait_for(lambda: checkpointed_trial(tmp_path / "r" / "s", before=100), every=0.05)
    os.kill(pid, signal.SIGSTOP)  # held where it was seen, with at least 100 steps left: the kill lands mid-trial
    environment = worker_environment(pid)
    # this sweep's own session, not /tmp/ray/session_latest, which another test's Ray may have taken meanwhile
    session = Path("/tmp/ray") / ray_session_of(descendants(sweep.pid))
    os.kill(pid, signal.SIGKILL)
    out, err = finish(sweep, tmp_path)
    assert sweep.returncode == 0, err
    assert "1 finished" in out
    assert any(r["iterations_since_restore"] < r["training_iteration"] for r in rows(trial)), "no retry happened"
    assert environment.get("WANDB_API_KEY") == key, "the trial's worker did not receive the key"
    scanned = 0
    for root in (tmp_path / "r", session):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                scanned += 1
                assert key.encode() not in path.read_bytes(), path
    assert scanned > 20
    # the retry continued the trial's one W&B run: one folder, named by the trial's id, holding the flat config
    trial_id = rows(trial)[-1]["trial_id"]
    runs = list(trial.glob("wandb/offline-run-*"))
    assert [run.name.rsplit("-", 1)[1] for run in runs] == [trial_id]
    assert b"model.n_layer" in (runs[0] / f"run-{trial_id}.wandb").read_bytes()
    assert f"wandb sync {tmp_path / 'r' / 's'}/*/wandb/offline-run-*" in out
    # each attempt's log starts with the trial's label and values (the driver echoes it, prefixed by the process)
    label = f"trial {trial_id} LR_loop_L1_ends{{3}}_T{{2}}_seed7 hypotheses=k values={{\"training.seed\": 7}}"
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    echoed = [line.split(") ", 1)[1] for line in plain.splitlines() if line.startswith("(run_trial pid=")]
    assert echoed and echoed[0] == label, echoed[:3]
    logged = list(range(0, 200, 20)) + [199]
    state = load_checkpoint(sorted(trial.glob("checkpoint_*"))[-1])
    assert [r["step"] for r in state["metrics"]] == logged
    with warnings.catch_warnings():
        warnings.simplefilter("error", AnalysisWarning)  # a gap in the history would be a warning
        curves = load_curves(tmp_path / "r" / "s")
    assert curves["step"].tolist() == logged, "every logged step exactly once"
    # the same trial without the fault (and without W&B, which changes no number)
    reference = config_from_dict(apply_overrides(base, {"training.seed": 7}))
    clean = train(reference, out_dir=tmp_path / "clean", num_threads=1)
    uninterrupted = load_checkpoint(next((tmp_path / "clean" / "checkpoints").iterdir()))
    assert all(torch.equal(state["model"][k], uninterrupted["model"][k]) for k in state["model"])
    assert state["metrics"][-1]["eval/loss"] == clean["eval/loss"]
    assert curves["eval/loss"].dropna().iloc[-1] == clean["eval/loss"]


@pytest.mark.usefixtures("one_ray")
class TestOnOneRay:
    """Sweeps that need a live Ray but not one of their own share one, as a study's rounds do."""

    def test_three_hypotheses_dedup_and_report(self, tmp_path, capsys, monkeypatch):
        # a sampled key of one value (the base's): recorded and shown like any sampled key, without changing the trials
        space = write_space(tmp_path / "space.yaml", HYPOTHESES, sample={"model.n_head": "choice([2])"})
        terminal = Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        rc = main(["--space", str(space), "--storage", str(tmp_path / "results"), "--name", "h", "--num-cpus", "1",
                   "--no-dashboard"])
        out = capsys.readouterr().out
        # the analysis' bar: one step per trial's checkpoint evaluated (4) and per figure (6 for each of 3 hypotheses)
        bar = [part for part in terminal.getvalue().split("\r") if part.startswith("analysis:")]
        assert bar and re.match(r"analysis: 100%.*\b22/22\b", bar[-1]), bar[-1:]
        assert rc == 0
        assert "Ray dashboard" not in terminal.getvalue()  # --no-dashboard
        experiment = tmp_path / "results" / "h"
        trials = trial_dirs(experiment)
        assert len(trials) == 4
        # the runner's record in each trial folder: Tune's trial id, the hypotheses sharing the trial, the values
        tags = sorted(tuple(record(t)["hypotheses"]) for t in trials)
        assert tags == sorted([("information_flow",), ("information_flow", "looped_n_layers", "looped_lstm"),
                               ("looped_n_layers",), ("looped_lstm",)])
        assert all(record(t)["trial_id"] == rows(t)[-1]["trial_id"] for t in trials)
        keys = ("model.n_head", "model.n_last_tokens", "model.n_layer", "model.use_lstm_layer")
        assert sorted(tuple(record(t)["values"][k] for k in keys) for t in trials) == sorted(
            [(2, 2, 1, False), (2, -1, 1, False), (2, -1, 2, False), (2, -1, 1, True)])
        for trial in trials:
            steps = [r["step"] for r in rows(trial)]
            assert steps == [0, 5, 10, 15, 20, 25, 29]
        assert "4 finished" in out and str(experiment) in out
        # the progress line above each table: the share of the training FLOPs only grows, and ends the sweep at 100%
        shares = [int(m) for m in re.findall(r"^progress: (\d+)% of the training FLOPs; ", out, re.M)]
        assert len(shares) >= 2 and shares == sorted(shares) and shares[-1] == 100, shares
        assert re.search(r"^progress: 100% of the training FLOPs; 4 done, 0 running, 0 pending; elapsed [^;]+; ended$",
                         out, re.M)
        # Tune's live table: the swept keys under their short names, the hypotheses, the metrics, in 120 columns
        live = out.split("== 4 trials: 4 done")[-1].splitlines()
        assert live[1].startswith("hypotheses: 1 information_flow, 2 looped_n_layers, 3 looped_lstm")
        assert live[2].split() == ["trial", "status", "hyp", "n_head", "n_last_tokens", "n_layer", "lstm", "step",
                                   "n_loops", "n_points", "eval/loss", "eval/loss_last"]
        finals = [line.split() for line in live[3:7]]
        assert sorted(row[1] for row in finals) == ["done"] * 4 and all(row[7] == "29" for row in finals)
        assert {tuple(row[3:7]) for row in finals} == {("2", "2", "1", "False"), ("2", "-1", "1", "False"),
                                                       ("2", "-1", "2", "False"), ("2", "-1", "1", "True")}
        assert max(len(line) for line in live[:7]) <= 120
        assert yaml.safe_load((experiment / "space.yaml").read_text())["base"]["model"]["n_embd"] == 16
        for name in ("curves.parquet", "summary.parquet", "evaluation.parquet", "REPORT.md"):
            assert (experiment / name).stat().st_size > 0
        # the analysis took the trials' ids, hypotheses and values from the records
        summary = pd.read_parquet(experiment / "summary.parquet")
        assert sorted(summary["trial_id"]) == sorted(record(t)["trial_id"] for t in trials)
        assert sorted(summary["hypotheses"]) == sorted(";".join(sorted(tag)) for tag in tags)
        assert (summary["model.n_head"] == 2).all()
        assert list((experiment / "plots").glob("*.png"))

    def test_on_a_uri_storage_tune_uploads_each_trials_offline_run_into_its_folder(self, tmp_path, monkeypatch,
                                                                                    capsys):
        """The trial's working directory, where its W&B run is written, is uploaded (`sync_artifacts`): on a cluster
        with a URI storage, a run written on a worker node is not left behind there."""
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
        monkeypatch.chdir(tmp_path)  # the runner writes a URI storage's space record under the working directory
        space = write_space(tmp_path / "space.yaml", [{"name": "u", "grid": {"training.seed": [0]}}],
                            apply_overrides(TINY_BASE, {"training.train_steps": 40}))
        rc = main(["--space", str(space), "--storage", f"file://{tmp_path / 'r'}", "--name", "u", "--num-cpus", "1",
                   "--no-dashboard", "--wandb", "--wandb-mode", "offline", "--no-report"])
        assert rc == 0, capsys.readouterr().err
        (trial,) = trial_dirs(tmp_path / "r" / "u")
        runs = offline_runs(trial)
        assert [run.name.rsplit("-", 1)[1] for run in runs] == [rows(trial)[-1]["trial_id"]]
        assert (runs[0] / f"run-{rows(trial)[-1]['trial_id']}.wandb").stat().st_size > 0

    def test_asha_stops_trials_early_and_the_report_ranks_only_full_runs(self, tmp_path, capsys):
        # a learning rate that learns against one that cannot: at the rung (step 20) ASHA stops the trials whose
        # eval/loss is worse than those that reached it before them, one trial at a time
        base = apply_overrides(TINY_BASE, {"training.eval_prompts": 64})
        rates = {"name": "rates", "grid": {"training.learning_rate": [0.01, 1e-8]},
                 "reference": {"training.learning_rate": 0.01}, "expect": "better"}
        space = write_space(tmp_path / "space.yaml", [rates], base=base, seeds=[0, 1], max_concurrent=1,
                            scheduler={"type": "asha", "grace_period": 20, "reduction_factor": 2})
        rc = main(["--space", str(space), "--storage", str(tmp_path / "results"), "--name", "a", "--num-cpus", "1",
                   "--no-dashboard"])
        out = capsys.readouterr().out
        assert rc == 0
        experiment = tmp_path / "results" / "a"
        last = {record(t)["trial_id"]: rows(t)[-1]["step"] for t in trial_dirs(experiment)}
        stopped = sorted(trial for trial, step in last.items() if step < 29)
        assert stopped and len(stopped) < len(last)
        assert f"{len(last) - len(stopped)} finished, {len(stopped)} stopped early" in out
        summary = pd.read_parquet(experiment / "summary.parquet").set_index("trial_id")
        assert sorted(summary.index[summary["status"] == "stopped early"]) == stopped
        assert set(summary.loc[stopped, "last_step"]) == {20}
        report = (experiment / "REPORT.md").read_text()
        listed = report.split("### Stopped early")[1].split("###")[0]
        assert f"{len(stopped)} trial(s) stopped by the scheduler" in listed
        assert listed.count("| 20 | 30 |") == len(stopped)
        # the ranking counts the seeds that ran their full length only
        ranking = report.split("### Ranking")[1].split("###")[0]
        full = summary[summary["status"] == "finished"]
        for rate, group in summary.groupby("training.learning_rate"):
            seeds = int((full["training.learning_rate"] == rate).sum())
            label = f"learning_rate={rate:g}"
            assert re.search(rf"\| `{re.escape(label)}` \| {seeds} \|", ranking), (label, seeds, ranking)
