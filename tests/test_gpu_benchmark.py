"""The GPU check, `python -m benchmarks.gpu`, on the CPU: every part of it but CUDA itself, and the carry that takes
it to the GPU machine."""
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_carry
from benchmarks.gpu import TINY_PLAN, compare, main, max_relative, tail_mean_relative
from benchmarks.gpu_project import VARIANTS, packed_seconds, projection, step_model
from benchmarks.gpu_runs import children
from trainers.curriculum import curriculum_at, final_state
from tune_looped.space import load_space, trial_config

REPO = Path(__file__).resolve().parents[1]
# the GPU image has neither: the check must run without them, in every process it starts
ABSENT = ("ray", "wandb")


def test_step_model_is_a_fixed_cost_and_a_rate():
    c, slope = step_model((1e9, 0.02), (5e9, 0.04))
    assert slope == pytest.approx(0.005e-9) and c == pytest.approx(0.015)
    assert step_model((1e9, 0.04), (5e9, 0.03)) == (0.03, 0.0)  # no slower with more FLOPs: every step costs 0.03 s
    assert step_model((1e9, 0.01), (5e9, 0.10)) == (0.0, pytest.approx(0.02e-9))  # proportional, not below zero


def test_packed_trials_fill_the_slot_that_frees_first():
    assert packed_seconds([4, 3, 2, 1], slots=2, gain=2) == 5  # 4 + 1 and 3 + 2, each at full speed
    assert packed_seconds([4, 3, 2, 1], slots=2, gain=1) == 10  # sharing without gain: half speed each
    assert packed_seconds([4, 3, 2, 1], slots=1, gain=1) == 10


def _timed(label, mode, seconds_first, seconds_final, config):
    curriculum = config.training.curriculum
    return [{"variant": label, "mode": mode, "curriculum": "first", "state": curriculum_at(curriculum, 0),
             "seconds": seconds_first},
            {"variant": label, "mode": mode, "curriculum": "final", "state": final_state(curriculum),
             "seconds": seconds_final}]


def test_the_projection_times_every_trial_by_its_family_and_packs_them():
    space = load_space("hypotheses")
    study = [trial_config(space.base, t.values) for t in space.trials]
    refs = {label: trial_config(space.base, values) for label, values in VARIANTS.items()}
    measured = [row for mode in ("fp32", "bf16") for label, config in refs.items()
                for row in _timed(label, mode, 0.01, 0.02 if mode == "fp32" else 0.01, config)]
    rows, notes = projection(study, refs, measured, "fp32", {(1, False): 10.0, (2, False): 15.0, (4, False): 16.0},
                             allowed=["fp32"], gpu_memory=141 * 10**9)
    fp32, bf16 = rows
    assert (fp32["mode"], fp32["correct"], bf16["correct"]) == ("fp32", "yes", "no")
    # bf16 is 0.01 s a step throughout: 20001 steps of each measured variant, and a trial costs its reference's
    # times their FLOPs: the 4 masks, L=1, L=3 and L=1 LSTM 1 each, L=2 and the LSTMs of 2 and 3 layers about
    # 2, 2 and 3, for each of the 3 seeds
    assert bf16["L=1 h"] == bf16["L=3 h"] == bf16["L=1 LSTM h"] == pytest.approx(20001 * 0.01 / 3600)
    assert bf16["study h, one at a time"] == pytest.approx(3 * 14 * 20001 * 0.01 / 3600, rel=0.02)
    assert fp32["L=1 h"] > bf16["L=1 h"]
    assert fp32["packed"] == "4 a GPU" and fp32["study h, packed"] < fp32["study h, one at a time"]
    assert "packed" not in bf16
    assert notes[-1].startswith("Best setting: fp32, 4 a GPU: the study's 30 trials of 20001 steps in ")


