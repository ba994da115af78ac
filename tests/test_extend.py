"""Experiments that grow: `--extend` adds seeds, grid values and hypotheses to an experiment that ran, on a real
embedded Ray (which trials ran is read from Tune's own trial events); `run_space`, the Python API the command line
calls; `--set`; `python -m analysis compare`. Trials are tiny (20-30 steps, n_embd 16)."""
import hashlib
import shlex
import signal

import pandas as pd
import pytest
import yaml

from analysis.__main__ import main as analysis_main
from helpers.experiments import write_experiment
from helpers.sweeps import TINY_BASE, TrialEvents, finish, rows, run_printed, start_sweep, wait_for, write_space
from trainers.config import apply_overrides
from trainers.layout import (RUNNER_DIR, SPACE_RECORD, SUMMARY_FRAME, TRIAL_RECORD, checkpoint_folder, frame_file,
                             run_trial_folders, trial_folders)
from trainers.records import read_space_record, write_space_record
from tune_looped import SpaceError, SweepError, load_space, run_space
from tune_looped.run import main
from tune_looped.space import space_record

DEPTH = [{"name": "depth", "description": "Does a deeper loop body learn better?", "grid": {"model.n_layer": [1, 2]}}]


def files_of(folder) -> dict[str, str]:
    """Every file under `folder` but the runner's own (its lock) and the space record: path -> sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file() and RUNNER_DIR not in p.relative_to(folder).parts and p.name != SPACE_RECORD}


def read_trial(folder) -> dict:
    return yaml.safe_load((folder / TRIAL_RECORD).read_text())


def trial_ids(folders) -> set[str]:
    return {read_trial(f)["trial_id"] for f in folders}


def started(recorder: TrialEvents) -> set[str]:
    return {trial_id for kind, trial_id in recorder.events if kind == "start"}


def command(space, storage, *extra) -> list[str]:
    return ["--space", str(space), "--storage", str(storage), "--name", "e", "--num-cpus", "1", "--no-dashboard",
            *extra]


@pytest.mark.usefixtures("one_ray")
class TestOnOneRay:
    """The in-process sweeps share one Ray, as a study's rounds do; the interrupted extension and its resume are
    runners of their own."""

    @pytest.mark.slow
    def test_run_space_then_extend_with_seeds_runs_only_the_new_trials(self, tmp_path, monkeypatch, capsys):
        from ray.tune import ResultGrid

        space = write_space(tmp_path / "space.yaml", DEPTH, seeds=[0])
        storage = tmp_path / "r"
        sweep = run_space(space, storage=str(storage), name="e", overrides={"training.train_steps": 20}, report=False,
                          num_cpus=1, dashboard=False)
        experiment = storage / "e"
        assert sweep.experiment_dir == experiment
        assert isinstance(sweep.results, ResultGrid) and len(sweep.results) == 2 and not sweep.results.errors
        assert sorted(r.metrics["step"] for r in sweep.results) == [19, 19]
        record = read_space_record(experiment)
        assert record.overrides == {"training.train_steps": 20} and record.base["training"]["train_steps"] == 20
        first = files_of(experiment)

        recorder = TrialEvents()
        recorder.install(monkeypatch)
        capsys.readouterr()
        rc = main(command(space, storage, "--extend", "--seeds", "1,2", "--set", "training.train_steps=20"))
        out, err = capsys.readouterr()
        assert rc == 0, err
        new = run_trial_folders(experiment / "extend-1")
        assert len(new) == 4 and started(recorder) == trial_ids(new)
        assert "--extend: 4 new trial(s) in extend-1/; seeds now 0,1,2" in err
        after = files_of(experiment)
        assert {path: after[path] for path in first} == first, "a file of the first run changed"
        record = read_space_record(experiment)
        assert [run.folder for run in record.runs] == [".", "extend-1"]
        assert sorted(t.values["training.seed"] for t in record.runs[1].trials) == [1, 1, 2, 2]
        assert len(record.trials) == 6 and record.overrides == {"training.train_steps": 20}
        summary = pd.read_parquet(frame_file(experiment, SUMMARY_FRAME))
        assert sorted(summary["training.seed"]) == [0, 0, 1, 1, 2, 2] and set(summary["status"]) == {"finished"}
        report = (experiment / "REPORT.md").read_text()
        assert "6 trials: 6 finished; 3 seeds per configuration." in report
        assert "6 finished" in out

        # the same extension again has nothing to add: one line, exit 2, nothing run
        rc = main(command(space, storage, "--extend", "--seeds", "1,2", "--set", "training.train_steps=20"))
        assert rc == 2 and capsys.readouterr().err.splitlines() == [
            f"error: --extend: nothing to add: every trial the space asks for is in {experiment} and has ended; add "
            "seeds (--seeds), grid values or hypotheses"]


    @pytest.mark.slow
    def test_extend_with_a_new_grid_value_and_a_new_hypothesis(self, tmp_path, monkeypatch, capsys):
        space = write_space(tmp_path / "space.yaml", DEPTH, seeds=[0])
        storage = tmp_path / "r"
        assert main(command(space, storage, "--no-report")) == 0
        experiment = storage / "e"
        first = files_of(experiment)
        depth = {read_trial(f)["values"]["model.n_layer"]: f for f in trial_folders(experiment)}

        grown = [{"name": "depth", "grid": {"model.n_layer": [1, 2, 3]}},
                 {"name": "width", "grid": {"model.n_embd": [16, 24]}}]
        write_space(space, grown, seeds=[0])
        recorder = TrialEvents()
        recorder.install(monkeypatch)
        rc = main(command(space, storage, "--extend"))
        assert rc == 0, capsys.readouterr().err
        new = run_trial_folders(experiment / "extend-1")
        values = sorted((read_trial(f)["values"]["model.n_layer"], read_trial(f)["values"]["model.n_embd"])
                        for f in new)
        assert values == [(1, 24), (3, 16)] and started(recorder) == trial_ids(new)
        # the first run's records name the new hypothesis and key; nothing else of the first run changed
        after = files_of(experiment)
        assert {p: after[p] for p in first if not p.endswith(TRIAL_RECORD)} == \
            {p: d for p, d in first.items() if not p.endswith(TRIAL_RECORD)}
        assert [(read_trial(depth[n])["hypotheses"], read_trial(depth[n])["values"]["model.n_embd"])
                for n in (1, 2)] == [(["depth", "width"], 16), (["depth"], 16)]
        report = (experiment / "REPORT.md").read_text()
        before_width, width = report.split("## width")
        assert "`n_embd=16`" in width and "`n_embd=24`" in width and "`L=3`" in before_width
        assert "4 trials: 4 finished" in report


    @pytest.mark.slow
    def test_an_interrupted_extension_resumes(self, tmp_path, commands):
        # the stop is sent at the extension's second checkpoint (step 40): it finds the extension unfinished unless
        # both its trials, 200 steps, end before the driver takes the signal
        base = apply_overrides(TINY_BASE, {"training.train_steps": 120, "training.save_every_steps": 20,
                                           "wandb.log_every_steps": 20})
        space = write_space(tmp_path / "space.yaml", [{"name": "s", "grid": {"model.n_layer": [1]}}], base, seeds=[0])
        storage = tmp_path / "r"
        assert main(command(space, storage, "--no-report", "--max-concurrent", "1")) == 0
        experiment = storage / "e"
        first = files_of(experiment)
        sweep = start_sweep(tmp_path, space, "--extend", "--seeds", "1,2", "--max-concurrent", "1", name="e",
                            commands=commands)
        wait_for(lambda: [f for f in run_trial_folders(experiment / "extend-1") if checkpoint_folder(f, 1).exists()],
                 240, every=0.05)
        sweep.send_signal(signal.SIGINT)
        out, err = finish(sweep, tmp_path, name="e", timeout=120)
        assert sweep.returncode == 130, err[-3000:]
        resume = shlex.split(err.split("resume with:")[1].strip().splitlines()[0])
        assert "--extend" not in resume and resume[-3:] == ["--name", "e", "--resume"]
        resumed = run_printed(commands, resume, tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "3 finished" in resumed.stdout
        assert len(run_trial_folders(experiment / "extend-1")) == 2
        assert all(rows(f)[-1]["step"] == 119 for f in trial_folders(experiment))
        after = files_of(experiment)
        assert {path: after[path] for path in first} == first


def recorded_experiment(tmp_path, hypotheses=DEPTH, **extra):
    """An experiment folder holding the space record of `hypotheses` (seeds [0]), as a runner leaves it."""
    space = write_space(tmp_path / "space.yaml", hypotheses, seeds=[0], **extra)
    experiment = tmp_path / "r" / "e"
    experiment.mkdir(parents=True)
    write_space_record(experiment, space_record(load_space(space), False))
    return space, experiment


@pytest.mark.parametrize("change, flags, key", [
    ("base", ["--set", "training.train_steps=25"], "base.training.train_steps"),
    ("overrides", ["--set", "wandb.notes=x"], "base.wandb.notes"),
    ("resources", ["--space-resources"], "resources.cpu"),
    ("num_samples", ["--space-samples"], "num_samples"),
])
def test_an_extension_that_changes_a_trial_that_ran_is_refused(tmp_path, capsys, change, flags, key):
    space, experiment = recorded_experiment(tmp_path)
    if flags == ["--space-resources"]:
        write_space(space, DEPTH, seeds=[0], resources={"cpu": 2})
        flags = ["--num-cpus", "2"]  # a Ray where the new request fits: only the change is refused
    elif flags == ["--space-samples"]:
        write_space(space, DEPTH, seeds=[0], num_samples=2)
        flags = []
    before = {p: p.stat().st_mtime_ns for p in experiment.rglob("*")}
    assert main(command(space, tmp_path / "r", "--extend", "--seeds", "1", *flags)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --extend: {key} differs from the experiment's {experiment / SPACE_RECORD}; an extension must not "
        "change the trials that ran (start a new experiment with another --name for that)"]
    assert {p: p.stat().st_mtime_ns for p in experiment.rglob("*")} == before


def test_an_extension_that_scores_its_trials_another_way_is_refused(tmp_path, capsys):
    """The analysis scores old and new trials on the same prompts: the record's `evaluation:` stays."""
    space, experiment = recorded_experiment(tmp_path, evaluation={"n_prompts": 64})
    write_space(space, DEPTH, seeds=[0], evaluation={"n_prompts": 32})
    before = {p: p.stat().st_mtime_ns for p in experiment.rglob("*")}
    assert main(command(space, tmp_path / "r", "--extend", "--seeds", "1")) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: --extend: evaluation.n_prompts differs from the experiment's {experiment / SPACE_RECORD}; the "
        "trials an extension adds are scored as the earlier ones were (`python -m analysis all EXPERIMENT_DIR` with "
        "--n-prompts, --max-loops or --seed scores them all another way)"]
    assert {p: p.stat().st_mtime_ns for p in experiment.rglob("*")} == before


