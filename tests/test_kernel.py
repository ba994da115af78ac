"""One products library per CPU type, never chosen by a timing: `training.onednn_linear: auto` takes oneDNN or
MKL from /proc/cpuinfo alone, so the same command trains the same kernels, and the same numbers, however busy the
machine is; each trial records its library and the report names it."""
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from analysis import load_curves, load_summary
from analysis.report import render_report
from helpers.experiments import checkpoint_state, config_dict, metric_row, ray_row, write_trial
from helpers.sweeps import TINY_BASE, forked_sweep, write_space
from test_report import summary_frame
from trainers import onednn
from trainers.checkpoint import latest_checkpoint, load_checkpoint
from trainers.config import apply_overrides, config_from_dict
from trainers.onednn import ONEDNN
from trainers.training import train


def cpuinfo(vendor: str, model: str, flags: str) -> str:
    """/proc/cpuinfo of a two-processor machine, as Linux writes it."""
    return "".join(f"processor\t: {n}\nvendor_id\t: {vendor}\nmodel name\t: {model}\n"
                   f"cpu MHz\t\t: 2400.000\nflags\t\t: {flags}\nbogomips\t: 4800.00\n\n" for n in range(2))


BASE_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
              "syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology cpuid pni pclmulqdq ssse3 fma cx16 "
              "pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm "
              "3dnowprefetch fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni "
              "xsaveopt xsavec xgetbv1 xsaves vaes vpclmulqdq rdpid fsrm")
AVX512 = ("avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 gfni "
          "avx512_vnni avx512_bitalg avx512_vpopcntdq")
AVX2_AMD = cpuinfo("AuthenticAMD", "AMD EPYC 7B13", BASE_FLAGS + " clzero wbnoinvd")
AVX512_AMD = cpuinfo("AuthenticAMD", "AMD EPYC 9B14", f"{BASE_FLAGS} {AVX512} avx512_vp2intersect clzero")
AMX_INTEL = cpuinfo("GenuineIntel", "Intel(R) Xeon(R) Platinum 8481C",
                    f"{BASE_FLAGS} {AVX512} avx512_fp16 amx_bf16 amx_tile amx_int8 arch_capabilities")

# The quick study's width and batch, at which the two libraries round differently. Smaller, they can give the same
# bits: at n_embd 16 on an AVX2 AMD; on an Intel with AVX-512, in a weight gradient summed over 384 tokens or fewer
# (batch_size x 2 x n_points: 32 prompts of 4-6 points). A row every step shows the difference in every curve.
DIFFERING = apply_overrides(TINY_BASE, {"model.n_embd": 32, "model.n_head": 4, "training.batch_size": 64,
                                        "wandb.log_every_steps": 1, "training.onednn_linear": "auto"})


@pytest.mark.parametrize("text, takes_onednn, why", [
    (AVX2_AMD, False, "MKL (no AVX-512 on this CPU)"),
    (AVX512_AMD, True, "oneDNN (AVX-512 on an AMD CPU, where MKL runs only its AVX2 code)"),
    (AMX_INTEL, False, "MKL (an Intel CPU with AVX-512, which MKL uses)"),
    (cpuinfo("HygonGenuine", "Hygon C86", f"{BASE_FLAGS} {AVX512}"), True,
     "oneDNN (AVX-512 on a HygonGenuine CPU, where MKL runs only its AVX2 code)"),
    (cpuinfo("GenuineIntel", "Intel(R) Xeon(R) E-2388G", BASE_FLAGS), False, "MKL (no AVX-512 on this CPU)"),
    (f"processor\t: 0\nflags\t\t: {BASE_FLAGS} {AVX512}\n", True,
     "oneDNN (AVX-512 on a non-Intel CPU, where MKL runs only its AVX2 code)"),
], ids=["AVX2-only AMD", "AVX-512 AMD", "Intel AVX-512+AMX", "AVX-512 Hygon", "AVX2-only Intel", "no vendor named"])
def test_auto_takes_one_library_per_cpu_type(text, takes_onednn, why):
    assert onednn.preferred_library(onednn.read_cpu(text)) == (takes_onednn, why)


def test_the_cpu_is_read_from_its_first_processor():
    cpu = onednn.read_cpu(AMX_INTEL + "processor\t: 2\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu\n")
    assert cpu.vendor == "GenuineIntel"
    assert cpu.flags == frozenset(f"{BASE_FLAGS} {AVX512} avx512_fp16 amx_bf16 amx_tile amx_int8 "
                                  "arch_capabilities".split())


