"""`resources.gpu: auto`: the research-scale spaces take a share of each GPU from the trials' estimated memory, or
warn with the projected CPU time; an explicit share wins. Checked on CPU, with Ray told it has a GPU."""
import glob
import re

import pytest

from helpers.sweeps import TINY_BASE, TrialBarrier, TrialEvents, local_cluster, rows, trial_dirs, write_space
from trainers.config import apply_overrides
from trainers.wandb_log import offline_runs
from tune_looped.gpus import ASSUMED_GPU_MEMORY, CPU_FLOPS, cpu_hours, gpu_share, trial_memory
from tune_looped.run import main
from tune_looped.space import load_space, trial_config

GIB = 2**30


def test_the_research_spaces_ask_for_a_share_of_each_gpu():
    for name in ("hypotheses", "baseline", "information_flow", "looped_lstm", "looped_n_layers"):
        assert load_space(name).resources == {"cpu": 1, "gpu": "auto"}


@pytest.mark.parametrize("needed, share", [(4.6 * GIB, 0.2), (30 * GIB, 1.0), (13 * GIB, 1.0), (0.6 * GIB, 0.125)])
def test_the_share_is_one_over_the_trials_that_fit(needed, share):
    assert gpu_share(int(needed), ASSUMED_GPU_MEMORY) == share


def test_the_estimate_grows_with_layers_and_stays_near_the_measured_peak():
    space = load_space("hypotheses")
    by_layers = {t.values["model.n_layer"]: trial_memory(trial_config(space.base, t.values))
                 for t in space.trials if not t.values.get("model.use_lstm_layer") and "model.n_layer" in t.values}
    assert by_layers[1] < by_layers[2] < by_layers[3]
    # benchmarks/RESULTS.md: peak memory of the research-scale step on the CPU, L1 1763 and L3 4409 MiB
    assert 0.8 < by_layers[1] / (1763 * 2**20) < 1.25 and 0.8 < by_layers[3] / (4409 * 2**20) < 1.25


def test_on_a_cpu_only_machine_one_warning_gives_the_projected_time(capsys):
    assert main(["--space", "hypotheses", "--dry-run", "--num-gpus", "0"]) == 0
    err = capsys.readouterr().err.splitlines()
    space = load_space("hypotheses")
    hours = cpu_hours([trial_config(space.base, t.values) for t in space.trials])
    assert len(err) == 1 and err[0].startswith("warning: no GPU found: the 30 trials train on the CPU")
    assert f"about {sum(hours) / len(hours):.1f} h each" in err[0] and f"{CPU_FLOPS / 1e9:.0f} GFLOP/s" in err[0]
    assert 15 < hours[0] < 25  # the L1 trial: 20001 steps at 0.5 steps/s on one core of the benchmark machine


def test_the_quick_study_and_an_explicit_share_take_no_estimate(capsys):
    assert main(["--space", "hypotheses", "--quick", "--dry-run", "--num-gpus", "0"]) == 0
    assert main(["--space", "hypotheses", "--dry-run", "--num-gpus", "1", "--gpus-per-trial", "0.5"]) == 0
    assert capsys.readouterr().err == ""


def test_a_batch_beyond_ten_times_the_memory_is_refused(tmp_path, capsys):
    space = write_space(tmp_path / "space.yaml", [{"name": "b", "grid": {"training.batch_size": [8, 10**9]}}])
    assert main(["--space", str(space), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {space}: trial batch_size=1000000000: training.batch_size: a trial "
                                        "must fit in 10 times this machine's memory (")
    assert err.endswith(" GiB (training.batch_size 1000000000)\n") and len(err.splitlines()) == 1


def test_a_batch_beyond_the_memory_is_warned_of(tmp_path, capsys, monkeypatch):
    space = write_space(tmp_path / "space.yaml", [{"name": "b", "grid": {"training.batch_size": [8, 64]}}])
    needed = trial_memory(trial_config(load_space(space).base, {"training.batch_size": 64}))
    monkeypatch.setattr("psutil.virtual_memory", lambda: type("Memory", (), {"total": needed - 1})())
    assert main(["--space", str(space), "--dry-run"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {space}: trial batch_size=64: a trial needs an estimated ")
    assert "(training.batch_size 64), more than this machine's" in err[0]


@pytest.mark.slow
def test_auto_packs_trials_onto_a_gpu_ray_is_told_of(tmp_path, capsys, monkeypatch):
    """Tiny trials need little memory: the smallest share, so 3 trials (one per CPU) run together on one GPU, where
    half a GPU each lets only 2 (test_runner.py::test_fractional_gpus_share_one_gpu)."""
    space = write_space(tmp_path / "space.yaml", [{"name": "g", "grid": {"training.seed": [0, 1, 2]}}],
                        resources={"cpu": 1, "gpu": "auto"})
    recorder = TrialEvents()
    recorder.install(monkeypatch)
    with TrialBarrier(3) as barrier:  # the 3 short trials overlap: none trains before all have started
        rc = main(["--space", str(space), "--storage", str(tmp_path / "r"), "--name", "g", "--num-cpus", "3",
                   "--no-dashboard", "--num-gpus", "1", "--no-report"])
    assert rc == 0 and len(barrier.held) == 3
    assert re.search(r"resources.gpu auto: each trial gets 0.125 of a GPU", capsys.readouterr().err)
    assert recorder.max_running() == 3, recorder.events


@pytest.mark.slow
def test_auto_counts_the_gpus_of_the_cluster_not_of_its_cpu_only_head(tmp_path, capsys, monkeypatch):
    """A head node without GPUs and a worker node with a logical GPU: the trials get a share of the worker's. With
    W&B offline, each trial's run is in its folder of the (shared) storage, where the sync line finds it, beside
    the analysis run."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # no key wandb could find, so `auto` means offline (HOME stays: Ray, started again in this process, needs it)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    cluster = local_cluster(num_cpus=1, num_gpus=0)
    try:
        # one CPU: the trials take turns in one worker, which imports the trainable and W&B once
        worker = cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        base = apply_overrides(TINY_BASE, {"training.train_steps": 40, "training.eval_prompts": 16})
        space = write_space(tmp_path / "space.yaml", [{"name": "g", "grid": {"training.seed": [0, 1]}}], base,
                            resources={"cpu": 1, "gpu": "auto"})
        rc = main(["--space", str(space), "--storage", str(tmp_path / "r"), "--name", "g", "--address",
                   cluster.address, "--wandb"])
    finally:
        cluster.shutdown()
    assert rc == 0
    out, err = capsys.readouterr()
    assert "resources.gpu auto: each trial gets 0.125 of a GPU" in err and "of its 24 GiB" in err
    experiment = tmp_path / "r" / "g"
    trials = trial_dirs(experiment)
    assert len(trials) == 2 and {rows(t)[-1]["node_id"] for t in trials} == {worker.node_id}
    for trial in trials:
        assert [run.name.rsplit("-", 1)[1] for run in offline_runs(trial)] == [rows(trial)[-1]["trial_id"]]
    patterns = re.search(r"W&B: 3 offline runs; upload them with:\n  wandb sync (.+)", out).group(1).split()
    named = sorted(path for pattern in patterns for path in glob.glob(pattern))
    assert named == sorted(str(run) for run in offline_runs(experiment) + [r for t in trials for r in offline_runs(t)])
    assert [run.name.endswith("-g-analysis") for run in offline_runs(experiment)] == [True]
