"""A resume that repairs Tune's damaged state sets aside only the trial folders of the run it repairs: the
analysis, W&B's folders and the extensions stay where they are, and the resume finds nothing missing. The same for
`--rebuild-state`, and a resume names an extension's folder that is gone instead of saying it never saved a state.
The sweeps are tiny (30 steps, n_embd 16) on a real embedded Ray."""
import hashlib
import re
from pathlib import Path

import pytest
import torch

from helpers.experiments import write_trial
from helpers.sweeps import TINY_BASE, forked_sweep, record, rows, sweep_command, write_space
from trainers.layout import (PLOTS_DIR, REPORT_FILE, RUNNER_DIR, WANDB_DIR, extension_folder, figures, newest_state,
                             offline_runs, run_trial_folders)
from trainers.models import build_model
from trainers.records import read_space_record, trial_failed, write_space_record
from tune_looped import extend, load_space
from tune_looped.cluster import ray_held
from tune_looped.rebuild import plan as plan_rebuild
from tune_looped.run import main
from tune_looped.space import space_record, trial_config

# The runner checks a pretrained file in the folder it starts in, before Ray starts; a trial runs in a folder of its
# own, where the same path names nothing: the trial fails every time it starts, and only that trial.
RUNNER_ONLY = "/proc/self/cwd/pretrained.pt"
DEPTH = {"name": "depth", "description": "Does a deeper loop body learn better?",
         "grid": {"model.n_layer": [1, 2], "model.pretrained_path": [None]}}
PRETRAINED = {"name": "pretrained", "description": "Does a pretrained start help?",
              "grid": {"model.n_layer": [1], "model.pretrained_path": [RUNNER_ONLY]}}
LAST_STEP = TINY_BASE["training"]["train_steps"] - 1
WANDB_OFFLINE = ("--wandb", "--wandb-mode", "offline")


def files_of(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


ONE_TRY = ("--max-failures", "0")  # the errored trial stays errored, so that the resume has one to run again


def runner_command(tmp_path, space, *extra) -> list[str]:
    return sweep_command(space, tmp_path / "r", "s", *ONE_TRY, *extra)


def in_process(capsys, tmp_path, space, *extra) -> tuple[int, str, str]:
    """The runner run by this process (on the Ray a `ray_held` around it keeps): (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = main(runner_command(tmp_path, space, *extra)[3:])  # the arguments after `python -m tune_looped.run`
    out, err = capsys.readouterr()
    return rc, out, err


def analysis(commands, tmp_path, *args) -> None:
    done = commands.run(["-m", "analysis", *args], cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def started_trials(out: str) -> list[str]:
    """The ids of the trials that started, from the first line each writes (`trial <id> <run name> ...`)."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    return re.findall(r"^\(run_trial pid=\d+\) trial (\S+) ", plain, flags=re.MULTILINE)


def trial_folders_by_id(run_dir: Path) -> dict[str, Path]:
    return {record(folder)["trial_id"]: folder for folder in run_trial_folders(run_dir)}


@pytest.mark.slow
def test_a_resume_past_a_damaged_state_leaves_the_analysis_and_the_extension_in_place(tmp_path, commands, capsys,
                                                                                       monkeypatch):
    """A sweep with W&B offline and an errored trial, its analysis and W&B analysis run, a finished extension of
    new seeds; the first run's newest state cut short. The resume restores the first run from its kept copy: only
    the errored trial runs again, and the analysis, both W&B folders and the extension stay as they were. The sweep
    and the extension run in this process, on one Ray; the resume, whose trials' lines are read, is a runner of its
    own, forked from the command server."""
    space = load_space(write_space(tmp_path / "full.yaml", [DEPTH, PRETRAINED], seeds=[0]))
    write_space(tmp_path / "depth.yaml", [DEPTH], seeds=[0])
    model = trial_config(space.base, {"model.n_layer": 1}).model
    torch.save({"model": build_model(model).state_dict()}, tmp_path / "pretrained.pt")
    experiment = tmp_path / "r" / "s"

    monkeypatch.chdir(tmp_path)  # where the runner finds pretrained.pt
    with ray_held():
        rc, out, err = in_process(capsys, tmp_path, space.path, *WANDB_OFFLINE)
        # a failed trial is exit status 1, with the summary's count
        assert rc == 1 and "2 finished, 1 error" in out.splitlines(), err
        failing = [trial_id for trial_id, folder in trial_folders_by_id(experiment).items() if trial_failed(folder)]
        assert len(failing) == 1
        analysis(commands, tmp_path, "all", experiment)
        analysis(commands, tmp_path, "wandb", experiment, "--mode", "offline")
        assert figures(experiment) and (experiment / REPORT_FILE).is_file() and len(offline_runs(experiment)) == 1

        rc, out, err = in_process(capsys, tmp_path, tmp_path / "depth.yaml", "--extend", "--seeds", "1",
                                  *WANDB_OFFLINE)
        assert rc == 1 and "4 finished, 1 error" in out.splitlines(), err
    assert [r.folder for r in read_space_record(experiment).runs] == [".", extension_folder(1)]
    extension = trial_folders_by_id(experiment / extension_folder(1))
    assert len(extension) == 2 and all(rows(folder)[-1]["step"] == LAST_STEP for folder in extension.values())
    finished = {trial_id: folder for trial_id, folder in {**trial_folders_by_id(experiment), **extension}.items()
                if trial_id not in failing}
    assert len(finished) == 4 and all(offline_runs(folder) for folder in finished.values())
    before = {trial_id: (rows(folder), files_of(folder)) for trial_id, folder in finished.items()}
    kept = {name: files_of(experiment / name) for name in (PLOTS_DIR, WANDB_DIR, extension_folder(1))}
    report = (experiment / REPORT_FILE).read_bytes()
    state = newest_state(experiment)
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])

    resumed = forked_sweep(commands, tmp_path, space.path, *ONE_TRY, "--resume", *WANDB_OFFLINE)
    assert resumed.returncode == 1 and "4 finished, 1 error" in resumed.stdout.splitlines(), resumed.stderr
    told = resumed.stdout.splitlines() + resumed.stderr.splitlines()
    assert not [line for line in told if line.startswith(("missing:", "not asked for:", "warning: set aside"))], told
    assert any(line.startswith(f"warning: {state} was cut short or not JSON (") for line in resumed.stderr.splitlines())
    assert started_trials(resumed.stdout) == failing
    assert {trial_id: (rows(folder), files_of(folder)) for trial_id, folder in finished.items()} == before
    assert {name: files_of(experiment / name) for name in kept} == kept
    assert (experiment / REPORT_FILE).read_bytes() == report
    assert not list((experiment / RUNNER_DIR).glob("replaced/*"))