def test_correctness_verdicts():
    runs = {"reference": {"run": "reference", "losses": [2.0, 1.0]}, "fp32": {"run": "fp32", "losses": [2.0, 1.00001]},
            "CUDA graphs": {"run": "CUDA graphs", "error": "RuntimeError: capture failed"}}
    rows = compare(runs, TINY_PLAN, "cuda", {"fp32": 1e-4, "bf16": 0.02})
    assert [row["verdict"] for row in rows] == ["pass", "not run: CUDA graphs: RuntimeError: capture failed", "pending"]
    assert rows[0]["difference"] == pytest.approx(1e-5)
    assert compare(runs, TINY_PLAN, "cuda", {"fp32": 1e-6, "bf16": 0.02})[0]["verdict"] == "FAIL"
    assert max_relative([1.0, 2.2], [1.0, 2.0]) == pytest.approx(0.1)
    assert tail_mean_relative([9, 9, 9, 1.1], [0, 0, 0, 1.0]) == pytest.approx(0.1)  # the last quarter only


@pytest.mark.slow
def test_children_stream_what_jobs_send_and_say_why_one_ended():
    # library functions as jobs, so that a spawned child can import them: a finite stream, a job that raises,
    # one whose process dies without a word
    jobs = [(iter, ([{"a": 1}, {"b": 2}],)), (iter, (5,)), (os._exit, (3,))]
    got = sorted(children(jobs, time.monotonic() + 120), key=lambda item: item[0])
    assert got == [(0, {"a": 1}), (0, {"b": 2}), (1, {"error": "TypeError: 'int' object is not iterable"}),
                   (2, {"error": "the process died (exit code 3)"})]
    # the environment MPS's members need, given to the children alone
    assert list(children([(map, (os.getenv, ["TUNE_LOOPED_CHILD"]))], time.monotonic() + 120,
                         {"TUNE_LOOPED_CHILD": "given"})) == [(0, "given")]
    assert "TUNE_LOOPED_CHILD" not in os.environ
    started = time.monotonic()
    assert list(children([(time.sleep, (60,))], started + 1)) == [(0, {"error": "out of time"})]
    assert time.monotonic() - started < 10  # killed at its deadline, not waited for


def _shadowed(tmp_path) -> dict:
    """An environment in which importing Ray or wandb fails, in the check's process and in every child of it."""
    for name in ABSENT:
        (tmp_path / "absent" / name).mkdir(parents=True)
        (tmp_path / "absent" / name / "__init__.py").write_text(f"raise ImportError('no {name} on the GPU image')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "absent"), str(REPO)])}


def _check(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu", str(tmp_path / "out"), "--device", "cpu", "--tiny",
                           *args], cwd=REPO, env=_shadowed(tmp_path), capture_output=True, text=True, timeout=900)


def _rows(tmp_path, table):
    return json.loads((tmp_path / "out" / f"{table}.json").read_text())


@pytest.mark.slow
def test_the_tiny_check_runs_every_section_on_the_cpu_without_ray_or_wandb(tmp_path):
    # a budget that only a hung section reaches: the suite's machine is often busy
    done = _check(tmp_path, "--budget", "900")
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    for table in ("correctness", "speed", "packing", "packing_processes", "projection"):
        assert (out / f"{table}.md").read_text().startswith("## ") and (out / f"{table}.json").exists(), table
    assert (out / "report.md").read_text().startswith("# benchmarks.gpu: date ")
    assert [(r["check"], r["verdict"]) for r in _rows(tmp_path, "correctness")] == [
        ("fp32", "pass"), ("CUDA graphs", "pass"), ("bf16", "pass")]
    speed = _rows(tmp_path, "speed")
    for label in VARIANTS:
        for mode in TINY_PLAN.modes:
            rows = [r for r in speed if (r["variant"], r["mode"]) == (label, mode)]
            # every mode is timed at both states, or says why not (oneDNN has no bf16 LSTM on some CPUs)
            timed = [r["curriculum"] for r in rows if r.get("steps/s")]
            assert timed == ["first", "final"] or len(rows) == 1 and rows[0]["note"], (label, mode, rows)
    assert all(r.get("steps/s") for r in speed if r["variant"] == "L=1" and r["mode"] == "fp32")
    packing = _rows(tmp_path, "packing")
    assert [(r["processes"], r["MPS"]) for r in packing] == [(1, "no"), (2, "no")]
    assert all(r["steps/s"] > 0 for r in packing) and packing[0]["x one"] == 1
    processes = _rows(tmp_path, "packing_processes")
    assert [(r["processes"], r["process"]) for r in processes] == [(1, 0), (2, 0), (2, 1)]
    assert all(r["peak MiB"] > 0 and r["estimate MiB"] > 0 for r in processes)
    projection_rows = _rows(tmp_path, "projection")
    assert "fp32" in [r["mode"] for r in projection_rows]
    assert "Best setting: " in (out / "projection.md").read_text()