@pytest.mark.parametrize("flags, message", [
    (["--extend"], "--extend: needs --name of the experiment to add trials to"),
    (["--extend", "--name", "e", "--resume"], "--extend: not with --resume; --extend resumes the experiment's "
                                              "unfinished trials too"),
    (["--extend", "--name", "nowhere"], "--extend: no experiment at {storage}/nowhere"),
    (["--extend", "--name", "e", "--storage", "s3://bucket/x"], "--extend: needs a local --storage (a path), got "
                                                               "s3://bucket/x"),
    (["--calibrate"], "--calibrate: only with --dry-run, whose time estimates it measures"),
])
def test_bad_extension_flags(tmp_path, capsys, flags, message):
    space, experiment = recorded_experiment(tmp_path)
    storage = tmp_path / "r"
    argv = ["--space", str(space), *(["--storage", str(storage)] if "--storage" not in flags else []), *flags]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message.format(storage=storage)}"]


@pytest.mark.parametrize("overrides, error", [
    ({"model.bogus": 1}, "--set model.bogus: unknown key; model has: "),
    ({"training.train_steps": "many"}, "--set training.train_steps: expected an integer, got 'many'"),
    ({"model.n_layer": 3}, "--set model.n_layer: {space} sweeps this key (a grid, sample or seed key), so every "
                           "trial sets it; change it in the space file instead"),
    ({"training.seed": 3}, "--set training.seed: {space} sweeps this key"),
    ({"wandb.key": "k"}, "--set wandb.key: a secret never goes into the space record; set WANDB_API_KEY instead"),
])
def test_run_space_refuses_bad_input_before_anything_starts(tmp_path, overrides, error):
    space = write_space(tmp_path / "space.yaml", DEPTH, seeds=[0])
    with pytest.raises(SpaceError) as raised:
        run_space(space, storage=str(tmp_path / "r"), name="e", overrides=overrides)
    assert str(raised.value).startswith(error.format(space=space))
    assert not (tmp_path / "r").exists()


