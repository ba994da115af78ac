"""Tune's saved state before a resume: a damaged state file or pickle is found without running it, the runner
keeps a copy of the last whole state (the trials' and the search's of one save) and of tuner.pkl, and a resume
puts the copies back in place of damaged files, setting aside the trial folders the copy does not know."""
import json
import os
import pickle
import shutil

import pytest

from helpers.sweeps import wait_for
from tune_looped.state import StateKeeper, apply_repair, damage, plan_repair

SESSION = "2026-01-01_00-00-00"


def state_text(*trials):
    data = [[json.dumps({"trial_id": t, "relative_logdir": t}), "{}"] for t in trials]
    return json.dumps({"trial_data": data, "runner_data": {"_session_str": "x"}, "stats": {}})


def save(folder, *trials, session=SESSION, search=b"search"):
    """One save of Tune's as its staging folder holds it: the trials' state, then the search's."""
    folder.mkdir(parents=True, exist_ok=True)
    state = folder / f"experiment_state-{session}.json"
    state.write_text(state_text(*trials))
    (folder / f"basic-variant-state-{session}.json").write_bytes(pickle.dumps(search))
    return state


def staging(session_dir, name="s"):
    return session_dir / "artifacts" / "2026-01-01_00-00-00" / name / "driver_artifacts"


@pytest.mark.parametrize("text, problem", [
    (state_text("t0"), None),
    (state_text("t0")[:40], "cut short or not JSON (40 bytes)"),
    ("", "empty (0 bytes)"),
    ("{}", "not Tune's experiment state (no trial_data and runner_data)"),
])
def test_a_state_file_that_tune_cannot_restore(tmp_path, text, problem):
    (tmp_path / "experiment_state-x.json").write_text(text)
    assert damage(tmp_path / "experiment_state-x.json") == problem


def test_a_pickle_cut_short_is_found_without_unpickling_it(tmp_path):
    data = pickle.dumps({"run_config": list(range(100))})
    (tmp_path / "tuner.pkl").write_bytes(data)
    assert damage(tmp_path / "tuner.pkl") is None
    (tmp_path / "tuner.pkl").write_bytes(data[:50])
    assert damage(tmp_path / "tuner.pkl") == "cut short (50 bytes, not a whole pickle)"


def test_the_keeper_copies_whole_pairs_from_the_staging_folder(tmp_path):
    experiment, session = tmp_path / "r" / "s", tmp_path / "session"
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(pickle.dumps({}))
    keeper = StateKeeper(experiment, session)
    first = save(staging(session), "t0")
    keeper.keep()
    kept = experiment / ".tune_looped"
    assert sorted(p.name for p in kept.iterdir()) == [f"basic-variant-state-{SESSION}.json", first.name, "tuner.pkl"]
    # a save under way: the trials' state is cut short, or written after the search's; neither is kept
    first.write_text(state_text("t0", "t1")[:30])
    keeper.keep()
    assert json.loads((kept / first.name).read_text())["trial_data"][0][0] == json.dumps(
        {"trial_id": "t0", "relative_logdir": "t0"})
    first.write_text(state_text("t0", "t1"))
    search = staging(session) / f"basic-variant-state-{SESSION}.json"
    os.utime(search, ns=(first.stat().st_mtime_ns - 10**9,) * 2)
    keeper.keep()
    assert len(json.loads((kept / first.name).read_text())["trial_data"]) == 1
    # a resume's save, under a newer session: its pair replaces the older one
    second = save(staging(session), "t0", "t1", session="2026-01-02_00-00-00")
    keeper.keep()
    assert sorted(p.name for p in kept.iterdir()) == ["basic-variant-state-2026-01-02_00-00-00.json", second.name,
                                                      "tuner.pkl"]


def test_the_keeper_runs_beside_the_sweep_and_takes_a_last_look(tmp_path):
    experiment, session = tmp_path / "r" / "s", tmp_path / "session"
    experiment.mkdir(parents=True)
    keeper = StateKeeper(experiment, session, every=0.05).start()
    first = save(staging(session), "t0")
    wait_for(lambda: (experiment / ".tune_looped" / first.name).exists(), timeout=30, every=0.02)
    second = save(staging(session), "t0", session="2026-01-02_00-00-00")
    keeper.stop()
    assert (experiment / ".tune_looped" / second.name).exists()


