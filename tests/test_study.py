"""Sequential studies as the runner runs them (`--until-decided`, tune_looped/rounds.py): the space's `decide:`
block and its design in space.yaml, what is refused, and real studies on an embedded Ray, interrupted too.

The real studies start their trials from a tiny model that has learned (tests/data/learned_d1.pt): a reference
must have learned to decide anything. One hypothesis wrecks it with a large learning rate (decided at the first
look), the other changes the batch by one prompt, which shifts the final error by noise only (left open, so it
gets the second look's seeds, with its reference, and no other trial does).
"""
import dataclasses
import math
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers.sweeps import finish, forked_sweep, sweep_command, wait_for
from trainers.layout import extension_folder, run_trial_folders, trial_folders
from trainers.records import (AT_CAP, DECIDED, OVER_BUDGET, SEED_KEY, Hypothesis, RunRecord, SpaceRecord, StudyRecord,
                              read_space_record, read_trial_record, trial_key, write_space_record)
from analysis.sequential import CAPPED, FEWEST_PATHS, STATES, WORSE, Design
from analysis.study import NOT_TESTED, judge_sequential, open_comparisons, undecided
from analysis.variants import variants_of
from analysis.verdict import INCONCLUSIVE
from benchmarks.quick_projection import TFLOP, project, spread
from tune_looped import extend, run
from tune_looped.inputs import Options
from tune_looped.rounds import _round_never_saved, _sequential_if_recorded, why_it_ends
from tune_looped.space import SpaceError, load_space, space_record

LEARNED = Path(__file__).resolve().parent / "data" / "learned_d1.pt"
BASE = {
    "model": {"family": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_dims": 1, "n_positions": 4,
              "pretrained_path": str(LEARNED)},
    "training": {"batch_size": 64, "learning_rate": 0.002, "train_steps": 20, "save_every_steps": 10,
                 "eval_every_steps": 10, "eval_prompts": 16, "onednn_linear": True,
                 "curriculum": {"dims": {"start": 1, "end": 1, "inc": 1, "interval": 100},
                                "points": {"start": 4, "end": 4, "inc": 1, "interval": 100}}},
    "wandb": {"log_every_steps": 10},
}
HYPOTHESES = [
    {"name": "wrecked", "grid": {"training.learning_rate": [0.002, 0.05]},
     "reference": {"training.learning_rate": 0.002}, "expect": "worse"},
    {"name": "batch", "grid": {"training.batch_size": [64, 65]}, "reference": {"training.batch_size": 64},
     "expect": "worse"},
]
# Pocock's boundaries are low enough at 3 seeds to decide a large effect; the tiny margin keeps the noise open
DECIDE = {"looks": [3, 5], "spending": "pocock", "smallest_effect": 0.001}


def write_study(path: Path, decide=None, **extra) -> Path:
    path.write_text(yaml.safe_dump({"name": "study", "base": BASE, "seeds": [0, 1, 2], "hypotheses": HYPOTHESES,
                                    "decide": DECIDE if decide is None else decide} | extra))
    return path


# --- the space's decide: block and the design it records --------------------------------------------------------

def test_a_sequential_space_runs_its_first_looks_seeds_and_records_the_whole_schedule(tmp_path):
    space = load_space(write_study(tmp_path / "s.yaml", {}), until_decided=True)
    assert space.decide.looks == [3, 5, 8, 12] and space.decide.spending == "obrien-fleming"
    assert space.decide.alpha == pytest.approx(0.05) and space.decide.smallest_effect == pytest.approx(0.1)
    # the space's seeds first, then the next integers, up to the cap
    assert space.decide.seeds == list(range(12))
    assert sorted({t.values[SEED_KEY] for t in space.trials}) == [0, 1, 2]
    assert space_record(space, quick=False).decide == space.decide
    # without the flag or decide.enabled, the same file is a fixed study
    assert load_space(tmp_path / "s.yaml").decide is None
    assert load_space(write_study(tmp_path / "e.yaml", {"enabled": True})).decide is not None