def test_run_space_refuses_unknown_keywords_and_bad_seeds(tmp_path):
    space = write_space(tmp_path / "space.yaml", DEPTH)
    with pytest.raises(TypeError, match="max_concurent"):
        run_space(space, max_concurent=2)
    with pytest.raises(SpaceError, match=r"seeds: expected distinct integers"):
        run_space(space, seeds=[1, 1])
    assert issubclass(SweepError, RuntimeError)


@pytest.mark.parametrize("texts, expected", [
    (["training.train_steps=50"], {"training.train_steps": 50}),
    (["training.train_steps=50", "model.n_embd=16"], {"training.train_steps": 50, "model.n_embd": 16}),
    (["training.learning_rate=1e-3"], {"training.learning_rate": 0.001}),
    (["wandb.notes=123"], {"wandb.notes": "123"}),
    (["model.use_lstm_layer=true"], {"model.use_lstm_layer": True}),
])
def test_set_reads_dotted_keys_as_the_single_run_does(texts, expected):
    from tune_looped.space import check_overrides, parse_set

    assert check_overrides(parse_set(texts)) == expected


@pytest.mark.parametrize("texts, error", [
    (["train_steps"], "--set train_steps: expected KEY=VALUE with a dotted config key, like training.train_steps=50"),
    (["model=2"], "--set model=2: expected KEY=VALUE with a dotted config key"),
    (["model.n_embd=16", "model.n_embd=32"], "--set model.n_embd: given twice; give each key once"),
    (["model.n_embd=sixteen"], "--set model.n_embd: expected an integer, got 'sixteen'"),
])
def test_set_refuses_what_is_not_a_dotted_key_and_value(texts, error):
    from tune_looped.space import check_overrides, parse_set

    with pytest.raises(SpaceError) as raised:
        check_overrides(parse_set(texts))
    assert str(raised.value).startswith(error)