@pytest.mark.slow
def test_a_failed_correctness_check_fails_the_call_with_one_line(tmp_path):
    done = _check(tmp_path, "--sections", "correctness", "--bf16-tolerance", "1e-12", "--budget", "900")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: correctness: bf16 (bf16 on cpu against fp32 on cpu): "
                                                     "difference "), errors
    assert errors[0].endswith("> tolerance 1e-12")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["correctness.json", "correctness.md", "report.md"]


def test_unknown_sections_and_a_missing_gpu_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--sections", "correctness,speeed"])
    assert capsys.readouterr().err.startswith("error: --sections: unknown speeed; known: correctness, speed, packing")
    if not torch.cuda.is_available():
        assert main([str(tmp_path)]) == 2
        assert capsys.readouterr().err.startswith("error: --device cuda: no CUDA device")


def test_the_carry_is_pydantic_and_its_requirements_at_the_versions_here():
    pins = gpu_carry.requirements()
    assert set(pins) == {"pydantic", "pydantic-core", "annotated-types", "typing-extensions", "typing-inspection"}
    assert pins["pydantic"] == importlib.metadata.version("pydantic")
    command = gpu_carry.download_command(pins, Path(".whl"))
    assert command[command.index("--python-version") + 1] == "3.12" and "--no-deps" in command
    assert f"pydantic-core=={pins['pydantic-core']}" in command


@pytest.mark.slow
def test_the_check_imports_nothing_the_image_and_the_carry_lack():
    script = ("import sys; before = set(sys.modules); import benchmarks.gpu, benchmarks.gpu_runs, benchmarks.gpu_pack; "
              "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    distributions = importlib.metadata.packages_distributions()
    imported = {gpu_carry.canonical(d) for m in done.stdout.split() for d in distributions.get(m, ())}
    available = {gpu_carry.canonical(d) for d in gpu_carry.IMAGE} | set(gpu_carry.requirements()) | {"tune-looped"}
    assert imported and imported <= available, imported - available
    assert not imported & set(ABSENT)


def test_the_device_call_installs_the_carry_and_keeps_what_it_measured(capsys, monkeypatch):
    call = gpu_carry.device_call()
    command = call["command"]
    assert call["carry"] == [gpu_carry.FOLDER] and len(command) <= 2000
    assert command.startswith("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
                              "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;")
    assert "export PYTHONUNBUFFERED=1;" in command and 'python3 -m benchmarks.gpu "$OUT/gpu" --budget 360 ' in command
    assert '| tee "$OUT/gpu.log"' in command and command.endswith("exit $rc")
    # the tool brings back 8 files at most: the tables' folder travels as one tarball
    assert 'tar -czf "$OUT/gpu.tar.gz" -C "$OUT" gpu && rm -r "$OUT/gpu";' in command
    # the call's own limit covers every timeout in the command
    assert call["timeout_s"] >= gpu_carry.BUDGET_S + 30 + 10 + gpu_carry.PYTEST_S + 5 and call["timeout_s"] <= 600
    assert f"{gpu_carry.FOLDER}/" in (REPO / ".gitignore").read_text().splitlines()
    monkeypatch.setattr(gpu_carry, "download", lambda *a: pytest.fail("--dry-run downloaded"))
    assert gpu_carry.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wheels: annotated-types==")
    assert json.loads(out.split("device call (the device tool's run):\n")[1]) == call
