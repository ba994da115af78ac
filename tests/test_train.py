"""The training loop: learning, determinism, bit-exact resume, checkpoints and the single-run CLI."""
import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from trainers.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from trainers.config import config_from_dict
from trainers.curriculum import CurriculumState
from trainers.models import build_model
from trainers import onednn as onednn_module
from trainers.onednn import ONEDNN, Linear, preferred_library, read_cpu
from trainers.records import METRIC_KEYS
from trainers.dotted import set_dotted
from trainers.training import (CUDA_GRAPH_WARMUP_STEPS, StepRunner, make_optimizer, prepare_model,
                               resolve_device, train, uses_cuda_graphs)

REPO = Path(__file__).resolve().parents[1]


def _config(raw, **overrides):
    for dotted, value in overrides.items():
        raw = set_dotted(raw, dotted.replace("__", "."), value)
    return config_from_dict(raw)


def _params(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir))["model"]


def test_rows_checkpoints_and_eval(tmp_path, tiny_raw):
    rows, saved = [], []
    last = train(_config(tiny_raw), out_dir=tmp_path, reporter=lambda r, c: (rows.append(r), saved.append(c)))
    assert [r["step"] for r in rows] == [0, 10, 20, 30, 39]
    assert [r["step"] for r, c in zip(rows, saved) if c is not None] == [20, 39]
    assert {"eval/loss", "eval/loss_last"} <= set(rows[0]) and "eval/loss" not in rows[1]
    assert [r["n_loops"] for r in rows] == [3, 3, 4, 4, 4] and [r["n_points"] for r in rows] == [6, 7, 8, 9, 9]
    assert last == rows[-1] and all(r["grad_norm"] > 0 for r in rows)
    assert all(r["lr"] == 0.001 and r["n_dims"] == 5 for r in rows)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000039"]
    state = load_checkpoint(tmp_path / "checkpoints" / "step_000039")
    assert state["step"] == 40 and state["metrics"] == rows and state["config"]["model"]["n_embd"] == 32


def test_rows_hold_exactly_the_keys_a_space_may_name_as_metric(tmp_path, tiny_raw):
    rows = []
    train(_config(tiny_raw, training__train_steps=12), out_dir=tmp_path, reporter=lambda r, c: rows.append(r))
    assert [r["step"] for r in rows] == [0, 10, 11]
    assert list(rows[0]) == list(METRIC_KEYS)  # an evaluation step
    assert list(rows[1]) == [k for k in METRIC_KEYS if not k.startswith("eval/")]


