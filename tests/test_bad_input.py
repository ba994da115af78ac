"""Bad input, table-driven: every case runs a command line (`python -m tune_looped.run`, `python -m
trainers.train`, `python -m analysis`) in a fresh sandbox and must give exit status 2 and exactly one line on
stderr, `error: ...`, naming the file, key or flag and what is expected: no traceback, nothing written, no Ray.
The command runs as a fresh interpreter would, forked from one process that imported the programs once
(helpers/commands.py). A new case is one more `Case(...)` row in CASES.

The sandbox is the command's working folder, HOME, TMPDIR and RAY_TMPDIR, so the default `--storage
~/ray_results`, run folders, and a Ray session (which lives under RAY_TMPDIR) would all show up in it; every
file and folder in it must be the same after the command as before. The table is also docs/RELIABILITY.md's: see
`render_bad_input` and test_reliability.py.
"""
import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from helpers.sweeps import TINY_BASE
from trainers.models import build_model
from trainers.dotted import set_dotted

PROGRAMS = {
    "run": ["-m", "tune_looped.run"],
    "train": ["-m", "trainers.train"],
    "analysis": ["-m", "analysis"],
    "benchmarks.step": ["-m", "benchmarks.step"],
    "benchmarks.sweep": ["-m", "benchmarks.sweep"],
    # a full disk cannot be made without privileges; the runner's own threshold is raised above the free space
    "run, disk full": ["-c", "import sys, tune_looped.cluster as c; c.MIN_FREE_BYTES = 1 << 60; "
                             "from tune_looped.run import main; sys.exit(main())"],
}
SURFACES = {
    "config": "config YAML (`python -m trainers.train --config`, a space's `base:`)",
    "override": "dotted overrides (`--model.n_layer 2`)",
    "train flags": "single-run flags",
    "checkpoint": "checkpoint files as `model.pretrained_path` (single run and runner)",
    "names": "names that become folders (`--name`, a space's `name:`, `wandb.name`)",
    "space": "space YAML (`--space`)",
    "run flags": "runner flags",
    "resume": "`--resume`",
    "storage": "`--storage`",
    "analysis": "experiment folders given to `python -m analysis`",
    "analysis flags": "`python -m analysis` flags",
    "benchmark flags": "`python -m benchmarks.step` and `benchmarks.sweep` flags",
}
CODE_RAN = "CODE_RAN"  # the folder a malicious pickle would create


@dataclass(frozen=True)
class Case:
    id: str
    surface: str  # a key of SURFACES
    what: str  # what is wrong, as docs/RELIABILITY.md lists it
    program: str  # a key of PROGRAMS
    argv: tuple
    expect: tuple  # fragments the error line must contain
    files: dict = field(default_factory=dict)  # path in the working folder -> text, bytes or a writer(path)


class RunsCode:
    """A pickle payload that would create the folder CODE_RAN in the working folder when unpickled."""

    def __reduce__(self):
        return os.mkdir, (CODE_RAN,)


def dump(tree: dict) -> str:
    return yaml.safe_dump(tree, sort_keys=False)


def config(**dotted) -> str:
    raw = TINY_BASE
    for key, value in dotted.items():
        raw = set_dotted(raw, key.replace("__", "."), value)
    return dump(raw)


def space(base="base.yaml", grid=None, **top) -> str:
    return dump({"name": "tiny", "base": base, "hypotheses": [{"name": "e", "grid": grid or {"training.seed": [0]}}],
                 **top})