def test_a_damaged_state_is_restored_from_its_copy_and_strangers_are_set_aside(tmp_path):
    experiment = tmp_path / "s"
    for trial in ("t0", "t1"):  # t1 started after the copy was kept
        (experiment / trial).mkdir(parents=True)
        (experiment / trial / "params.json").write_text("{}")
    state = save(experiment, "t0", "t1")
    save(experiment / ".tune_looped", "t0", search=b"older search")
    assert plan_repair(experiment).damaged == []
    state.write_text(state.read_text()[:25])
    repair = plan_repair(experiment)
    assert repair.damaged == [(state, "cut short or not JSON (25 bytes)")] and not repair.unrepairable
    lines = apply_repair(experiment, repair)
    assert lines[0].startswith(f"{state} was cut short or not JSON (25 bytes); restored the copy of {state.name} "
                               "kept at ")
    assert lines[1].startswith("set aside 1 trial folder(s) that the restored state does not know, in ")
    assert json.loads(state.read_text()) == json.loads(state_text("t0"))
    # the search's state goes back with it: alone, the search would not generate t1 again
    assert pickle.loads((experiment / f"basic-variant-state-{SESSION}.json").read_bytes()) == b"older search"
    assert not (experiment / "t1").exists() and list((experiment / ".tune_looped" / "replaced").glob("*/t1"))


def test_without_a_copy_a_damaged_file_is_unrepairable(tmp_path):
    (tmp_path / "tuner.pkl").write_bytes(b"")
    state = save(tmp_path, "t0")
    state.write_text("")
    repair = plan_repair(tmp_path)
    assert repair.unrepairable == [(tmp_path / "tuner.pkl", "empty (0 bytes)"), (state, "empty (0 bytes)")]


def test_the_repair_sets_aside_only_trial_folders_of_its_run_that_the_state_does_not_know(tmp_path):
    """The first run's folder holds more than its trials: the analysis, W&B's folder, the extensions, the runner's
    own folder. Only a trial folder (the runner's record or Ray's params.json in it) the copy does not know is a
    trial that started after the copy."""
    experiment = tmp_path / "s"
    for trial, files in {"t0": ("trial.json", "params.json"), "t1": ("trial.json", "params.json"),
                         "t2": ("trial.json", "params.json"), "t3": ("params.json",),
                         "extend-1/e0": ("trial.json", "params.json"), "extend-1/e1": ("trial.json", "params.json"),
                         ".tune_looped/replaced/20260101-000000/t9": ("trial.json", "params.json")}.items():
        (experiment / trial).mkdir(parents=True)
        for name in files:
            (experiment / trial / name).write_text("{}")
    neighbours = ["plots/loss_curves.png", "wandb/offline-run-20260101_000000-abc/run-abc.wandb", "REPORT.md",
                  "curves.parquet", "summary.parquet", "space.yaml", "extend-1/tuner.pkl",
                  f"extend-1/experiment_state-{SESSION}.json"]
    for name in neighbours:
        (experiment / name).parent.mkdir(parents=True, exist_ok=True)
        (experiment / name).write_text("x")
    state = save(experiment, "t0", "t1", "t2", "t3")
    save(experiment / ".tune_looped", "t0", "t1")
    state.write_text(state.read_text()[:25])
    repair = plan_repair(experiment)
    assert repair.strangers == [experiment / "t2", experiment / "t3"] and not repair.unrepairable
    lines = apply_repair(experiment, repair)
    assert lines[1].startswith("set aside 2 trial folder(s) that the restored state does not know, in ")
    aside = (experiment / ".tune_looped" / "replaced").glob("*/t[0-9]")
    assert sorted(p.name for p in aside) == ["t2", "t3", "t9"]
    assert all((experiment / name).read_text() == "x" for name in neighbours)
    assert all((experiment / trial / "trial.json").exists() for trial in ("t0", "t1", "extend-1/e0", "extend-1/e1"))


def runtime_naming(*checkpoints):
    """A trial's runtime metadata as Tune writes it: the checkpoint manager a cloudpickle in hex."""
    pickled = pickle.dumps({"paths": [f"/storage/s/{c}" for c in checkpoints]}).hex()
    return json.dumps({"checkpoint_manager": {"_type": "CLOUDPICKLE_FALLBACK", "value": pickled}})


def save_naming(folder, checkpoints: dict, session=SESSION):
    folder.mkdir(parents=True, exist_ok=True)
    data = [[json.dumps({"trial_id": t, "relative_logdir": t}), runtime_naming(*names)]
            for t, names in checkpoints.items()]
    state = folder / f"experiment_state-{session}.json"
    state.write_text(json.dumps({"trial_data": data, "runner_data": {}, "stats": {}}))
    (folder / f"basic-variant-state-{session}.json").write_bytes(pickle.dumps(b"search"))
    return state