def test_a_cpu_without_flags_to_read_gets_mkl(tmp_path, monkeypatch):
    monkeypatch.setattr(onednn, "CPUINFO", tmp_path / "absent")
    assert onednn.read_cpu() is None
    # an Arm machine lists `Features`, not `flags`, and has no MKL products to fall short of its vectors
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n"
    assert onednn.read_cpu(arm) is None
    assert onednn.preferred_library(None) == (False, "MKL (no CPU flags in /proc/cpuinfo to choose by)")
    (tmp_path / "cpuinfo").write_text(AVX512_AMD)
    monkeypatch.setattr(onednn, "CPUINFO", tmp_path / "cpuinfo")
    assert onednn.preferred_library(onednn.read_cpu())[0] is True


def test_a_checkpoint_names_its_library_and_an_older_one_only_its_flag():
    assert onednn.recorded_library({onednn.PRODUCTS_KEY: "cuda", onednn.ONEDNN_KEY: False}) == "cuda"
    assert [onednn.recorded_library({onednn.ONEDNN_KEY: flag}) for flag in (True, False)] == ["oneDNN", "MKL"]
    assert {onednn.recorded_library(old) for old in (None, {}, {"step": 3}, {onednn.ONEDNN_KEY: "auto"})} == {"unknown"}


def _run(raw, out_dir, **overrides):
    rows = []
    train(config_from_dict(apply_overrides(raw, overrides)), out_dir=out_dir, reporter=lambda r, c: rows.append(r))
    state = load_checkpoint(latest_checkpoint(out_dir))
    return [(r["overall_loss"], r.get("eval/loss")) for r in rows], state


def _same_weights(state, other):
    return all(torch.equal(weight, other["model"][name]) for name, weight in state["model"].items())


@pytest.mark.skipif(not ONEDNN, reason="this torch has no oneDNN")
def test_auto_keeps_onednn_on_an_avx512_amd_cpu_however_slow_its_products_run(tmp_path, monkeypatch, capsys):
    """A timing would pick MKL here: every oneDNN product sleeps. The CPU type decides, so the run is the one
    `onednn_linear: true` trains, bit for bit."""
    (tmp_path / "cpuinfo").write_text(AVX512_AMD)
    monkeypatch.setattr(onednn, "CPUINFO", tmp_path / "cpuinfo")
    plain, calls = onednn._onednn_mm, []

    def slow(*args, **kwargs):
        calls.append(1)
        time.sleep(0.0005)  # a thousand times a tiny product's own time
        return plain(*args, **kwargs)

    monkeypatch.setattr(onednn, "_onednn_mm", slow)
    auto, state = _run(DIFFERING, tmp_path / "auto", **{"training.train_steps": 12})
    said = capsys.readouterr().out.splitlines()[0]
    monkeypatch.setattr(onednn, "_onednn_mm", plain)
    on, on_state = _run(DIFFERING, tmp_path / "on", **{"training.train_steps": 12, "training.onednn_linear": True})
    off, off_state = _run(DIFFERING, tmp_path / "off", **{"training.train_steps": 12, "training.onednn_linear": False})
    # the weights, not the losses: in 12 steps the libraries' last-bit differences need not reach a logged loss
    assert not _same_weights(on_state, off_state), "MKL and oneDNN round alike at this size, so the test shows nothing"
    assert auto == on and _same_weights(state, on_state)
    assert calls and state["onednn_linear"] is True and state["products"] == "oneDNN"
    assert said == "training.onednn_linear auto: oneDNN (AVX-512 on an AMD CPU, where MKL runs only its AVX2 code)"


def _trial_with(experiment, name, seed, **record):
    config = config_dict(seed=seed, train_steps=20)
    rows = [metric_row(step, 1.0, eval_loss=0.5) for step in (0, 10, 19)]
    state = {**checkpoint_state(config, step=20, metrics=rows), **record}
    write_trial(experiment, name, hypotheses=["h"], values={"training.seed": seed}, checkpoint=state,
                rows=[ray_row(row, name, i + 1, done=i == 2) for i, row in enumerate(rows)])