def state_dict_file(n_embd: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        model = build_model({**TINY_BASE["model"], "n_embd": n_embd})
        torch.save({"model": model.state_dict()}, path)
    return write


def truncated_checkpoint(path: Path) -> None:
    state_dict_file(16)(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def code_pickle(path: Path) -> None:
    torch.save({"model": RunsCode()}, path)


def space_record_of(text: str, state: str = "{}", tuner: bytes = b"") -> Callable[[Path], None]:
    """An experiment folder as the runner leaves it, started from the space `text`, with Tune's state files."""
    def write(path: Path) -> None:
        from tune_looped.space import load_space, space_record

        original = path.parents[2] / "original.yaml"  # beside base.yaml, which it names
        original.write_text(text)
        path.write_text(yaml.safe_dump(space_record(load_space(original), False).model_dump(), sort_keys=False))
        original.unlink()
        (path.parent / "tuner.pkl").write_bytes(tuner)
        (path.parent / "experiment_state-2026-01-01_00-00-00.json").write_text(state)
    return write



def saved_dict(state: dict) -> Callable[[Path], None]:
    return lambda path: torch.save(state, path)


def folder(path: Path) -> None:
    path.mkdir()


def fifo(path: Path) -> None:
    os.mkfifo(path)


def symlink_loop(path: Path) -> None:
    other = path.with_name(f"{path.name}.loop")
    path.symlink_to(other.name)
    other.symlink_to(path.name)


# 9 lists of nine aliases to the list before: 9**9 strings in 410 bytes
ALIAS_BOMB = "a0: &a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
MILLION = {"training.learning_rate": [i / 1e5 for i in range(1, 1001)], "training.batch_size": list(range(1, 1001))}


BASE = {"base.yaml": config()}
SPACE = {**BASE, "space.yaml": space()}
TRAIN = ("--config", "base.yaml", "--out_dir", "runs")
RUN = ("--space", "space.yaml", "--storage", "results", "--num-cpus", "2")
TRIAL_RECORD = json.dumps({"trial_id": "t0", "hypotheses": ["e"], "values": {"training.seed": 0}})


def pretrained(case_id: str, what: str, path: str, content, expect: tuple) -> Case:
    files = {"base.yaml": config(model__pretrained_path=path)}
    if content is not None:
        files[path] = content
    return Case(case_id, "checkpoint", what, "train", TRAIN, expect, files)


CASES = [
    # config YAML, through the single-run CLI and as a space's base file
    Case("config-missing", "config", "missing file", "train", ("--config", "nope.yaml"),
         ("nope.yaml", "cannot read config file")),
    Case("config-not-yaml", "config", "not YAML", "train", TRAIN, ("base.yaml", "not valid YAML"),
         {"base.yaml": "model: [1, 2\n"}),
    Case("config-list", "config", "a list, not a mapping", "train", TRAIN, ("base.yaml", "expected a mapping"),
         {"base.yaml": "- model\n- training\n"}),
    Case("config-unknown-key", "config", "unknown key", "train", TRAIN, ("base.yaml", "model.n_layr", "unknown key"),
         {"base.yaml": config(model__n_layr=2)}),
    Case("config-wrong-type", "config", "wrong type", "train", TRAIN, ("model.n_layer", "expected an integer"),
         {"base.yaml": config(model__n_layer="two")}),
    Case("config-n-head", "config", "n_embd not divisible by n_head", "train", TRAIN,
         ("model.n_head", "divisor of n_embd=16"), {"base.yaml": config(model__n_head=3)}),
    Case("config-points", "config", "curriculum points beyond n_positions", "train", TRAIN,
         ("training.curriculum.points.end", "model.n_positions=6"),
         {"base.yaml": config(training__curriculum__points__end=7)}),
    Case("config-family", "config", "unknown model family", "train", TRAIN, ("model.family", "gpt2, gpt2_loop"),
         {"base.yaml": config(model__family="gpt3")}),
    Case("config-inherit-cycle", "config", "`inherit:` cycle", "train", TRAIN, ("base.yaml", "inherit: cycle"),
         {"base.yaml": "inherit: [base.yaml]\n"}),
    Case("config-inherit-missing", "config", "`inherit:` of a missing file", "train", TRAIN,
         ("other.yaml", "cannot read config file"), {"base.yaml": "inherit: [other.yaml]\n"}),
    Case("config-duplicate-key", "config", "a key given twice", "train", TRAIN,
         ("base.yaml", "model.n_layer", "key given twice (lines 2 and 3)"),
         {"base.yaml": "model:\n  n_layer: 1\n  n_layer: 2\n"}),
    Case("config-binary", "config", "a binary file", "train", TRAIN, ("base.yaml", "not a text file"),
         {"base.yaml": b"\x89PNG\r\n\x1a\n\x00\xff"}),
    Case("space-base-unknown-key", "config", "unknown key in a space's base file", "run", RUN,
         ("base.yaml", "model.n_layr", "unknown key"), {"base.yaml": config(model__n_layr=2), "space.yaml": space()}),
    Case("config-alias-bomb", "config", "an alias bomb (410 bytes, 9**9 values)", "train", TRAIN,
         ("base.yaml", "at most 100000 values", "aliases expanded"), {"base.yaml": ALIAS_BOMB}),
    Case("config-alias-in-itself", "config", "an alias inside the value it names", "train", TRAIN,
         ("base.yaml", "model.x: an alias to a value that holds it"),
         {"base.yaml": "model: &m {n_layer: 1, x: *m}\n"}),
    Case("config-nested-500", "config", "nesting 500 deep", "train", TRAIN,
         ("base.yaml", "at most 64 levels of nesting"), {"base.yaml": "[" * 500 + "]" * 500 + "\n"}),
    Case("config-over-1-mib", "config", "a file over 1 MiB", "train", TRAIN, ("base.yaml", "at most 1 MiB"),
         {"base.yaml": config() + "#" + "x" * 2**20 + "\n"}),
    Case("config-dev-zero", "config", "`/dev/zero`", "train", ("--config", "/dev/zero", "--out_dir", "runs"),
         ("/dev/zero", "a character device, not a regular file")),
    Case("config-inherit-symlink-loop", "config", "`inherit:` of a loop of symbolic links", "train", TRAIN,
         ("loop.yaml", "a loop of symbolic links"),
         {"base.yaml": "inherit: [loop.yaml]\n", "loop.yaml": symlink_loop}),
    Case("config-learning-rate-inf", "config", "an infinite learning rate", "train", TRAIN,
         ("training.learning_rate", "a finite number > 0, got inf"),
         {"base.yaml": config(training__learning_rate=float("inf"))}),
    # dotted overrides
    Case("override-unknown", "override", "unknown key", "train", (*TRAIN, "--model.n_layr", "2"),
         ("model.n_layr", "unknown key"), BASE),
    Case("override-type", "override", "wrong type", "train", (*TRAIN, "--model.n_layer", "deep"),
         ("model.n_layer", "expected an integer"), BASE),
    Case("override-impossible", "override", "impossible value", "train", (*TRAIN, "--model.n_head", "3"),
         ("model.n_head", "divisor"), BASE),
    Case("override-missing-value", "override", "missing value", "train", (*TRAIN, "--model.n_layer"),
         ("--model.n_layer", "missing value"), BASE),
    Case("override-section", "override", "a section given a value", "train", (*TRAIN, "--training.curriculum", "3"),
         ("training.curriculum", "is a section"), BASE),
    Case("override-not-dotted", "override", "not a --section.key flag", "train", (*TRAIN, "--layers", "2"),
         ("--layers", "expected --section.key VALUE"), BASE),
    Case("override-seed-2-64", "override", "a seed of 2**64, beyond torch's", "train",
         (*TRAIN, "--training.seed", str(2**64)), ("training.seed", "an integer from 0 to 2**64 - 1"), BASE),
    Case("override-weight-decay-nan", "override", "weight decay nan", "train",
         (*TRAIN, "--training.weight_decay", "nan"), ("training.weight_decay", "a finite number >= 0"), BASE),
    # single-run flags
    Case("train-no-config", "train flags", "--config missing", "train", ("--out_dir", "runs"),
         ("--config", "required")),
    Case("train-resume-nothing", "train flags", "--resume with nothing to resume", "train", (*TRAIN, "--resume"),
         ("--resume", "no checkpoint"), BASE),
    Case("train-device-bad", "train flags", "--device not a device", "train", (*TRAIN, "--device", "tpu"),
         ("--device", "expected auto, cpu, cuda or cuda:N"), BASE),
    Case("train-device-absent", "train flags", "--device absent here", "train", (*TRAIN, "--device", "cuda:3"),
         ("--device", "CUDA device(s) here"), BASE),
    # checkpoint files as model.pretrained_path
    pretrained("pretrained-missing", "missing file", "nope.pt", None,
               ("model.pretrained_path", "nope.pt", "no such file")),
    pretrained("pretrained-folder", "a folder", "ckpt", folder, ("ckpt", "is a folder, not a file")),
    pretrained("pretrained-truncated", "truncated file", "ref.pt", truncated_checkpoint,
               ("ref.pt", "not a loadable checkpoint")),
    pretrained("pretrained-text", "a text file", "ref.pt", "not a checkpoint\n",
               ("ref.pt", "not a loadable checkpoint")),
    pretrained("pretrained-no-state-dict", "a dict without a state dict", "ref.pt", saved_dict({"step": 3}),
               ("ref.pt", "found a dict that is none of these")),
    pretrained("pretrained-architecture", "another architecture (n_embd 32 into 16)", "ref.pt", state_dict_file(32),
               ("ref.pt", "does not fit this model section", "size mismatch for _read_in.weight")),
    pretrained("pretrained-code", "a pickle that would run code", "ref.pt", code_pickle,
               ("ref.pt", "not a loadable checkpoint, only tensors and containers are accepted")),
    Case("resume-damaged", "checkpoint", "single run: a damaged latest checkpoint on --resume", "train",
         (*TRAIN, "--resume"), ("checkpoint.pt", "not a loadable checkpoint"),
         {**BASE, "runs/base/checkpoints/step_000010/checkpoint.pt": b"\x80\x02garbage"}),
    Case("run-pretrained-grid", "checkpoint", "runner: fits one trial of the grid, not another", "run", RUN,
         ("trial n_embd=32", "ref.pt", "does not fit this model section (n_embd=32"),
         {"base.yaml": config(model__pretrained_path="ref.pt"), "ref.pt": state_dict_file(16),
                       "space.yaml": space(grid={"model.n_embd": [16, 32]})}),
    Case("run-pretrained-code", "checkpoint", "runner: a pickle that would run code", "run", RUN,
         ("ref.pt", "only tensors and containers are accepted"),
         {"base.yaml": config(model__pretrained_path="ref.pt"), "ref.pt": code_pickle, "space.yaml": space()}),
    # names that become folders
    Case("run-name-parent", "names", "`--name ../x`", "run", (*RUN, "--name", "../x"),
         ("--name: expected a folder name", "no / or \\", "got '../x'"), SPACE),
    Case("run-name-absolute", "names", "an absolute `--name`", "run", (*RUN, "--name", "/tmp/x"),
         ("--name: expected a folder name", "got '/tmp/x'"), SPACE),
    Case("run-name-300", "names", "a 300-character `--name`", "run", (*RUN, "--name", "n" * 300),
         ("--name: expected a folder name: 1 to 200 characters",), SPACE),
    Case("space-name-parent", "names", "a space file's `name: ../x`", "run", RUN,
         ("space.yaml", "name: must be a folder name", "got '../x'"), {**BASE, "space.yaml": space(name="../x")}),
    Case("train-wandb-name-parent", "names", "`--wandb.name ../../x`", "train", (*TRAIN, "--wandb.name", "../../x"),
         ("base.yaml", "wandb.name: must be a folder name", "got '../../x'"), BASE),
    Case("train-wandb-name-absolute", "names", "an absolute `wandb.name`", "train", TRAIN,
         ("base.yaml", "wandb.name: must be a folder name", "got '/tmp/x'"),
         {"base.yaml": config(wandb__name="/tmp/x")}),
    # space YAML
    Case("space-missing", "space", "missing file", "run", ("--space", "nope.yaml"), ("nope.yaml", "no such space file")),
    Case("space-not-yaml", "space", "not YAML", "run", RUN, ("space.yaml", "not valid YAML"),
         {**BASE, "space.yaml": "hypotheses: [1\n"}),
    Case("space-duplicate-key", "space", "a key given twice", "run", RUN,
         ("space.yaml", "hypotheses[0].grid.model.n_layer", "key given twice"),
         {**BASE, "space.yaml": "base: base.yaml\nhypotheses:\n  - name: e\n    grid:\n      model.n_layer: [1]\n"
                                "      model.n_layer: [2]\n"}),
    Case("space-binary", "space", "a binary file", "run", RUN, ("space.yaml", "not a text file"),
         {**BASE, "space.yaml": b"\xff\xfe\x00b\x00a\x00s\x00e\x00"}),
    Case("space-unknown-top", "space", "unknown top-level key", "run", RUN, ("space.yaml", "bogus", "unknown key"),
         {**BASE, "space.yaml": space(bogus=1)}),
    Case("space-no-hypotheses", "space", "no hypotheses", "run", RUN,
         ("space.yaml", "hypotheses", "expected a non-empty list"),
         {**BASE, "space.yaml": dump({"base": "base.yaml", "hypotheses": []})}),
    Case("space-grid-key", "space", "unknown grid key", "run", RUN, ("model.n_layr", "unknown key"),
         {**BASE, "space.yaml": space(grid={"model.n_layr": [1]})}),
    Case("space-grid-type", "space", "grid value of the wrong type", "run", RUN,
         ("model.n_layer", "expected an integer"), {**BASE, "space.yaml": space(grid={"model.n_layer": ["two"]})}),
    Case("space-grid-invalid", "space", "a grid point that makes an invalid config", "run", RUN,
         ("model.n_head", "divisor"), {**BASE, "space.yaml": space(grid={"model.n_head": [2, 3]})}),
    Case("space-distribution", "space", "bad sample distribution", "run", RUN,
         ("sample.training.learning_rate", "expected one of"),
         {**BASE, "space.yaml": space(sample={"training.learning_rate": "normal(0, 1)"})}),
    Case("space-inline-base", "space", "inline base with an impossible value", "run", RUN,
         ("base: model.n_head", "divisor of n_embd=16"),
         {"space.yaml": space(base=yaml.safe_load(config(model__n_head=3)))}),
    Case("space-no-quick", "space", "--quick without a quick: block", "run", (*RUN, "--quick"),
         ("quick", "needs a quick: block"), SPACE),
    Case("space-gpu-above-1", "space", "resources.gpu above 1", "run", RUN, ("resources.gpu", "between 0 and 1"),
         {**BASE, "space.yaml": space(resources={"gpu": 1.5})}),
    Case("space-trend-key", "space", "a trend on a key its grid does not vary", "run", RUN,
         ("space.yaml", "hypotheses[0].trend.key", "not a key of the hypothesis' grid"),
         {**BASE, "space.yaml": dump({"base": "base.yaml", "hypotheses": [
             {"name": "e", "grid": {"model.n_layer": [1, 2]},
              "trend": {"key": "model.n_last_tokens", "error": "decreasing"}}]})}),
    Case("space-alias-bomb", "space", "an alias bomb", "run", RUN, ("space.yaml", "at most 100000 values"),
         {**BASE, "space.yaml": space() + ALIAS_BOMB}),
    Case("space-base-fifo", "space", "a FIFO as `base:`", "run", RUN, ("space.yaml: base", "fifo.yaml", "a FIFO"),
         {"fifo.yaml": fifo, "space.yaml": space(base="fifo.yaml")}),
    Case("space-base-folder", "space", "a folder as `base:`", "run", RUN, ("space.yaml: base", "a folder"),
         {"configs": folder, "space.yaml": space(base="configs")}),
    Case("space-symlink-loop", "space", "a loop of symbolic links as `--space`", "run",
         ("--space", "loop.yaml", "--storage", "results"), ("loop.yaml", "a loop of symbolic links"),
         {"loop.yaml": symlink_loop}),
    Case("space-million-trials", "space", "`--dry-run` of a grid of 10**6 trials", "run", (*RUN, "--dry-run"),
         ("space.yaml", "hypotheses[0].grid: at most 10000 trials a space, got 1000000"),
         {**BASE, "space.yaml": space(grid=MILLION)}),
    Case("space-seeds-2-64", "space", "a seed of 2**64", "run", RUN, ("space.yaml", "seeds", "from 0 to 2**64 - 1"),
         {**BASE, "space.yaml": space(seeds=[0, 2**64])}),
    Case("space-batch-absurd", "space", "a batch of 10**11 (beyond 10 times the machine's memory)", "run", RUN,
         ("trial batch_size=100000000000", "training.batch_size", "10 times this machine's memory"),
         {**BASE, "space.yaml": space(grid={"training.batch_size": [10**11]})}),
    Case("space-metric-misspelt", "space", "a misspelt `metric` under ASHA", "run", RUN,
         ("space.yaml", "metric: must be one of step", "got 'eval/los'"),
         {**BASE, "space.yaml": space(metric="eval/los", scheduler="asha")}),
    Case("space-hypotheses-same-name", "space", "two hypotheses of one name", "run", RUN,
         ("space.yaml", "hypotheses[1].name: must differ"),
         {**BASE, "space.yaml": dump({"base": "base.yaml", "hypotheses": [
             {"name": "e", "grid": {"training.seed": [0]}}, {"name": "e", "grid": {"training.seed": [1]}}]})}),
    # runner flags
    Case("run-max-concurrent-0", "run flags", "--max-concurrent 0", "run", (*RUN, "--max-concurrent", "0"),
         ("--max-concurrent", "expected a positive integer"), SPACE),
    Case("run-gpus-2", "run flags", "--gpus-per-trial 2", "run", (*RUN, "--gpus-per-trial", "2"),
         ("--gpus-per-trial", "between 0 and 1"), SPACE),
    Case("run-cpus-0", "run flags", "--cpus-per-trial 0", "run", (*RUN, "--cpus-per-trial", "0"),
         ("--cpus-per-trial", "CPUs > 0"), SPACE),
    Case("run-too-many-cpus", "run flags", "a trial needs more CPUs than the local Ray has", "run",
         (*RUN, "--cpus-per-trial", "4"), ("--cpus-per-trial", "CPU"), SPACE),
    Case("run-no-gpu", "run flags", "a trial needs a GPU the local Ray lacks", "run",
         (*RUN, "--gpus-per-trial", "0.5", "--num-gpus", "0"), ("--gpus-per-trial", "GPU"), SPACE),
    Case("run-num-cpus-0", "run flags", "--num-cpus 0", "run", ("--space", "space.yaml", "--num-cpus", "0"),
         ("--num-cpus", "expected a positive integer"), SPACE),
    Case("run-address-unreachable", "run flags", "--address where no cluster listens", "run",
         (*RUN, "--address", "127.0.0.1:1"), ("--address 127.0.0.1:1", "no Ray cluster answers"), SPACE),
    Case("run-unknown-flag", "run flags", "unknown flag", "run", (*RUN, "--bogus"),
         ("unrecognized arguments", "--bogus"), SPACE),
    Case("run-abbreviated", "run flags", "abbreviated flag", "run", (*RUN, "--max-conc", "2"),
         ("unrecognized arguments", "--max-conc"), SPACE),
    Case("run-not-a-number", "run flags", "not a number", "run", (*RUN, "--max-concurrent", "two"),
         ("--max-concurrent", "invalid int value"), SPACE),
    Case("run-no-space", "run flags", "--space missing", "run", ("--storage", "results"), ("--space", "required")),
    Case("run-seeds-2-64", "run flags", "--seeds beyond 2**64 - 1", "run", (*RUN, "--seeds", f"0,{2**64}"),
         ("--seeds", "from 0 to 2**64 - 1"), SPACE),
    Case("run-num-gpus-half", "run flags", "--num-gpus 0.5", "run", (*RUN, "--num-gpus", "0.5"),
         ("--num-gpus: expected a whole number >= 0, got 0.5",), SPACE),
    Case("run-num-gpus-inf", "run flags", "--num-gpus inf", "run", (*RUN, "--num-gpus", "inf"),
         ("--num-gpus: expected a whole number >= 0, got inf",), SPACE),
    Case("run-dashboard-host", "run flags", "--dashboard-host neither an address nor a host name", "run",
         (*RUN, "--dashboard-host", "not a host"), ("--dashboard-host", "an IP address or a host name"), SPACE),
    Case("run-no-dashboard-address", "run flags", "--no-dashboard with --address (a cluster's dashboard is its head's)",
         "run", (*RUN, "--no-dashboard", "--address", "127.0.0.1:6379"), ("--no-dashboard", "--address"), SPACE),
    Case("run-no-dashboard-host", "run flags", "--no-dashboard with --dashboard-host", "run",
         (*RUN, "--no-dashboard", "--dashboard-host", "0.0.0.0"), ("--no-dashboard", "--dashboard-host"), SPACE),
    # --resume
    Case("resume-no-name", "resume", "without --name", "run", (*RUN, "--resume"), ("--resume", "--name"), SPACE),
    Case("resume-missing", "resume", "an experiment that does not exist", "run", (*RUN, "--name", "x", "--resume"),
         ("--resume", "no experiment"), SPACE),
    Case("resume-no-state", "resume", "killed before Tune first saved its state", "run",
         (*RUN, "--name", "x", "--resume"), ("--resume", "no saved Tune state"),
         {**SPACE, "results/x/space.yaml": "name: tiny\n"}),
    Case("resume-space-changed", "resume", "the space file changed since the start", "run",
         (*RUN, "--name", "x", "--resume"), ("--resume", "differs"),
         {**SPACE, "results/x/space.yaml": space_record_of(space(grid={"training.seed": [1]}))}),
    Case("resume-base-changed", "resume", "the base changed so that a recorded trial's values make no config", "run",
         (*RUN, "--name", "x", "--resume"), ("--resume", "differs"),
         {**SPACE, "wide.yaml": config(model__n_embd=40),
          "results/x/space.yaml": space_record_of(space(base="wide.yaml", grid={"model.n_head": [5]}))}),
    Case("resume-state-damaged", "resume", "Tune's state file cut short, no good copy kept", "run",
         (*RUN, "--name", "x", "--resume"),
         ("--resume", "experiment_state-2026-01-01_00-00-00.json is cut short or not JSON (19 bytes)",
          "no good copy was kept", "the folder is left as it is", "--rebuild-state"),
         {**SPACE, "results/x/space.yaml": space_record_of(space(), '{"trial_data": [["{', pickle.dumps({}))}),
    Case("resume-rebuild-alone", "resume", "--rebuild-state without --resume", "run",
         (*RUN, "--name", "x", "--rebuild-state"), ("--rebuild-state", "only with --resume"), SPACE),
    Case("resume-name-exists", "resume", "--name of an existing experiment, without --resume", "run",
         (*RUN, "--name", "x"), ("--name x", "exists"), {**SPACE, "results/x/space.yaml": "name: tiny\n"}),
    # --storage
    Case("storage-under-file", "storage", "a path under a regular file", "run",
         ("--space", "space.yaml", "--storage", "file.txt/sub"), ("--storage file.txt/sub", "is not a folder"),
         {**SPACE, "file.txt": "x"}),
    Case("storage-no-parent", "storage", "a parent folder that does not exist", "run",
         ("--space", "space.yaml", "--storage", "no/such/folder"), ("--storage no/such/folder", "does not exist"),
         SPACE),
    Case("storage-proc", "storage", "unwritable (/proc, which stops root too)", "run",
         ("--space", "space.yaml", "--storage", "/proc/ray_results"),
         ("--storage /proc/ray_results", "cannot write in /proc"), SPACE),
    Case("storage-full", "storage", "disk full (less free than the runner needs)", "run, disk full", RUN,
         ("--storage", "MiB free", "less than"), SPACE),
    Case("storage-unknown-scheme", "storage", "a URI of a scheme pyarrow does not know", "run",
         ("--space", "space.yaml", "--storage", "foo://bucket/results"),
         ("--storage foo://bucket/results", "a filesystem pyarrow knows", "got foo://"), SPACE),
    Case("storage-dry-run", "storage", "`--dry-run` with such a URI, refused as the run refuses it", "run",
         ("--space", "space.yaml", "--storage", "foo://bucket/results", "--dry-run"),
         ("--storage foo://bucket/results", "a filesystem pyarrow knows", "got foo://"), SPACE),
    Case("storage-symlink-loop", "storage", "a loop of symbolic links", "run",
         ("--space", "space.yaml", "--storage", "results"), ("--storage results", "a loop of them"),
         {**SPACE, "results": symlink_loop}),
    # experiment folders given to the analysis
    Case("analysis-missing", "analysis", "missing folder", "analysis", ("all", "nope"),
         ("nope", "no such experiment directory")),
    Case("analysis-empty", "analysis", "empty folder", "analysis", ("all", "exp"), ("exp", "no trials"),
         {"exp": folder}),
    Case("analysis-half-written", "analysis", "a trial folder with an empty result.json, no checkpoint", "analysis",
         ("all", "exp"), ("exp", "no trial has reported"),
         {"exp/t0/trial.json": TRIAL_RECORD, "exp/t0/result.json": ""}),
    Case("analysis-truncated", "analysis", "a trial folder with a truncated result.json, no checkpoint", "analysis",
         ("all", "exp"), ("exp", "no trial has reported"),
         {"exp/t0/trial.json": TRIAL_RECORD, "exp/t0/result.json": '{"step": 0, "overall_lo'}),
    # the analysis' and benchmarks' own flags
    Case("analysis-unknown-command", "analysis flags", "unknown command", "analysis", ("rank", "exp"),
         ("invalid choice: 'rank'", "export")),
    Case("analysis-no-folder", "analysis flags", "no experiment folder", "analysis", ("report",),
         ("experiment_dir",)),
    Case("analysis-no-prompts", "analysis flags", "no fresh prompts (`--n-prompts 0`)", "analysis",
         ("evaluate", "exp", "--n-prompts", "0"), ("--n-prompts", "must be a positive integer, got 0"),
         {"exp": folder}),
    Case("analysis-seed-negative", "analysis flags", "a negative prompt seed", "analysis",
         ("all", "exp", "--seed", "-1"), ("--seed", "from 0 to 2**64 - 1", "got -1"), {"exp": folder}),
    Case("benchmark-step-unknown-flag", "benchmark flags", "step: a flag that is neither its own nor a config key",
         "benchmarks.step", ("--warm",), ("--warm", "--section.key")),
    Case("benchmark-step-unknown-variant", "benchmark flags", "step: a variant that is not a label of REPORT.md's",
         "benchmarks.step", ("--variants", "L1"), ("--variants", "unknown L1")),
    Case("benchmark-sweep-not-a-number", "benchmark flags", "sweep: a count that is not a number",
         "benchmarks.sweep", ("--steps", "many"), ("--steps", "invalid int value")),
    # a space's `include:` of other space files
    Case("space-include-missing", "space", "an `include` of a missing file", "run", RUN,
         ("space.yaml: include[0]: no such file", "nope.yaml"), {**BASE, "space.yaml": space(include=["nope.yaml"])}),
    Case("space-include-cycle", "space", "two spaces that include each other", "run", RUN,
         ("other.yaml: include[0]: cycle through", "may not include itself"),
         {**BASE, "space.yaml": space(include=["other.yaml"]), "other.yaml": space(include=["space.yaml"])}),
    Case("space-include-same-name", "space", "a hypothesis name of an included file given again", "run", RUN,
         ("space.yaml: hypotheses[0].name: must differ", "other.yaml"),
         {**BASE, "space.yaml": space(include=["other.yaml"]), "other.yaml": space()}),
    Case("space-include-other-base", "space", "an included space of another base", "run", RUN,
         ("space.yaml: include[0]", "base sets training.train_steps to 31", "must have the including one's base"),
         {**BASE, "space.yaml": space(include=["other.yaml"]), "base31.yaml": config(training__train_steps=31),
          "other.yaml": space(base="base31.yaml", grid={"training.seed": [1]})}),
    Case("space-include-not-list", "space", "an `include` that is not a list", "run", RUN,
         ("space.yaml", "include: expected a non-empty list of strings"),
         {**BASE, "space.yaml": space(include="other.yaml")}),
]


def snapshot(root: Path) -> dict:
    """Every path under `root`: folders as None, links by their target, files by their content's hash, and
    anything else (a FIFO, which a read would block on) by its kind."""
    def entry(path: Path):
        if path.is_symlink():
            return f"link to {os.readlink(path)}"
        if path.is_dir():
            return None
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "not a regular file"
    return {str(p.relative_to(root)): entry(p) for p in sorted(root.rglob("*"))}


def prepare(case: Case, sandbox: Path, mpl_cache: str) -> tuple[dict, dict]:
    """The sandbox with the case's files; (the command for `Commands.run_many`, the sandbox's snapshot)."""
    work, home, tmp = sandbox / "work", sandbox / "home", sandbox / "tmp"
    for folder in (work, home, tmp):
        folder.mkdir(parents=True)
    for name, content in case.files.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "RAY_TMPDIR": str(tmp), "MPLCONFIGDIR": mpl_cache}
    command = {"args": [*PROGRAMS[case.program], *case.argv], "cwd": str(work), "env": env, "timeout": 120}
    return command, snapshot(sandbox)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, commands):
    """Every selected case, forked two at a time from one process that imported the programs once
    (helpers/commands.py): a fresh interpreter spends 5-12 s importing torch, pandas and scikit-learn."""
    selected = [item.callspec.params["case"] for item in request.session.items
                if getattr(item, "callspec", None) and isinstance(item.callspec.params.get("case"), Case)]
    sandboxes = [tmp_path_factory.mktemp(case.id) for case in selected]
    prepared = [prepare(case, sandbox, commands.env["MPLCONFIGDIR"]) for case, sandbox in zip(selected, sandboxes)]
    done = commands.run_many([command for command, _ in prepared])
    return {case.id: {"rc": ran.returncode, "stderr": ran.stderr, "before": before, "after": snapshot(sandbox),
                      "code_ran": (sandbox / "work" / CODE_RAN).exists()}
            for case, sandbox, (_, before), ran in zip(selected, sandboxes, prepared, done)}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_fails_cleanly(case, outcomes):
    outcome = outcomes[case.id]
    lines = outcome["stderr"].splitlines()
    assert "Traceback" not in outcome["stderr"], outcome["stderr"]
    assert outcome["rc"] == 2, outcome["stderr"]
    assert len(lines) == 1 and lines[0].startswith("error: "), outcome["stderr"]
    for fragment in case.expect:
        assert fragment in lines[0], (fragment, lines[0])
    assert not outcome["code_ran"]
    assert outcome["after"] == outcome["before"], "something was written (or Ray started)"


