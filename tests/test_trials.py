"""The trial format: a space's trials encoded as Tune's param_space, resolved by Tune's own variant generator
(what Tune hands each trial), decoded back; and the record the runner keeps of a trial. The record written
by a real sweep, and the analysis reading it, are checked in test_runner.py."""
import json

import pytest
from ray.tune.search.variant_generator import generate_variants

from analysis.experiment import AnalysisError, read_trials
from helpers.sweeps import write_space
from helpers.experiments import metric_row, ray_row
from tune_looped.space import load_space
from tune_looped.trials import trial_record, trial_values
from tune_looped.tune_space import param_space
from tune_looped.upgrade import main as upgrade_main

SHARED = [{"name": "a", "grid": {"model.n_last_tokens": [2, -1]}},
          {"name": "b", "grid": {"model.n_layer": [1, 2]}}]
SAMPLE = {"training.learning_rate": "loguniform(1e-4, 1e-3)", "training.sparsity": "randint(1, 3)",
          "model.loop_func": "choice(['z=f(x+z)', 'z=f(x*z)'])"}


def resolved(space):
    """The params of every trial Tune would run, as its variant generator resolves the param_space."""
    return [config for _, config in generate_variants(param_space(space), random_state=0)]


def test_encode_resolve_decode_gives_back_every_trial_and_its_sampled_values(tmp_path):
    space = load_space(write_space(tmp_path / "space.yaml", SHARED, seeds=[0, 1], sample=SAMPLE))
    decoded = [trial_values(params) for params in resolved(space)]
    grid = sorted((hypotheses, tuple((k, values[k]) for k in sorted(space.trials[0].values)))
                  for hypotheses, values in decoded)
    # the configuration both hypotheses share (n_last_tokens -1, one layer) is one trial per seed, tagged twice
    assert grid == sorted((t.hypotheses, tuple(sorted(t.values.items()))) for t in space.trials)
    assert sum(hypotheses == ("a", "b") for hypotheses, _ in decoded) == 2
    for _, values in decoded:
        assert set(values) == set(space.trials[0].values) | set(SAMPLE)
        assert 1e-4 <= values["training.learning_rate"] <= 1e-3
        assert values["training.sparsity"] in (1, 2, 3)  # the grammar's randint includes its upper end
        assert values["model.loop_func"] in ("z=f(x+z)", "z=f(x*z)")


def test_decoding_params_without_a_grid_gives_no_hypotheses():
    """Params with sampled keys only (a space of one configuration whose grid Tune left out)."""
    assert trial_values({"training.learning_rate": 3e-4}) == ((), {"training.learning_rate": 3e-4})


def test_the_record_is_json_with_the_trial_id_hypotheses_and_flat_values(tmp_path):
    space = load_space(write_space(tmp_path / "space.yaml", SHARED,
                                   sample={"model.loop_func": "choice(['z=f(x+z)'])"}))
    shared = next(params for params in resolved(space) if trial_values(params)[0] == ("a", "b"))
    record = json.loads(json.dumps(trial_record("abc12_00003", shared).model_dump()))
    assert record == {"trial_id": "abc12_00003", "hypotheses": ["a", "b"],
                      "values": {"model.n_last_tokens": -1, "model.n_layer": 1, "model.loop_func": "z=f(x+z)"}}



def _earlier_runners_trial(root, name, params, trial_id=None):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(params))
    (folder / "result.json").write_text(json.dumps(ray_row(metric_row(0, 1.0), trial_id, 0)) + "\n" if trial_id else "")
    return folder


def test_upgrade_writes_the_records_of_an_earlier_runners_experiment(tmp_path, capsys):
    """An experiment of the runner before trial.json: params.json only. After the upgrade the analysis reads it
    as the earlier analysis did: ids from the result rows (else the folder), tags and values from the params."""
    root = tmp_path / "exp"
    _earlier_runners_trial(root, "train_a_00000", {"variant": {"hypotheses": ["f", "e"], "model.n_layer": 2},
                                                   "training.learning_rate": 3e-4}, trial_id="a_00000")
    _earlier_runners_trial(root, "train_b_00001", {"variant": {"hypotheses": ["e"], "model.n_layer": 1}})
    (_earlier_runners_trial(root, "train_c_00002", {}) / "params.json").write_text("{broken")
    with pytest.raises(AnalysisError, match="tune_looped.upgrade"):
        read_trials(root)

    assert upgrade_main([str(root)]) == 0
    out, err = capsys.readouterr()
    assert out == f"2 trial record(s) written under {root}\n"
    assert err.startswith(f"warning: {root / 'train_c_00002' / 'params.json'}: unreadable (")
    trials = {t.trial_id: t for t in read_trials(root)}
    assert set(trials) == {"a_00000", "train_b_00001"}
    assert trials["a_00000"].hypotheses == ("e", "f")
    assert trials["a_00000"].params == {"model.n_layer": 2, "training.learning_rate": 3e-4}
    assert trials["train_b_00001"].params == {"model.n_layer": 1}

    record = (root / "train_a_00000" / "trial.json").read_text()
    assert upgrade_main([str(root)]) == 0 and "0 trial record(s)" in capsys.readouterr().out
    assert (root / "train_a_00000" / "trial.json").read_text() == record


def test_upgrade_of_a_missing_folder_is_one_line(tmp_path, capsys):
    assert upgrade_main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: no such experiment directory\n"


def test_upgrade_waits_for_no_runner_and_skips_the_runners_folder(tmp_path, capsys):
    """It takes the experiment's lock: refused in one line while a runner holds it, and writes nothing."""
    from tune_looped.lock import ExperimentLock

    root = tmp_path / "exp"
    _earlier_runners_trial(root, "train_a_00000", {"variant": {"hypotheses": ["e"], "model.n_layer": 2}})
    # a trial a rebuild replaced lies in the runner's folder: not a trial of the experiment
    _earlier_runners_trial(root / ".tune_looped" / "replaced", "train_b_00001", {"variant": {"hypotheses": ["e"]}})
    with ExperimentLock(root, "python -m tune_looped.run"):
        assert upgrade_main([str(root)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {root / '.tune_looped' / 'lock'}: the experiment is in use by pid ")
        assert err.count("\n") == 1 and not (root / "train_a_00000" / "trial.json").exists()
    assert upgrade_main([str(root)]) == 0
    assert capsys.readouterr().out == f"1 trial record(s) written under {root}\n"
    assert not (root / ".tune_looped" / "replaced" / "train_b_00001" / "trial.json").exists()