def test_a_rebuild_sets_aside_only_the_first_runs_trials_that_did_not_end(tmp_path):
    space = load_space(write_space(tmp_path / "space.yaml", [DEPTH], seeds=[0]))
    experiment = tmp_path / "r" / "s"
    experiment.mkdir(parents=True)
    write_space_record(experiment, space_record(space, False))
    done, failed = [{"hypotheses": ["depth"], "values": t.values} for t in space.trials]
    write_trial(experiment, "done", **done, rows=[{"step": LAST_STEP, "trial_id": "a"}])
    write_trial(experiment, "failed", **failed, rows=[{"step": 9, "trial_id": "b"}], error=True)
    # a stale extension's trial, an analysis, a W&B run, Tune's state and the runner's copy of it
    write_trial(experiment / "extend-1", "late", **failed, rows=[{"step": 9, "trial_id": "c"}])
    others = ["plots/loss_curves.png", "wandb/offline-run-x/run-x.wandb", "REPORT.md", "curves.parquet",
              "summary.parquet", "extend-1/tuner.pkl"]
    for name in (*others, "tuner.pkl", "experiment_state-x.json", f"{RUNNER_DIR}/experiment_state-x.json"):
        (experiment / name).parent.mkdir(parents=True, exist_ok=True)
        (experiment / name).write_text("x")
    rebuild = plan_rebuild(experiment, space, read_space_record(experiment))
    assert rebuild.kept == (experiment / "done",)
    assert rebuild.replaced == (experiment / "failed", experiment / "experiment_state-x.json",
                                experiment / "tuner.pkl", experiment / RUNNER_DIR / "experiment_state-x.json")
    aside = rebuild.set_aside(experiment)
    assert all((experiment / name).read_text() == "x" for name in others)
    assert (experiment / "extend-1" / "late" / "trial.json").exists() and (aside / "failed" / "trial.json").exists()


def test_a_resume_names_an_extension_folder_that_was_set_aside(tmp_path, capsys):
    """Runners before this one set an extension's folder aside with a repair of the first run: a resume or an
    extension says where it went, instead of taking the extension for one Tune never saved a state in."""
    space_file = write_space(tmp_path / "space.yaml", [DEPTH], seeds=[0])
    experiment = tmp_path / "r" / "s"
    experiment.mkdir(parents=True)
    saved = space_record(load_space(space_file), False)
    write_space_record(experiment, extend.plan(experiment, load_space(space_file, seeds=[0, 1]), saved, False).record)
    moved = experiment / RUNNER_DIR / "replaced" / "20260101-000000" / "extend-1"
    moved.mkdir(parents=True)
    (moved / "experiment_state-x.json").write_text("{}")
    before = files_of(experiment)
    args = ["--space", str(space_file), "--storage", str(tmp_path / "r"), "--name", "s"]
    for flags in (["--resume", "--seeds", "0,1"], ["--resume", "--seeds", "0,1", "--rebuild-state"],
                  ["--extend", "--seeds", "2"]):
        assert main([*args, *flags]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"error: {flags[0]}: {experiment / 'space.yaml'} lists the Tune run extend-1, but "
            f"{experiment / 'extend-1'} is not there; a repair set it aside in {moved}: move it back"]
    assert files_of(experiment) == before