def test_set_is_applied_to_every_trial_and_recorded(tmp_path):
    space = load_space(write_space(tmp_path / "space.yaml", DEPTH), overrides={"training.train_steps": 7})
    assert space.base["training"]["train_steps"] == 7 and space.overrides == {"training.train_steps": 7}
    assert {c.training.train_steps for _, c in space.configurations} == {7}
    assert space_record(space, False).overrides == {"training.train_steps": 7}


def test_compare_puts_shared_hypotheses_side_by_side(tmp_path, capsys):
    a, b = write_experiment(tmp_path / "narrow"), write_experiment(tmp_path / "wide")
    out = tmp_path / "cmp"
    assert analysis_main(["compare", str(a), str(b), "--out", str(out)]) == 0
    frame = pd.read_csv(out / "comparison.csv")
    assert set(frame["experiment"]) == {"narrow", "wide"}
    assert set(frame["hypothesis"]) == {"information_flow", "looped_n_layers"}
    # both experiments hold the same synthetic trials: the same numbers, side by side
    pivot = frame.pivot_table(index=["hypothesis", "variant"], columns="experiment", values="mean")
    assert (pivot["narrow"] - pivot["wide"]).abs().max() < 1e-12 and len(pivot) == 4
    report = (out / "COMPARISON.md").read_text()
    assert "| variant | narrow | wide |" in report
    assert len(list((out / "plots").glob("*_comparison.png"))) == 2