@pytest.mark.slow
def test_an_unreachable_address_fails_within_15_seconds(tmp_path):
    """Ray retries an address for minutes before it gives up; the runner says so at once."""
    for name, text in SPACE.items():
        (tmp_path / name).write_text(text)
    started = time.monotonic()
    done = subprocess.run([sys.executable, *PROGRAMS["run"], *RUN, "--address", "127.0.0.1:1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    print(f"\nunreachable --address: exit {done.returncode} after {took:.1f} s")
    # Ray's own retries take minutes; 30 s leaves a slow CPU room for Python's start and the imports
    assert done.returncode == 2 and done.stderr.startswith("error: --address 127.0.0.1:1") and took < 30
    assert not (tmp_path / "results").exists()


def test_the_table_is_large_and_ids_unique():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert {c.surface for c in CASES} == set(SURFACES)


def test_code_pickles_are_refused_by_every_loader(tmp_path, monkeypatch):
    """The three loaders of `.pt` files refuse a pickle that would run code, and the code does not run."""
    from analysis import AnalysisWarning
    from analysis.experiment import load_latest_checkpoint as analysis_checkpoint
    from trainers.checkpoint import load_checkpoint, load_research_checkpoint

    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "trial" / "checkpoint_000000" / "checkpoint.pt"
    evil.parent.mkdir(parents=True)
    code_pickle(evil)
    with pytest.raises(ValueError, match="not a loadable checkpoint"):
        load_checkpoint(evil)
    with pytest.raises(ValueError, match="only tensors and containers"):
        load_research_checkpoint(build_model(TINY_BASE["model"]), evil)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert analysis_checkpoint(tmp_path / "trial") is None
    assert any(issubclass(w.category, AnalysisWarning) for w in caught)
    assert not (tmp_path / CODE_RAN).exists()


def render_bad_input() -> str:
    """docs/RELIABILITY.md's table of bad inputs, from CASES."""
    lines = ["| input | cases | what is wrong |", "|---|---|---|"]
    for surface, title in SURFACES.items():
        cases = [c for c in CASES if c.surface == surface]
        listed = "; ".join(c.what for c in cases)
        lines.append(f"| {title} | {len(cases)} | {listed} |")
    lines.append(f"| **all** | **{len(CASES)}** | |")
    return "\n".join(lines)