@pytest.mark.parametrize("decide, seeds, looks", [
    ({"max_seeds": 10}, [0, 1, 2], [3, 5, 8, 10]),
    ({"max_seeds": 6}, [0, 1, 2], [3, 5, 6]),
    ({}, [4, 9, 10, 11, 12], [5, 8, 12]),  # five seeds: the default looks start at them
    ({"looks": [3, 4]}, [7], [3, 4]),  # fewer seeds than the first look: the next integers fill it
])
def test_the_looks_follow_the_cap_and_the_spaces_seeds(tmp_path, decide, seeds, looks):
    space = load_space(write_study(tmp_path / "s.yaml", decide, seeds=seeds), until_decided=True)
    assert space.decide.looks == looks
    assert space.decide.seeds[:len(seeds)] == seeds and len(set(space.decide.seeds)) == looks[-1]
    assert sorted({t.values[SEED_KEY] for t in space.trials}) == sorted(space.decide.seeds[:looks[0]])


@pytest.mark.parametrize("decide, extra, message", [
    ({"looks": [3, 5], "max_seeds": 8}, {}, "decide.max_seeds: must be the last look's seeds (5) when both are given"),
    ({"looks": [5, 3]}, {}, "decide: sequential design `looks`: [5, 3] is not allowed"),
    ({"looks": [1, 5]}, {}, "decide: sequential design `looks`: [1, 5] is not allowed"),
    ({"spending": "haybittle"}, {}, "decide: sequential design `spending`: 'haybittle' is not allowed; give one of"),
    ({"alpha": 0.9}, {}, "decide: sequential design `alpha`: 0.9 is not allowed"),
    ({"looks": [3, 5]}, {"seeds": [0, 1, 2, 3]}, "decide.looks: the first look takes 3 seeds a variant, but the "
                                                  "space runs 4 (0, 1, 2, 3)"),
    ({}, {"scheduler": "asha"}, "decide: a sequential study needs every trial's final error, so its scheduler must "
                                "be fifo"),
    ({}, {"num_samples": 2}, "decide: a sequential study compares the same configurations seed by seed"),
    ({"max_seeds": 2}, {}, "decide.max_seeds: must be at least the first look's seeds (3), got 2"),
])
def test_a_bad_design_is_one_line_naming_the_file_and_key(tmp_path, decide, extra, message):
    path = write_study(tmp_path / "s.yaml", decide, **extra)
    with pytest.raises(SpaceError) as err:
        load_space(path, until_decided=True)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("decide, key", [
    ({"budget": {"hours": -1}}, "decide.budget.hours"),
    ({"budget": {"minutes": 3}}, "decide.budget.minutes"),
    ({"look": [3, 5]}, "decide.look"),
    ({"enabled": "yes"}, "decide.enabled"),
])
def test_the_decide_block_goes_through_the_schema(tmp_path, decide, key):
    path = write_study(tmp_path / "s.yaml", decide)
    with pytest.raises(SpaceError, match=f"^{path}: {key}"):
        load_space(path)


def test_the_dry_run_shows_the_schedule_and_the_most_trials_it_may_take(tmp_path, capsys):
    assert run.main(["--space", str(write_study(tmp_path / "s.yaml")), "--dry-run", "--until-decided"]) == 0
    out, err = capsys.readouterr()
    assert ("sequential study: looks at 3, 5 seeds a variant (seeds 0, 1, 2, 3, 4); below, the first look's "
            "trials; at most 15 trials if no comparison is decided early") in err
    # three configurations (the shared reference once) times the first look's three seeds
    hypotheses = (["batch"], ["wrecked"], ["wrecked,batch"])
    assert len([line for line in out.splitlines() if line.split()[1:2] in hypotheses]) == 9


@pytest.mark.parametrize("argv, message", [
    (["--no-report"], "error: --no-report: not with a sequential study (--until-decided or decide.enabled), whose "
                      "every look reads the analysis' results"),
    (["--storage", "s3://bucket/r"], "error: --storage: a sequential study needs a local path, whose experiment its "
                                     "rounds extend, got s3://bucket/r"),
    (["--extend", "--name", "done"], "is a sequential study (its design is in its space.yaml), whose rounds add the "
                                     "seeds; --resume continues it"),
])
def test_what_a_sequential_study_refuses_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    space = write_study(tmp_path / "s.yaml")
    (tmp_path / "r" / "done").mkdir(parents=True)
    record = space_record(load_space(space, until_decided=True), quick=False)
    write_space_record(tmp_path / "r" / "done", record)
    before = sorted(p.name for p in (tmp_path / "r").rglob("*"))
    assert run.main(["--space", str(space), "--storage", str(tmp_path / "r"), "--until-decided", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "r").rglob("*")) == before