def test_the_summary_names_each_trials_library_and_old_trials_read_as_unknown(tmp_path):
    _trial_with(tmp_path, "mkl", 0, products="MKL", onednn_linear=False)
    _trial_with(tmp_path, "onednn", 1, products="oneDNN", onednn_linear=True)
    _trial_with(tmp_path, "probed", 2, onednn_linear=True)  # the timing probe's runs kept only the flag
    _trial_with(tmp_path, "old", 3)  # from before any record of the library
    _trial_with(tmp_path, "gpu", 4, products="cuda", onednn_linear=False)
    summary = load_summary(tmp_path).set_index("trial_id")
    assert summary["products"].to_dict() == {"mkl": "MKL", "onednn": "oneDNN", "probed": "oneDNN", "old": "unknown",
                                             "gpu": "cuda"}


def _setup_lines(summary, tmp_path):
    report = render_report("study", summary, None, tmp_path / "plots", tmp_path, {})
    return [line for line in report.splitlines() if line.startswith("Products:")]


def test_the_report_names_the_library_and_shows_a_mix(tmp_path):
    summary = summary_frame()
    assert _setup_lines(summary, tmp_path) == []  # a summary from before the column: nothing claimed
    summary["products"] = "MKL"
    assert _setup_lines(summary, tmp_path) == ["Products: MKL in all 9 trials (`training.onednn_linear`)."]
    summary.loc[[0, 4], "products"] = "oneDNN"
    summary.loc[8, "products"] = "unknown"
    assert _setup_lines(summary, tmp_path) == [
        "Products: MKL in 6, oneDNN in 2, unknown in 1 trials (`training.onednn_linear`): the libraries round "
        "differently, so the variants differ by more than their settings."]
    assert _setup_lines(summary.iloc[:1], tmp_path) == ["Products: oneDNN in the one trial (`training.onednn_linear`)."]


def _curves_by_seed(experiment: Path) -> dict[int, list[tuple]]:
    """Each trial's (overall_loss, eval/loss) per logged step, as `_run` returns them."""
    curves = load_curves(experiment).sort_values(["training.seed", "step"])
    return {int(seed): [(loss, None if math.isnan(eval_loss) else eval_loss)
                        for loss, eval_loss in zip(group["overall_loss"], group["eval/loss"])]
            for seed, group in curves.groupby("training.seed")}


@pytest.mark.slow
@pytest.mark.skipif(not ONEDNN, reason="this torch has no oneDNN")
def test_the_same_sweep_beside_a_busy_process_trains_the_same_curves(tmp_path, commands):
    """The issue's case: the timing probe picked another library for some trials under load. The sweep runs
    `auto` beside a busy process; each trial must train, bit for bit, what the library this CPU type's rule
    names trains on a quiet machine. The libraries round differently at this size (checked first), so a trial
    on the other one would show in its curve."""
    one, _ = _run(DIFFERING, tmp_path / "one", **{"training.onednn_linear": True})
    other, _ = _run(DIFFERING, tmp_path / "other", **{"training.onednn_linear": False})
    assert one != other, "MKL and oneDNN round alike at this size, so the sweep could not differ"
    takes_onednn = onednn.preferred_library(onednn.read_cpu())[0]
    quiet = {seed: _run(DIFFERING, tmp_path / f"seed{seed}", **{"training.seed": seed,
                                                                "training.onednn_linear": takes_onednn})[0]
             for seed in (0, 1)}
    space = write_space(tmp_path / "space.yaml", [{"name": "seeds", "grid": {"training.seed": [0, 1]}}], DIFFERING)
    # A core spun for the whole sweep at the lowest priority: the load average and the machine's CPU use (what a
    # load-aware choice would read) count it, yet it takes only the CPU the sweep and a test beside it leave idle.
    # At normal priority it took its share of both cores, so its cost grew with the sweep's time, and the sweep's
    # with the test beside it: 170, 226 and 407 s in three whole-suite runs, against 60-70 s.
    busy = subprocess.Popen([sys.executable, "-c", "import os\nos.nice(19)\nwhile True: pass"])
    try:
        done = forked_sweep(commands, tmp_path, space, name="busy", cpus=2)
        spun = busy.poll() is None
    finally:
        busy.kill()
        busy.wait()
    assert spun, "the busy process ended before the sweep did"
    assert "2 finished" in done.stdout, done.stdout + done.stderr
    loaded = _curves_by_seed(tmp_path / "r" / "busy")
    assert len(quiet[0]) == 30 and all(not math.isnan(loss) for loss, _ in quiet[0])
    assert loaded == quiet
    assert load_summary(tmp_path / "r" / "busy")["products"].tolist() == ["oneDNN" if takes_onednn else "MKL"] * 2