def test_the_analysis_of_a_folder_of_several_experiments_is_refused(tmp_path, capsys):
    for name in ("a", "b"):
        write_experiment(tmp_path / "root" / name)
        (tmp_path / "root" / name / SPACE_RECORD).write_text("name: x\n")
    assert analysis_main(["all", str(tmp_path / "root")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {tmp_path / 'root'}: holds 2 experiment(s) (a, b), not one experiment; give one experiment's "
        f"folder, e.g. {tmp_path / 'root' / 'a'}"]
    assert not (tmp_path / "root" / "REPORT.md").exists()


def test_compare_needs_two_experiments_that_share_a_hypothesis(tmp_path, capsys):
    a = write_experiment(tmp_path / "a")
    assert analysis_main(["compare", str(a), "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.strip() == "error: compare: give at least two experiment folders"
    assert not (tmp_path / "c").exists()


def test_an_extension_stopped_before_tune_saved_its_state_starts_again(tmp_path, capsys):
    """The record names extend-1, but Tune never saved its state there: `--extend` runs its trials again in the
    same folder, the folder set aside first; `--resume` says to do that."""
    from tune_looped import extend

    space_file, experiment = recorded_experiment(tmp_path)
    saved = read_space_record(experiment)
    grown = load_space(space_file, seeds=[0, 1])
    first = extend.plan(experiment, grown, saved, False)
    write_space_record(experiment, first.record)
    (experiment / "extend-1").mkdir()
    (experiment / "extend-1" / "tuner.pkl").write_bytes(b"")
    again = extend.plan(experiment, grown, read_space_record(experiment), False)
    assert again.folder == "extend-1" and again.stale == experiment / "extend-1"
    assert again.added == first.added and [r.folder for r in again.record.runs] == [".", "extend-1"]
    assert main(command(space_file, tmp_path / "r", "--resume", "--seeds", "0,1")) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --resume: extend-1 was stopped before Tune first saved its state; run its --extend command again, "
        "which starts it afresh"]


def test_the_dry_run_prints_each_trials_cost_in_run_order(tmp_path, capsys):
    from trainers.flops import training_flops
    from tune_looped.space import trial_config

    space_file = write_space(tmp_path / "space.yaml", DEPTH, seeds=[0])
    assert main(["--space", str(space_file), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[-3:] == ["TFLOP", "est.", "time"]
    space = load_space(space_file)
    flops = sorted((training_flops(trial_config(space.base, t.values)) for t in space.trials), reverse=True)
    table = [line.split() for line in lines[1:-1]]
    # run order: the deeper loop body first; each trial's FLOPs as trainers.flops counts them
    assert [row[header.index("model.n_layer")] for row in table] == ["2", "1"]
    assert [float(row[-3]) for row in table] == pytest.approx([f / 1e12 for f in flops], rel=1e-2)
    assert lines[-1].startswith("2 trials, ") and "estimated from the 133 GFLOP/s per CPU" in lines[-1]


def test_calibrate_times_the_largest_trial_here(tmp_path, capsys):
    space_file = write_space(tmp_path / "space.yaml", DEPTH, seeds=[0])
    assert main(["--space", str(space_file), "--dry-run", "--calibrate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "8 steps of the largest trial timed here" in lines[-1]
    seconds = [row.split()[-2:] for row in lines[1:-1]]
    assert all(unit in ("s", "min", "h") and float(value) >= 0 for value, unit in seconds)


def test_the_dry_run_of_an_extension_shows_only_what_it_adds(tmp_path, capsys):
    space_file, experiment = recorded_experiment(tmp_path)
    before = files_of(experiment)
    assert main(command(space_file, tmp_path / "r", "--extend", "--seeds", "1,2", "--dry-run")) == 0
    lines = capsys.readouterr().out.splitlines()
    seeds = [row.split()[lines[0].split().index("training.seed")] for row in lines[1:-1]]
    assert sorted(seeds) == ["1", "1", "2", "2"] and lines[-1].startswith("4 trials, ")
    assert files_of(experiment) == before and read_space_record(experiment).runs == []
