"""The trial format: a space's trials encoded as Tune's param_space, resolved by Tune's own variant generator
(what Tune hands each trial), decoded back; the record the runner keeps of a trial; what makes two trials the same
(`trial_key`) and how a trial ended (`trial_status`), one rule for each wherever they are asked, old experiment
folders included. The record written by a real sweep, and the analysis reading it, are checked in test_runner.py."""
import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from ray.tune.search.variant_generator import generate_variants

from analysis import load_summary
from analysis.experiment import AnalysisError, read_trials
from helpers.experiments import checkpoint_state, config_dict, metric_row, ray_row, write_trial
from helpers.sweeps import TINY_BASE, write_space
from trainers.config import ConfigError
from trainers.layout import SPACE_RECORD, TRIAL_RECORD
from trainers.records import (DIVERGED, ERROR, FINISHED, INCOMPLETE, STOPPED_EARLY, read_space_record, trial_key,
                              trial_status, write_space_record)
from tune_looped import extend
from tune_looped.space import load_space, space_record, trial_config
from tune_looped.tables import against_space, folder_row, summarise
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


LAST = TINY_BASE["training"]["train_steps"] - 1
DEPTH = [{"name": "depth", "grid": {"model.n_layer": [1, 2]}}]


def test_a_trial_is_its_whole_config(tmp_path):
    base = load_space(write_space(tmp_path / "space.yaml", SHARED, seeds=[0])).base
    values = {"model.n_layer": 2, "training.seed": 0}
    key = trial_key(base, values)
    default = trial_config(base, {}).model.n_last_tokens
    assert trial_key(base, {**values, "model.n_last_tokens": default}) == key  # a new grid key at the base's value
    assert trial_key(base, {"model.n_layer": 2.0, "training.seed": 0}) == key  # 55 from one file, 55.0 from another
    assert trial_key(base, {**values, "training.learning_rate": 3e-4}, sampled={"training.learning_rate": "x"}) == key
    assert trial_key(base, {**values, "training.seed": 1}) != key
    assert trial_key(base, {**values, "training.learning_rate": 3e-4}) != key
    # the hypotheses only when asked for, in any order
    assert trial_key(base, values, hypotheses=["b", "a"]) == trial_key(base, values, hypotheses=("a", "b", "a"))
    assert trial_key(base, values, hypotheses=["a"]) not in (key, trial_key(base, values, hypotheses=["a", "b"]))
    with pytest.raises(ConfigError, match="^trial: model.n_layer: "):
        trial_key(base, {"model.n_layer": "two"})


def test_a_trial_keeps_its_identity_in_an_old_record_and_when_its_retag_was_cut_short(tmp_path):
    """A space record and trial records of the runner before the rename (`experiments:`) match as today's; a trial
    whose record missed the hypothesis an extension added (the runner stopped between the space record and the
    retags) is told as not asked for by the summary, and the next extension retags it."""
    space = load_space(write_space(tmp_path / "space.yaml", DEPTH, seeds=[0]))
    experiment = tmp_path / "r" / "e"
    experiment.mkdir(parents=True)
    saved = space_record(space, False).model_dump()
    old = {**{k: v for k, v in saved.items() if k not in ("hypotheses", "trials")},
           "experiments": saved["hypotheses"], "trials": [{"experiments": t["hypotheses"], "values": t["values"]}
                                                          for t in saved["trials"]]}
    (experiment / SPACE_RECORD).write_text(yaml.safe_dump(old))
    for n, planned in enumerate(space.trials):
        folder = experiment / f"train_{n}"
        folder.mkdir()
        (folder / TRIAL_RECORD).write_text(json.dumps({"trial_id": f"t{n}", "experiments": ["depth"],
                                                       "values": planned.values}))
        (folder / "result.json").write_text(json.dumps({"step": LAST, "trial_id": f"t{n}"}) + "\n")
    record = read_space_record(experiment)
    rows = [folder_row(experiment / f"train_{n}", space) for n in range(2)]
    assert [row["status"] for row in rows] == [FINISHED, FINISHED] and against_space(rows, record) == ([], [])

    tagged = record.model_copy(update={"trials": [t.model_copy(update={"hypotheses": ("depth", "width")})
                                                  for t in record.trials]})
    write_space_record(experiment, tagged)
    assert against_space(rows, tagged) == (rows, tagged.trials)
    width = {"name": "width", "grid": {"model.n_layer": [1, 2]}}
    grown = load_space(write_space(tmp_path / "grown.yaml", [*DEPTH, width], seeds=[0]))
    plan = extend.plan(experiment, grown, tagged, False)
    assert not plan.added
    assert [(folder.name, record.hypotheses) for folder, record in plan.retagged] == [
        ("train_0", ("depth", "width")), ("train_1", ("depth", "width"))]


@pytest.mark.parametrize("rows, errored, status", [
    ([{"step": LAST}, {"step": 10}], False, FINISHED),  # rows a restore wrote again: the steps reached decide
    ([{"step": 10, "diverged": True}, {"step": 10}], False, DIVERGED),  # a row written twice, the flag in one
    ([{"step": LAST, "diverged": True}], False, DIVERGED),
    ([{"step": 10, "done": True}, {"step": 10}], True, STOPPED_EARLY),
    ([{"step": 10}, {"step": LAST, "done": True}], True, FINISHED),  # failed once, then a retry ran to the end
    ([{"step": 10}], True, ERROR),
    ([{"step": math.nan}, {"trial_id": "x"}, {"step": True}, {"step": 10}], False, INCOMPLETE),
    ([], False, INCOMPLETE),  # no row yet
])
def test_one_status_rule_over_every_row(rows, errored, status):
    assert trial_status(rows, LAST + 1, errored=errored) == status
    assert trial_status(rows[::-1], LAST + 1, errored=errored) == status  # in any order


@pytest.mark.parametrize("steps, flags, errored, status", [
    ([0, 10, 20, LAST, 20], {}, False, FINISHED),
    ([0, 10, 20, 10], {}, False, INCOMPLETE),
    ([0, 10, 20, 20], {2: "diverged"}, False, DIVERGED),
    ([0, 10, 10], {1: "done"}, False, STOPPED_EARLY),
    ([0, 10], {}, True, ERROR),
])
def test_the_summary_the_folders_and_the_analysis_give_a_trial_one_status(tmp_path, steps, flags, errored, status):
    """Tune's results (the runner's summary after a sweep), the trial's folder (trials Tune's results leave out, a
    rebuild, a resume's plan) and the analysis' summary frame read the same rows by the one rule."""
    space = load_space(write_space(tmp_path / "space.yaml", DEPTH, seeds=[0]))
    values = dict(space.trials[0].values)
    rows = [ray_row({**metric_row(step, 1.0), **({"diverged": True} if flags.get(i) == "diverged" else {})}, "t", i,
                    done=flags.get(i) == "done") for i, step in enumerate(steps)]
    config = config_dict(n_layer=values["model.n_layer"], seed=0, train_steps=LAST + 1)
    folder = write_trial(tmp_path / "e", "train_t", hypotheses=["depth"], values=values, rows=rows, error=errored,
                         checkpoint=checkpoint_state(config, step=max(steps)))
    result = SimpleNamespace(config={"variant": {"hypotheses": ["depth"], **values}}, path=str(folder),
                             metrics=rows[-1], metrics_dataframe=pd.DataFrame(rows),
                             error=RuntimeError("boom") if errored else None)
    assert [row["status"] for row in summarise([result], space)] == [status]
    assert folder_row(folder, space)["status"] == status
    assert load_summary(tmp_path / "e")["status"].tolist() == [status]
