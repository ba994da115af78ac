"""The benchmarks' arithmetic and bookkeeping (the timings themselves are not tested)."""
import json
import time
from pathlib import Path

import pytest
import torch

from trainers.flops import step_flops, training_flops
from benchmarks import TABLE_STYLE
from benchmarks.machine import OtherLoad, PeakMemory, cpu_flags
from benchmarks.step import benchmark_label, variants
from benchmarks.sweep import shortened_space, timing_row
from trainers.config import load_config, parse_override_args
from trainers.curriculum import curriculum_at, final_state
from trainers.table import render
from tune_looped.space import load_space, trial_config

BASE_LOOP = Path(__file__).resolve().parents[1] / "search_spaces" / "configs" / "base_loop.yaml"


def _research(*overrides):
    config = load_config(BASE_LOOP, parse_override_args(list(overrides)))
    return config, final_state(config.training.curriculum)


def test_research_step_flops_by_hand():
    config, state = _research()
    flops = step_flops(config, state)
    tokens, C = 64 * 82, 256
    linear = 24 * C * C * tokens
    assert (flops.forward_passes, flops.window) == (15, 15)
    assert flops.backbone == linear + 4 * 82 * C * tokens
    # the "roughly 495 GFLOP": the linear layers alone, 15 forward and 15 forward + backward passes
    assert round(60 * linear / 1e9) == 495
    assert round(flops.total / 1e9, 1) == 521.9 and "= 521.9 GFLOP" in flops.formula


@pytest.mark.parametrize("overrides,passes", [
    (["--model.n_layer", "3"], (15, 15)),
    (["--training.n_loop_window", "40"], (0, 30)),
    (["--model.family", "gpt2", "--model.n_layer", "12"], (0, 1)),
])
def test_step_flops_scale_with_layers_and_loops(overrides, passes):
    config, state = _research(*overrides)
    flops = step_flops(config, state)
    assert (flops.forward_passes, flops.window) == passes
    assert flops.backbone == config.model.n_layer * step_flops(*_research()).backbone


def test_lstm_flops_count_four_gates_of_two_products():
    config, state = _research("--model.use_lstm_layer", "true", "--model.n_layer", "2")
    assert step_flops(config, state).backbone == 2 * 64 * 82 * 16 * 256 * 256


def test_variants_are_the_hypotheses_trials():
    assert list(variants("quick")) == ["n_last_tokens=8 L=1", "n_last_tokens=10 L=1", "n_last_tokens=23 L=1",
                                       "n_last_tokens=31 L=1", "L=1", "L=2", "L=3", "L=1 LSTM", "L=2 LSTM", "L=3 LSTM"]
    assert benchmark_label({"model.n_layer": 2, "model.use_lstm_layer": True}) == "L=2 LSTM"
    assert "n_last_tokens=75 L=1" in variants("research")


def test_peak_memory_sees_a_large_cpu_allocation():
    with PeakMemory(torch.device("cpu")) as memory:
        block = torch.ones(64, 2**20)  # 256 MiB, touched
        del block
    assert memory.peak >= 200 * 2**20


def test_other_load_is_a_share():
    with OtherLoad() as load:
        time.sleep(0.2)
    assert 0.0 <= load.share <= 1.0


def test_shortened_space_trains_fewer_steps(tmp_path):
    path = shortened_space("hypotheses", 50, {"training.compile": True}, tmp_path)
    space = load_space(path, quick=True)
    assert space.base["training"]["train_steps"] == 50 and space.base["training"]["compile"] is True
    assert len(space.trials) == 30  # 10 configurations x 3 seeds


def _trial(folder, elapsed, start, steps=100):
    folder.mkdir()
    rows = [{"step": 0, "elapsed_s": 0.1, "wall_time": start + 2, "time_total_s": 2.0},
            {"step": steps - 1, "elapsed_s": elapsed, "wall_time": start + elapsed + 3, "time_total_s": elapsed + 3}]
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "params.json").write_text("{}")  # Ray's, there from the trial's start: what makes it a trial folder


def test_timing_row_compares_wall_time_with_training_time_per_slot(tmp_path):
    _trial(tmp_path / "a", 10.0, 1000.0)
    _trial(tmp_path / "b", 10.0, 1000.0)
    _trial(tmp_path / "c", 20.0, 1013.0)
    row = timing_row("2 x 1", tmp_path, slots=2, wall=50.0, started=995.0)
    assert row["sum training s"] == 40.0 and row["ideal s"] == 20.0 and row["trials span s"] == 36.0
    assert row["wall / ideal"] == 2.5 and row["before first trial s"] == 5.0 and row["after last trial s"] == 9.0


def test_markdown_table():
    lines = render(["a", "b"], [[1, 0.12345], ["x", 1234.5]], markdown=True, **TABLE_STYLE)
    assert lines == ["| a | b |", "|---|---|", "| 1 | 0.123 |", "| x | 1234 |"]


@pytest.mark.parametrize("space, quick", [("hypotheses", False), ("hypotheses", True), ("baseline", True)])
def test_training_flops_add_up_every_step(space, quick):
    loaded = load_space(space, quick=quick)
    config = trial_config(loaded.base, loaded.trials[-1].values)
    curriculum = config.training.curriculum
    by_hand = sum(step_flops(config, curriculum_at(curriculum, step)).total for step in range(config.training.train_steps))
    assert training_flops(config) == by_hand


@pytest.mark.parametrize("flags, named", [
    ("fpu sse2 avx avx2 fma bmi2", "avx2 fma"),  # an AVX2-only CPU, as on the 2-core development machine
    ("avx avx2 fma avx512f avx512dq avx512_bf16 avx512_vp2intersect avx512_vnni", "avx2 fma avx512f avx512_bf16 "
     "avx512_vnni avx512_vp2intersect"),  # the Zen 5 machine of the first tables, in SIMD_FLAGS' order
    ("fpu sse2", "none of avx2 fma avx512f avx512_bf16 avx512_vnni avx512_vp2intersect amx_tile amx_bf16"),
])
def test_the_tables_name_the_cpus_simd_flags(flags, named):
    cpuinfo = f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert cpu_flags(cpuinfo) == named
    assert cpu_flags("processor\t: 0\n") == "unknown"