@pytest.mark.parametrize("look, any_open, spent_s, spent_tflop, budget, ended", [
    (1, True, 100.0, 1.0, {}, ""),
    (2, True, 100.0, 1.0, {}, AT_CAP),  # the last look ends it, whatever is open
    (2, False, 100.0, 1.0, {}, DECIDED),  # every comparison decided at the last look
    (1, False, 100.0, 1.0, {}, DECIDED),
    (1, True, 3599.0, 1.0, {"budget_hours": 1.0}, ""),
    (1, True, 3600.0, 1.0, {"budget_hours": 1.0}, OVER_BUDGET),
    (1, True, 10.0, 2.5, {"budget_tflop": 2.5}, OVER_BUDGET),
    (1, True, 10.0, 2.4, {"budget_tflop": 2.5, "budget_hours": 1.0}, ""),
    (1, False, 1e9, 1e9, {"budget_tflop": 2.5}, DECIDED),  # decided is said before the budget
])
def test_why_a_study_ends_at_a_look(look, any_open, spent_s, spent_tflop, budget, ended):
    study = StudyRecord(looks=[3, 5], alpha=0.05, spending="pocock", smallest_effect=0.1, paths=10_000,
                        seeds=[0, 1, 2, 3, 4], **budget)
    assert why_it_ends(study, look, any_open, spent_s, spent_tflop) == ended


def test_a_resume_of_a_sequential_study_is_sequential_without_the_flag(tmp_path):
    space = write_study(tmp_path / "s.yaml")
    (tmp_path / "r" / "seq").mkdir(parents=True)
    write_space_record(tmp_path / "r" / "seq", space_record(load_space(space, until_decided=True), quick=False))
    (tmp_path / "r" / "fixed").mkdir()
    write_space_record(tmp_path / "r" / "fixed", space_record(load_space(space), quick=False))
    options = Options(space=str(space), storage=str(tmp_path / "r"), resume=True)
    assert _sequential_if_recorded(dataclasses.replace(options, name="seq")).until_decided
    assert not _sequential_if_recorded(dataclasses.replace(options, name="fixed")).until_decided
    # only a resume reads the record: a new study with a recorded name is refused later, by the checks
    assert not _sequential_if_recorded(dataclasses.replace(options, name="seq", resume=False)).until_decided


def test_a_round_stopped_before_tune_saved_its_state_is_planned_again_on_resume(tmp_path):
    space = load_space(write_study(tmp_path / "s.yaml"), until_decided=True)
    record = space_record(space, quick=False)
    first, second = RunRecord(trials=record.trials, look=1), RunRecord(folder=extension_folder(1), look=2)
    write_space_record(tmp_path, record.model_copy(update={"runs": [first, second]}))
    (tmp_path / extension_folder(1)).mkdir()
    assert _round_never_saved(tmp_path)
    # once Tune has saved the round's state, a resume restores it instead
    (tmp_path / extension_folder(1) / "experiment_state-2026-12-03_17-00-00.json").write_text("{}")
    assert not _round_never_saved(tmp_path)
    # a fixed study's stopped extension is --extend's to start again, as before
    write_space_record(tmp_path, record.model_copy(update={"runs": [first, RunRecord(folder="extend-2")],
                                                           "decide": None}))
    assert not _round_never_saved(tmp_path)


def test_a_rounds_space_may_not_change_the_studys_hypotheses(tmp_path):
    space = load_space(write_study(tmp_path / "s.yaml"), until_decided=True)
    saved = space_record(space, quick=False)
    changed = [{**HYPOTHESES[0], "expect": "better"}, HYPOTHESES[1]]
    edited = dataclasses.replace(load_space(write_study(tmp_path / "e.yaml", hypotheses=changed), until_decided=True),
                                 decide=space.decide)
    with pytest.raises(SpaceError, match=r"^--until-decided: hypotheses\.wrecked\.expect differs .*a sequential study's "
                                         r"hypotheses are fixed with its design"):
        extend.plan(tmp_path, edited, saved, quick=False, look=2)
    # their questions may change: the verdicts do not read them
    reworded = [{**HYPOTHESES[0], "description": "Does a large step wreck it?"}, HYPOTHESES[1]]
    asked = dataclasses.replace(load_space(write_study(tmp_path / "q.yaml", hypotheses=reworded), until_decided=True),
                                decide=space.decide)
    assert extend.plan(tmp_path, asked, saved, quick=False, look=2).added == ()


def _errors(per_variant: dict[int, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"model.n_last_tokens": tokens, SEED_KEY: seed, "error": error}
                         for tokens, errors in per_variant.items() for seed, error in enumerate(errors)])


