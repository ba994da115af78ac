"""Shared fixtures: tiny configs that train in a fraction of a second on one core, the server that runs the
tests' command lines and the finished experiments that tests copy."""
from pathlib import Path

import pytest
import yaml

from helpers.commands import Commands
from helpers.finished import Finished


TINY = {
    "model": {"family": "gpt2_loop", "n_embd": 32, "n_layer": 1, "n_head": 4, "n_dims": 5, "n_positions": 11},
    "training": {
        "batch_size": 16, "learning_rate": 0.001, "train_steps": 40, "save_every_steps": 20,
        "eval_every_steps": 20, "eval_prompts": 32, "n_loop_window": 3,
        # fixed, not auto (which takes MKL on most CPUs): the tests run oneDNN's products on every CPU type
        "onednn_linear": True,
        "curriculum": {
            "dims": {"start": 5, "end": 5, "inc": 1, "interval": 100},
            "points": {"start": 6, "end": 11, "inc": 1, "interval": 10},
            "loops": {"start": 3, "end": 6, "inc": 1, "interval": 20},
        },
    },
    "wandb": {"log_every_steps": 10},
}


# The workers take whole files in this order (`--dist loadfile --no-loadscope-reorder` in setup.cfg), the files
# with the most test time first (each file's time in a whole-suite run, 2026-12-05), then the rest in pytest's
# order: a long file taken last would leave the other worker idle. The slow tiers' files lead; those of the fast
# tier follow.
LONGEST_FIRST = ("test_reliability.py", "test_runner.py", "test_study.py", "test_extend.py", "test_stops.py",
                 "test_repair.py", "test_train.py", "test_gpus.py", "test_gpu_benchmark.py", "test_output.py",
                 "test_kernel.py", "test_cluster.py", "test_wandb_results.py", "test_bad_input.py", "test_lock.py",
                 "test_config.py", "test_analysis_outputs.py", "test_values.py", "test_analysis_baselines.py",
                 "test_results.py", "test_sequential.py", "test_calibration.py", "test_space.py", "test_plots.py",
                 "test_wandb_log.py", "test_yaml_file.py", "test_imports.py", "test_models.py")


def pytest_configure(config):
    # Two cores are shared by the test process and Ray's workers: one torch thread each avoids oversubscription.
    # Not in xdist's controller, which runs no test: torch's import there would hold back the workers' start.
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def tiny_raw():
    return yaml.safe_load(yaml.safe_dump(TINY))


@pytest.fixture
def tiny_config_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests, whatever a test before it (a training run's num_threads) left set."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def commands(tmp_path_factory):
    """Command lines run as `python -m ...` runs them, forked from one process that imported the programs once
    (helpers/commands.py); started by the first test that asks."""
    server = Commands(tmp_path_factory.mktemp("commands"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """Experiments analysed once per session, each test given a copy of its own (helpers/finished.py)."""
    return Finished(tmp_path_factory.mktemp("finished"))


@pytest.fixture(scope="class")
def one_ray():
    """The in-process sweeps of a class share the Ray the first of them starts, as a study's rounds do
    (tune_looped/cluster.py, `ray_held`); it is shut down after the class."""
    from tune_looped.cluster import ray_held

    with ray_held():
        yield