def test_keep_every_steps_keeps_permanent_copies(tmp_path, tiny_raw):
    train(_config(tiny_raw, training__keep_every_steps=20, training__save_every_steps=10), out_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000020", "step_000039"]


def test_every_step_is_evaluated_and_kept_when_asked(tmp_path, tiny_raw):
    rows = []
    train(_config(tiny_raw, training__train_steps=3, training__eval_every_steps=1, training__save_every_steps=1,
                  training__keep_every_steps=1, wandb__log_every_steps=1), out_dir=tmp_path,
          reporter=lambda r, c: rows.append((r, c)))
    assert [r["step"] for r, _ in rows] == [0, 1, 2] and all("eval/loss" in r for r, _ in rows)
    # step 0 is evaluated but not saved: a checkpoint of the untrained model is worth nothing
    assert [c is not None for _, c in rows] == [False, True, True]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000001", "step_000002"]


@pytest.mark.parametrize("device, cuda, n_gpu, available, expected", [
    ("auto", True, 1, True, "cuda"),
    ("auto", True, 2, True, "cuda"),
    ("auto", False, 1, True, "cpu"),
    ("auto", True, 0, True, "cpu"),
    ("auto", True, 1, False, "cpu"),
    ("cpu", True, 1, True, "cpu"),
])
def test_auto_device_follows_the_gpu_section(monkeypatch, tiny_raw, device, cuda, n_gpu, available, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    config = _config(tiny_raw, training__device=device, gpu__cuda=cuda, gpu__n_gpu=n_gpu)
    assert resolve_device(config) == torch.device(expected)
    assert resolve_device(config, "cpu") == torch.device("cpu")  # the caller (Ray's placement) decides


def test_optimizer_takes_the_learning_rate_and_weight_decay(tiny_raw):
    config = _config(tiny_raw, training__learning_rate=0.003, training__weight_decay=0.1)
    model = build_model(config.model)
    (group,) = make_optimizer(model, config, torch.device("cpu")).param_groups
    assert (group["lr"], group["weight_decay"], group["capturable"]) == (0.003, 0.1, False)
    assert sum(p.numel() for p in group["params"]) == sum(p.numel() for p in model.parameters())


def test_same_seed_same_parameters_other_seed_differs(tmp_path, tiny_raw):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train(_config(tiny_raw, training__seed=seed, training__train_steps=10), out_dir=tmp_path / name)
    a, b, c = (_params(tmp_path / n) for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


RESUME_CASES = {
    "loop": {},
    "gpt2": {"model__family": "gpt2"},
    "loop-lstm": {"model__use_lstm_layer": True},
    "gpt2-lstm": {"model__family": "gpt2", "model__use_lstm_layer": True},
    "multiplicative": {"model__loop_func": "z=f(x*z)"},
    "last-tokens-0": {"model__n_last_tokens": 0},
    "last-tokens-3": {"model__n_last_tokens": 3},
    "bf16": {"training__precision": "bf16"},
}


@pytest.mark.parametrize("overrides", RESUME_CASES.values(), ids=RESUME_CASES.keys())
def test_resume_is_bit_identical(tmp_path, tiny_raw, overrides):
    """N steps + resume + N steps == 2N uninterrupted steps, across a curriculum change."""
    # the tiny curriculum at twice its pace, so that half the steps cross the same changes: points and loops both
    # step up at the checkpoint the run resumes from, and points again after it
    paced = dict(overrides, training__curriculum__points__interval=5, training__curriculum__loops__interval=10,
                 training__eval_every_steps=10, training__save_every_steps=10, wandb__log_every_steps=5)
    full = _config(tiny_raw, **paced, training__train_steps=20)
    rows_full = []
    train(full, out_dir=tmp_path / "full", reporter=lambda r, c: rows_full.append(r))
    assert [(r["n_points"], r["n_loops"]) for r in rows_full] == [(6, 3), (7, 3), (8, 4), (9, 4), (9, 4)]
    half = _config(tiny_raw, **paced, training__train_steps=11)
    train(half, out_dir=tmp_path / "split")
    first = tmp_path / "split" / "checkpoints" / "step_000010"
    rows_resumed = []
    train(full, out_dir=tmp_path / "split", resume_from=first, reporter=lambda r, c: rows_resumed.append(r))
    a, b = _params(tmp_path / "full"), _params(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the resumed run replaced the checkpoint it started from, as an uninterrupted run would have
    assert [p.name for p in (tmp_path / "split" / "checkpoints").iterdir()] == ["step_000019"]
    strip = ("elapsed_s", "steps_per_s", "prompts_per_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows_full[-2:]] == \
           [{k: v for k, v in r.items() if k not in strip} for r in rows_resumed]
    # the case ran as named: its setting reached the checkpoint's config
    saved = load_checkpoint(latest_checkpoint(tmp_path / "split"))["config"]
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        assert saved[section][key] == value


def test_divergence_stops_and_reports(tmp_path, tiny_raw):
    # Adam's first step moves every weight by about the learning rate: at 1e30 the next forward pass overflows
    # float32 on any CPU (tests/test_reliability.py, DIVERGING_LR), so the run diverges at step 1 by construction
    rows = []
    row = train(_config(tiny_raw, training__learning_rate=1e30, training__train_steps=200), out_dir=tmp_path,
                reporter=lambda r, c: rows.append((r, c)))
    assert row["diverged"] is True and row["step"] == 1 and rows[-1] == (row, None)
    # on the CPU every step is checked: the run stopped at the first non-finite loss, so the same run cut one
    # step earlier ends finite
    before = train(_config(tiny_raw, training__learning_rate=1e30, training__train_steps=1),
                   out_dir=tmp_path / "before")
    assert "diverged" not in before and math.isfinite(before["overall_loss"]) and before["step"] == 0


def test_a_checkpoint_step_off_the_logging_cadence_is_reported(tmp_path, tiny_raw):
    rows = []
    train(_config(tiny_raw, training__train_steps=18, training__save_every_steps=15, training__eval_every_steps=20),
          out_dir=tmp_path, reporter=lambda r, c: rows.append((r["step"], c is not None)))
    assert rows == [(0, False), (10, False), (15, True), (17, True)]


def test_resumed_clock_continues_from_the_checkpoint(tmp_path, tiny_raw):
    """elapsed_s after a resume adds to the checkpoint's last row (here set to 1000 s), not to another row's."""
    train(_config(tiny_raw, training__train_steps=21, training__save_every_steps=20), out_dir=tmp_path)
    checkpoint = tmp_path / "checkpoints" / "step_000020"
    state = load_checkpoint(checkpoint)
    state["metrics"] = [{**row, "elapsed_s": 1.0} for row in state["metrics"][:-1]] + \
                       [{**state["metrics"][-1], "elapsed_s": 1000.0}]
    save_checkpoint(checkpoint, state)
    rows = []
    train(_config(tiny_raw), out_dir=tmp_path, resume_from=checkpoint, reporter=lambda r, c: rows.append(r))
    assert [r["step"] for r in rows] == [30, 39] and all(r["elapsed_s"] > 1000.0 for r in rows)


def _cli(commands, *args, cwd):
    """`python -m trainers.train` as a fresh interpreter runs it, forked from the tests' command server."""
    return commands.run(["-m", "trainers.train", *args], cwd=cwd, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_cli_runs_the_research_command_line_and_resumes(tmp_path, tiny_config_file, commands):
    common = ["--config", str(tiny_config_file), "--model.n_layer", "1", "--training.curriculum.loops.end", "6",
              "--training.n_loop_window", "3", "--wandb.name", "LR_loop_L1_ends{6}_T{3}", "--gpu.n_gpu", "0",
              "--out_dir", str(tmp_path / "runs")]
    first = _cli(commands, *common, "--training.train_steps", "21", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "runs" / "LR_loop_L1_ends{6}_T{3}"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["n_layer"] == 1
    again = _cli(commands, *common, cwd=tmp_path)
    assert again.returncode == 2 and "add --resume" in again.stderr
    resumed = _cli(commands, *common, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 10, 20, 30, 39]
    assert "ray" not in (run_dir / "config.yaml").read_text()


@pytest.mark.slow
def test_cli_does_not_import_ray(tmp_path, tiny_config_file):
    """Run as `python -m trainers.train` does: no Ray, and the entry module executes once (no module imports
    it by name, which would run it a second time as `trainers.train` besides `__main__`)."""
    argv = ["trainers.train", "--config", str(tiny_config_file), "--training.train_steps", "2",
            "--out_dir", str(tmp_path)]
    code = (f"import runpy, sys\nsys.argv = {argv!r}\n"
            "try:\n    runpy.run_module('trainers.train', run_name='__main__', alter_sys=True)\n"
            "finally:\n    assert 'ray' not in sys.modules and 'trainers.train' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / tiny_config_file.stem / "metrics.jsonl").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["--training.train_steps", "zero"], "training.train_steps: expected an integer"),
    (["--model.n_layr", "2"], "model.n_layr: unknown key"),
    (["--resume"], "--resume: no checkpoint under"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, tiny_config_file, commands, args, message):
    done = _cli(commands, "--config", str(tiny_config_file), "--out_dir", str(tmp_path / "runs"), *args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_cli_missing_config_file(tmp_path, commands):
    done = _cli(commands, "--config", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert done.returncode == 2 and "nope.yaml: cannot read config file" in done.stderr


@pytest.mark.slow
def test_compiled_backbone_trains_close_to_eager_and_resumes_bit_identically(tmp_path, tiny_raw):
    """training.compile: same parameters (names and values within float rounding); resume stays exact."""
    full = _config(tiny_raw, training__compile=True, training__train_steps=40, training__save_every_steps=20)
    train(full, out_dir=tmp_path / "full")
    train(_config(tiny_raw, training__compile=True, training__train_steps=21, training__save_every_steps=20),
          out_dir=tmp_path / "split")
    train(full, out_dir=tmp_path / "split", resume_from=tmp_path / "split" / "checkpoints" / "step_000020")
    train(_config(tiny_raw, training__train_steps=40), out_dir=tmp_path / "eager")
    compiled, resumed, eager = (_params(tmp_path / n) for n in ("full", "split", "eager"))
    assert compiled.keys() == eager.keys()
    assert all(torch.equal(compiled[k], resumed[k]) for k in compiled)
    assert all(torch.allclose(compiled[k], eager[k], rtol=1e-3, atol=1e-4) for k in compiled)


@pytest.mark.parametrize("enabled", [True, False, "auto"])
def test_onednn_linear_option_reaches_every_block_layer(tiny_raw, enabled):
    config = _config(tiny_raw, training__onednn_linear=enabled)
    model = prepare_model(build_model(config.model), config)
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    # auto as training takes it, so that benchmarks.step measures what a trial runs
    expected = preferred_library(read_cpu())[0] if enabled == "auto" else enabled
    assert len(layers) == 4 and all(m.onednn == (expected and ONEDNN) for m in layers)


def test_cuda_graphs_off_cuda_warn_and_run_eagerly(tmp_path, tiny_raw):
    with pytest.warns(UserWarning, match="training.cuda_graphs: the run is on cpu"):
        # on the CPU by name: `auto` takes CUDA on a GPU machine, where the graphs would run
        train(_config(tiny_raw, training__cuda_graphs=True, training__train_steps=10, training__device="cpu"),
              out_dir=tmp_path / "a")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(_config(tiny_raw, training__train_steps=10, training__device="cpu"), out_dir=tmp_path / "b")
    assert not [w for w in caught if "cuda_graphs" in str(w.message)], "warned without training.cuda_graphs"
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


class RecordingRunner(StepRunner):
    """StepRunner's CUDA-graph bookkeeping with the CUDA calls replaced by a log of what each one was given."""

    def __init__(self, config):
        super().__init__(None, None, config, torch.device("cpu"))
        self.graphed, self.log = True, []

    def _side_stream_step(self, xs, ys, state):
        self.log.append(("eager", state.n_points, xs, ys))
        return xs, ys

    def _capture(self, xs, ys, state):
        self.log.append(("capture", state.n_points, xs, ys))
        self.graph = object()

    def _replay(self, xs, ys):
        self.log.append(("replay", xs, ys))
        return xs, ys


@pytest.mark.parametrize("enabled, device, expected", [(True, "cuda", True), (True, "cuda:1", True),
                                                       (True, "cpu", False), (False, "cuda", False)])
def test_cuda_graphs_only_on_cuda_and_when_asked(tiny_raw, enabled, device, expected):
    assert uses_cuda_graphs(_config(tiny_raw, training__cuda_graphs=enabled), torch.device(device)) is expected


def test_cuda_graph_captured_once_per_curriculum_state_after_warm_up(tiny_raw):
    runner = RecordingRunner(_config(tiny_raw))
    small, large = CurriculumState(5, 6, 3), CurriculumState(5, 7, 3)
    states = [small] * 5 + [large] * 4
    # each step's batch must reach the eager step, the capture and the replay it runs
    returned = [runner(f"xs{step}", f"ys{step}", state) for step, state in enumerate(states)]
    assert returned == [(f"xs{step}", f"ys{step}") for step in range(len(states))]
    warm = CUDA_GRAPH_WARMUP_STEPS
    assert warm >= 1
    expected, step = [], 0
    for n_points, count in ((6, 5), (7, 4)):
        for i in range(count):
            batch = (f"xs{step}", f"ys{step}")
            if i < warm:
                expected.append(("eager", n_points, *batch))
            else:
                if i == warm:
                    expected.append(("capture", n_points, *batch))
                expected.append(("replay", *batch))
            step += 1
    assert runner.log == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_train_like_eager_cuda_across_curriculum_changes(tmp_path, tiny_config_file):
    rows = {}
    for name, graphs in (("eager", "false"), ("graphs", "true")):
        # each in a fresh interpreter, as a trial runs: there the first capture is the process's first, and a
        # memory pool shared between captures broke at the next curriculum state (StepRunner says how). Not the
        # `commands` server's fork: it preloads Ray, which the GPU machine lacks. A row every 5 steps: steps 15,
        # 25 and 35 are replays (a state's steps 0-2 run eagerly and its step 3 is captured)
        done = subprocess.run([sys.executable, "-m", "trainers.train", "--config", str(tiny_config_file), "--device",
                               "cuda", "--training.cuda_graphs", graphs, "--wandb.log_every_steps", "5",
                               "--out_dir", str(tmp_path / name)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        rows[name] = [json.loads(line) for line in
                      (tmp_path / name / tiny_config_file.stem / "metrics.jsonl").read_text().splitlines()]
    a, b = (_params(tmp_path / name / tiny_config_file.stem) for name in ("eager", "graphs"))
    # the keys' bias is left out: it shifts every score of a query alike, so softmax cancels it and its gradient is
    # rounding noise, which Adam scales up to steps of the learning rate's size. Two CPU runs that differ only in
    # rounding (MKL against oneDNN, this config) part there by 3e-5 in 40 steps, every other parameter by 3e-8 at
    # most; the graphed run's Adam is `capturable`, which rounds otherwise than the eager run's
    n_embd = yaml.safe_load(tiny_config_file.read_text())["model"]["n_embd"]
    for name in a:
        x, y = a[name], b[name]
        if name.endswith("attn.c_attn.bias"):  # (3 * n_embd,): query, key, value
            x, y = torch.cat([x[:n_embd], x[2 * n_embd:]]), torch.cat([y[:n_embd], y[2 * n_embd:]])
        assert torch.allclose(x, y, rtol=1e-3, atol=1e-5), name
    assert [r["step"] for r in rows["graphs"]] == [r["step"] for r in rows["eager"]]
    # the replayed steps return their own loss and grad norm, not a stale copy of the captured step's: every
    # row, eager warm-up or replay, agrees with the eager run's to the parameters' tolerance
    for eager, graphed in zip(rows["eager"], rows["graphs"]):
        for key in ("overall_loss", "grad_norm", "eval/loss", "eval/loss_last"):
            assert (key in graphed) == (key in eager), (eager["step"], key)
            if key in eager:
                assert graphed[key] == pytest.approx(eager[key], rel=1e-3, abs=1e-5), (eager["step"], key)
    assert len({r["overall_loss"] for r in rows["graphs"]}) == len(rows["graphs"])


def documented_keys() -> list[str]:
    """The dotted keys of docs/CONFIG.md's table: `model.n_embd`, `n_layer` (a key after the first of a row is of
    its section), `training.curriculum.{dims,points,loops}`."""
    keys = []
    table = (REPO / "docs" / "CONFIG.md").read_text().split("## Keys")[1].split("\n\n")[1]
    for line in table.splitlines()[2:]:
        names = re.findall(r"`([^`]+)`", line.split("|")[1])
        section = names[0].rsplit(".", 1)[0]
        for name in names:
            dotted = name if "." in name else f"{section}.{name}"
            head, _, options = dotted.partition("{")
            keys += [head + option for option in options.rstrip("}").split(",")] if options else [dotted]
    return keys


def test_help_lists_every_config_key_with_its_default(capsys):
    from trainers.train import main

    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    listed = re.findall(r"^\s+--((?:model|training|wandb|gpu)\.\S+)\s+(\S+)", text, re.M)
    assert ("model.n_embd", "256") in listed and ("training.curriculum.loops.end", "30") in listed
    missing = [key for key in documented_keys() if not any(k == key or k.startswith(f"{key}.") for k, _ in listed)]
    assert not missing and len(documented_keys()) > 30, missing


def test_print_config_prints_the_resolved_config_and_trains_nothing(tmp_path, capsys):
    from trainers.train import main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"inherit": [str(REPO / "search_spaces/configs/base_loop.yaml")],
                                      "wandb": {"key": "0123456789abcdef0123456789abcdef01234567"}}))
    assert main(["--config", str(config), "--model.n_layer=2", "--print-config", "--out_dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert printed["model"]["n_layer"] == 2 and printed["training"]["train_steps"] == 20001
    assert "0123456789abcdef" not in out and not (tmp_path / "runs").exists()


@pytest.mark.skipif(not ONEDNN, reason="this torch has no oneDNN")
def test_onednn_auto_takes_this_cpus_library_says_why_and_trains_as_that_one_does(tmp_path, tiny_raw, capsys):
    chosen, why = preferred_library(read_cpu())
    train(_config(tiny_raw, training__onednn_linear="auto", training__train_steps=25), out_dir=tmp_path / "auto")
    assert capsys.readouterr().out.splitlines()[0] == f"training.onednn_linear auto: {why}"
    state = load_checkpoint(latest_checkpoint(tmp_path / "auto"))
    assert state["onednn_linear"] is chosen and state["products"] == ("oneDNN" if chosen else "MKL")
    for name, onednn in (("same", chosen), ("other", not chosen)):
        train(_config(tiny_raw, training__onednn_linear=onednn, training__train_steps=25), out_dir=tmp_path / name)
    a, same, other = (_params(tmp_path / n) for n in ("auto", "same", "other"))
    assert all(torch.equal(a[k], same[k]) for k in a)
    assert all(torch.allclose(a[k], other[k], rtol=1e-3, atol=1e-4) for k in a)


@pytest.mark.skipif(not ONEDNN, reason="this torch has no oneDNN")
def test_a_run_resumed_on_another_cpu_type_keeps_the_library_its_checkpoint_records(tmp_path, tiny_raw, capsys,
                                                                                    monkeypatch):
    """Started where `auto` takes oneDNN (AVX-512 AMD), resumed where it takes MKL (AVX2 only): the resumed run
    stays on oneDNN, bit for bit."""
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(onednn_module, "CPUINFO", cpuinfo)
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: sse2 avx2 fma avx512f avx512bw\n")
    # 64 prompts: at 16, on an Intel CPU with AVX-512, both libraries give the same bits (test_kernel.py, DIFFERING)
    config = _config(tiny_raw, training__onednn_linear="auto", training__train_steps=40,
                     training__keep_every_steps=20, training__batch_size=64)
    train(config, out_dir=tmp_path / "whole")
    assert load_checkpoint(latest_checkpoint(tmp_path / "whole"))["onednn_linear"] is True
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: sse2 avx2 fma\n")
    capsys.readouterr()
    train(config, out_dir=tmp_path / "resumed", resume_from=tmp_path / "whole" / "checkpoints" / "step_000020")
    assert "training.onednn_linear auto" not in capsys.readouterr().out
    state = load_checkpoint(latest_checkpoint(tmp_path / "resumed"))
    assert state["onednn_linear"] is True and state["products"] == "oneDNN"
    whole, resumed = _params(tmp_path / "whole"), _params(tmp_path / "resumed")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    train(config, out_dir=tmp_path / "fresh")  # a fresh start here takes MKL, whose rounding shows by step 40
    fresh = load_checkpoint(latest_checkpoint(tmp_path / "fresh"))
    assert fresh["products"] == "MKL" and not all(torch.equal(whole[k], fresh["model"][k]) for k in whole)