def test_a_seed_without_a_final_error_leaves_its_comparison_untested_and_the_others_go_on():
    study = StudyRecord(looks=[3, 5], alpha=0.05, spending="pocock", smallest_effect=0.1, paths=FEWEST_PATHS,
                        seeds=[0, 1, 2, 3, 4])
    hypothesis = Hypothesis("h", reference={"model.n_last_tokens": -1}, expect="worse")
    errors = _errors({-1: [0.30, 0.32, 0.31, 0.33, 0.29], 8: [0.90, 0.95, 0.93], 23: [0.31, math.nan, 0.30]})
    verdict = judge_sequential(errors, variants_of(errors, "h"), hypothesis, study)
    by_variant = {c.variant: c for c in verdict.comparisons}
    # mask 8 is tested at the first look, as if mask 23 were not there; mask 23 stops at its seed 1
    assert by_variant["n_last_tokens=8"].outcome == WORSE and by_variant["n_last_tokens=8"].seeds == 3
    assert by_variant["n_last_tokens=23"].outcome == NOT_TESTED and by_variant["n_last_tokens=23"].seeds == 1
    assert "seed 1 has no final error" in by_variant["n_last_tokens=23"].test
    assert verdict.word == INCONCLUSIVE and "not tested: a seed without a final error" in verdict.reason
    assert undecided(verdict) and open_comparisons(verdict) == []
    # the same seeds with an error on seed 1: both comparisons are tested
    errors.loc[errors["error"].isna(), "error"] = 0.32
    tested = judge_sequential(errors, variants_of(errors, "h"), hypothesis, study)
    assert NOT_TESTED not in {c.outcome for c in tested.comparisons}


# --- real studies on an embedded Ray --------------------------------------------------------------------------

def _trials_by_run(experiment_dir: Path) -> dict[str, list[dict]]:
    record = read_space_record(experiment_dir)
    return {run.folder: [read_trial_record(folder).values for folder in run_trial_folders(experiment_dir / run.folder)]
            for run in record.run_list()}


def _assert_the_study_ran_its_schedule_once(experiment_dir: Path, first_look=1) -> SpaceRecord:
    record = read_space_record(experiment_dir)
    assert record.decide.looks == [3, 5] and record.decide.seeds == [0, 1, 2, 3, 4]
    assert [(look.look, look.seeds) for look in record.looks] == [(1, 3), (2, 5)]
    assert record.looks[0].open == ["batch: batch_size=65"] and record.looks[0].ended == ""
    assert record.looks[1].open == [] and record.looks[1].ended == AT_CAP
    assert [run.look for run in record.run_list()] == [first_look, 2]
    runs = _trials_by_run(experiment_dir)
    assert list(runs) == [".", extension_folder(1)]
    # the first look: three configurations, three seeds
    assert len(runs["."]) == 9 and {v[SEED_KEY] for v in runs["."]} == {0, 1, 2}
    # the round: the next seeds to the open comparison's variant and its reference, which the decided hypothesis
    # shares; nothing to the wrecked variant, decided at the first look
    second = {(v.get("training.batch_size", 64), v.get("training.learning_rate", 0.002), v[SEED_KEY])
              for v in runs[extension_folder(1)]}
    assert second == {(64, 0.002, 3), (64, 0.002, 4), (65, 0.002, 3), (65, 0.002, 4)}
    # no trial ran twice: one folder per planned trial, every one recorded
    keys = [trial_key(record.base, read_trial_record(folder).values) for folder in trial_folders(experiment_dir)]
    assert len(keys) == len(set(keys)) == len(record.trials) == 13
    return record