def test_the_checkpoints_a_kept_state_names_survive_tunes_rotation_and_the_repair_puts_them_back(tmp_path):
    """Tune keeps a trial's newest checkpoints only; a state kept before a rotation names one it has deleted since,
    and Tune cannot restore that trial from it."""
    experiment, session = tmp_path / "r" / "s", tmp_path / "session"
    for name in ("checkpoint_000001", "checkpoint_000002"):
        (experiment / "t0" / name).mkdir(parents=True)
        (experiment / "t0" / name / "checkpoint.pt").write_bytes(name.encode())
    keeper = StateKeeper(experiment, session)
    save_naming(staging(session), {"t0": ["checkpoint_000001", "checkpoint_000002"]})
    keeper.keep()
    link = experiment / ".tune_looped" / "checkpoints" / "t0" / "checkpoint_000001" / "checkpoint.pt"
    assert link.stat().st_ino == (experiment / "t0" / "checkpoint_000001" / "checkpoint.pt").stat().st_ino
    # Tune writes checkpoint 3, deletes 1, saves its state, and the disk fills while it writes the state
    (experiment / "t0" / "checkpoint_000003").mkdir()
    shutil.rmtree(experiment / "t0" / "checkpoint_000001")
    state = save_naming(experiment, {"t0": ["checkpoint_000002", "checkpoint_000003"]})
    state.write_text(state.read_text()[:25])
    repair = plan_repair(experiment)
    assert [str(c) for c in repair.checkpoints] == ["t0/checkpoint_000001"]
    lines = apply_repair(experiment, repair)
    assert lines[-1] == ("put back 1 checkpoint(s) that the restored state names and Tune had deleted since: "
                         "t0/checkpoint_000001")
    assert (experiment / "t0" / "checkpoint_000001" / "checkpoint.pt").read_bytes() == b"checkpoint_000001"


def keeping_checkpoint_1(tmp_path):
    """A keeper that has kept a state naming t0's checkpoint 1, of checkpoints 1 and 2 on disk."""
    experiment, session = tmp_path / "r" / "s", tmp_path / "session"
    for name in ("checkpoint_000001", "checkpoint_000002"):
        (experiment / "t0" / name).mkdir(parents=True)
    keeper = StateKeeper(experiment, session)
    save_naming(staging(session), {"t0": ["checkpoint_000001"]})
    keeper.keep()
    return experiment, session, keeper


def test_the_keeper_lets_go_of_checkpoints_no_kept_state_names(tmp_path):
    experiment, session, keeper = keeping_checkpoint_1(tmp_path)
    save_naming(staging(session), {"t0": ["checkpoint_000002"]}, session="2026-01-02_00-00-00")
    keeper.keep()
    kept = experiment / ".tune_looped" / "checkpoints" / "t0"
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoint_000002"]


def test_a_checkpoint_gone_and_not_kept_is_named_by_the_repair(tmp_path):
    experiment = tmp_path / "s"
    (experiment / "t0" / "checkpoint_000002").mkdir(parents=True)
    save_naming(experiment / ".tune_looped", {"t0": ["checkpoint_000001", "checkpoint_000002"]})
    state = save_naming(experiment, {"t0": ["checkpoint_000002"]})
    state.write_text(state.read_text()[:25])
    repair = plan_repair(experiment)
    assert repair.checkpoints == [] and [str(c) for c in repair.lost] == ["t0/checkpoint_000001"]
    assert apply_repair(experiment, repair)[-1] == (
        "1 checkpoint(s) that the restored state names are gone and were not kept (t0/checkpoint_000001): Tune "
        "cannot restore their trials; should they fail, `--resume --rebuild-state` runs them afresh")


def test_a_checkpoint_that_cannot_be_linked_does_not_stop_the_state_being_kept(tmp_path, monkeypatch):
    experiment, session = tmp_path / "r" / "s", tmp_path / "session"
    (experiment / "t0" / "checkpoint_000001").mkdir(parents=True)
    (experiment / "t0" / "checkpoint_000001" / "checkpoint.pt").write_bytes(b"x")

    def no_hard_links(source, target):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    keeper = StateKeeper(experiment, session)
    first = save_naming(staging(session), {"t0": ["checkpoint_000001"]})
    keeper.keep()
    kept = experiment / ".tune_looped"
    assert (kept / first.name).exists()
    links = kept / "checkpoints" / "t0"
    assert not (links / "checkpoint_000001").exists() and not (links / "checkpoint_000001.partial").exists()


def test_the_links_a_kept_state_needs_stay_until_the_next_state_is_written(tmp_path, monkeypatch):
    """A full disk while the keeper writes a newer state leaves the older kept state, and its links with it."""
    from trainers import atomic

    experiment, session, keeper = keeping_checkpoint_1(tmp_path)
    write = atomic.write_bytes

    def full_for_states(path, data):
        if path.name.startswith("experiment_state-"):
            raise OSError(28, "No space left on device")
        return write(path, data)

    monkeypatch.setattr(atomic, "write_bytes", full_for_states)
    save_naming(staging(session), {"t0": ["checkpoint_000002"]}, session="2026-01-02_00-00-00")
    keeper.keep()
    assert (experiment / ".tune_looped" / "checkpoints" / "t0" / "checkpoint_000001").is_dir()