@pytest.mark.slow
def test_a_study_decides_the_clear_difference_at_the_first_look_and_gives_seeds_only_to_the_open_one(tmp_path,
                                                                                                      commands):
    space = write_study(tmp_path / "s.yaml")
    result = forked_sweep(commands, tmp_path, space, "--until-decided", report=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment_dir = tmp_path / "r" / "s"
    _assert_the_study_ran_its_schedule_once(experiment_dir)
    assert "look 1 of 2 (3 seeds a variant): 1 comparison(s) open" in result.stderr
    assert "round 2: 4 trial(s), seeds 3, 4, to the comparisons still open and their references" in result.stderr
    assert result.stderr.count("Ray's own log lines:") == 1  # the round ran on the first sweep's Ray
    report = (experiment_dir / "REPORT.md").read_text()
    assert "**Verdict: supported.**" in report
    wrecked = next(line for line in report.splitlines() if line.startswith("| `learning_rate=0.05` |"))
    assert "| decided worse | 1 of 2 | 3 |" in wrecked
    batch = next(line for line in report.splitlines() if line.startswith("| `batch_size=65` | `batch_size=64` |"))
    assert "| 2 of 2 | 5 |" in batch and ("undecided at the cap" in batch or "decided: no difference" in batch)
    # the looks table: one row a look, the round's cost beside it
    assert sum(line.startswith(("| 1 | 3 |", "| 2 | 5 |")) for line in report.splitlines()) == 2


@pytest.mark.slow
def test_a_fixed_study_continued_as_its_report_says_then_interrupted_mid_round_resumes_into_the_schedule(tmp_path,
                                                                                                        capsys,
                                                                                                        commands):
    space = write_study(tmp_path / "s.yaml")
    # the fixed study in this process; the continuation, which is interrupted, forked from the command server; the
    # resume as printed, in a shell
    assert run.main(sweep_command(space, tmp_path / "r", "s", report=True)[3:]) == 0, capsys.readouterr().err[-3000:]
    experiment_dir = tmp_path / "r" / "s"
    assert read_space_record(experiment_dir).decide is None
    shown = re.search(r"\*\*Continuing it until decided\.\*\* `([^`]+)`", (experiment_dir / "REPORT.md").read_text())
    command = shlex.split(shown.group(1))
    assert command[:3] == ["python", "-m", "tune_looped.run"] and command[-2:] == ["--extend", "--until-decided"]
    round_dir = experiment_dir / extension_folder(1)
    # without the dashboard, which the command leaves on as a user wants it: its start costs the continuation, and
    # the resume again, 3-6 CPU-seconds on 2 AVX2 cores, and nothing here looks at it; on one CPU, as the fixed
    # study ran, so that the round's trials take turns in one worker rather than start two (about 3 CPU-seconds
    # each on an AVX-512 CPU, in the continuation and again in the resume)
    study = commands.start([*command[1:], "--no-dashboard", "--num-cpus", "1"], tmp_path, tmp_path / "c.out",
                           tmp_path / "c.err", env=commands.environment(PYTHONUNBUFFERED="1"))
    try:
        # a trial of the second look's round has reported: the round is under way
        wait_for(lambda: any((folder / "result.json").stat().st_size for folder in run_trial_folders(round_dir)
                             if (folder / "result.json").exists()), timeout=400, every=0.05)
        study.send_signal(signal.SIGINT)
        _, err = finish(study, tmp_path, name="c")
    finally:
        if study.poll() is None:
            study.kill()
    assert study.returncode == 130, err[-3000:]
    # the first look was at the seeds the fixed study had, and no trial of it ran again
    assert "look 1 of 2 (3 seeds a variant): 1 comparison(s) open" in err
    resume = err.split("resume with:\n", 1)[1].splitlines()[0].strip()
    assert "--until-decided" in resume and "--resume" in resume and "--extend" not in resume
    record = read_space_record(experiment_dir)
    assert [look.look for look in record.looks] == [1]  # the second look waits for its round
    result = subprocess.run(resume, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_the_study_ran_its_schedule_once(experiment_dir, first_look=None)
    # the round was finished, not started again, and the design is the one the continuation fixed
    assert "round 2:" not in result.stderr
    assert read_space_record(experiment_dir).decide == record.decide


def test_the_quick_studys_projection_costs_more_than_the_fixed_study_and_decides_its_large_effects():
    design = Design(looks=(3, 5, 8, 12), paths=FEWEST_PATHS)
    out = project(design, 400)
    # each configuration has its 3 seeds at least, at most the cap
    assert (out["trials"] >= 30).all() and (out["trials"] <= 120).all()
    assert 2.0 < out["tflop"].mean() / (3 * sum(TFLOP.values())) < 3.2
    assert (out["states"]["information flow: mask 8"] == STATES.index(WORSE)).mean() > 0.97
    # L=1 LSTM's seeds spread most: it is the comparison most often left at the cap
    capped = {name: (state == STATES.index(CAPPED)).mean() for name, state in out["states"].items()}
    assert max(capped, key=capped.get) == "looped LSTM: L=1 LSTM"
    # the spread is read back from what the fixed report showed: its interval is critical x sd / sqrt(3)
    assert spread(("interval", 0.241), 4) == pytest.approx(0.241 / 8.860 * 3 ** 0.5, rel=0.001)
