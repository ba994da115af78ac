"""The experiment folder's layout (trainers/layout.py): its path rules on a folder holding everything an experiment
can hold (the runs' trial folders, Tune's state, the analysis, W&B, the runner's own folder, what runners before
this one left), the readers that take their trial folders from it, and that no other module spells a name of the
folder or globs in it by hand."""
import ast
import json
import re
from pathlib import Path

import pytest

from analysis.experiment import AnalysisWarning, read_trials
from trainers import layout
from trainers.layout import (CURVES_FRAME, RUNNER_DIR, checkpoint_files, checkpoint_folder, checkpoint_folders,
                             experiment_offline_runs, experiments_in, extension_folder, figures, frame_file,
                             kept_checkpoint_links, newest_state, offline_runs, replaced_folder, restorable,
                             run_folders, run_trial_folders, runner_folder, search_state_of, set_aside_copies,
                             staging_folder, trial_folders, tune_files)
from tune_looped.upgrade import upgrade

REPO = Path(__file__).resolve().parents[1]
SESSIONS = ("2026-01-01_00-00-00", "2026-01-02_00-00-00")


def touch(root: Path, *names: str, text: str = "x") -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def trial(root: Path, name: str, *, record=True, params=True) -> Path:
    """A trial folder: the runner's record (a trial of hypothesis `h` named after the folder), Ray's params.json."""
    folder = root / name
    folder.mkdir(parents=True)
    if record:
        (folder / "trial.json").write_text(json.dumps({"trial_id": folder.name, "hypotheses": ["h"], "values": {}}))
    if params:
        (folder / "params.json").write_text("{}")
    (folder / "result.json").write_text(json.dumps({"step": 0, "trial_id": folder.name}) + "\n")
    return folder


@pytest.fixture
def experiment(tmp_path) -> Path:
    """Everything an experiment folder holds, written the way the runner, Tune, the analysis and W&B name it."""
    root = tmp_path / "r" / "s"
    touch(root, "space.yaml", "tuner.pkl", "search_gen_state-x.json", "REPORT.md", "curves.parquet",
          "summary.parquet", "evaluation.parquet", "results.parquet", "plots/loss_curves.png", "plots/notes.txt",
          "wandb/offline-run-20260101_000000-s-analysis/run-s-analysis.wandb",
          *(f"{prefix}{session}.json" for prefix in ("experiment_state-", "basic-variant-state-")
            for session in SESSIONS),
          f"{RUNNER_DIR}/lock", f"{RUNNER_DIR}/tuner.pkl", f"{RUNNER_DIR}/experiment_state-{SESSIONS[0]}.json",
          f"{RUNNER_DIR}/checkpoints/train_a/checkpoint_000001/checkpoint.pt",
          "extend-1/tuner.pkl", f"extend-1/experiment_state-{SESSIONS[1]}.json")
    a = trial(root, "train_a")
    touch(a, "checkpoint_000000/checkpoint.pt", "checkpoint_000001/checkpoint.pt", "checkpoint_000001.partial/x",
          "error.txt", "wandb/offline-run-20260101_000000-a/run-a.wandb")
    trial(root, "train_b", record=False)  # a runner's before the trial record: params.json only
    early = trial(root, "train_c", params=False)  # the record written before Ray's params.json
    touch(early, "checkpoint_000000/checkpoint.pt.partial", "checkpoints/step_000010/checkpoint.pt")
    trial(root / "extend-1", "train_e")
    touch(root / "extend-1" / "train_e", "wandb/offline-run-20260101_000000-e/run-e.wandb")
    trial(root / "extend-2", "train_f")
    trial(root / "extend-10", "train_g")
    # none of these is a trial of the experiment: what a repair set aside, a folder that is no run, a folder two
    # levels down, a folder holding neither file
    trial(root / RUNNER_DIR / "replaced" / "20260101-000000", "train_z", record=False)
    trial(root / "extend-old", "train_y")
    trial(root / "moved", "train_x", record=False)
    (root / "notes").mkdir()
    return root


def test_the_runs_and_their_trial_folders(experiment):
    assert run_folders(experiment) == [experiment, *(experiment / extension_folder(n) for n in (1, 2, 10))]
    assert run_trial_folders(experiment) == [experiment / name for name in ("train_a", "train_b", "train_c")]
    assert run_trial_folders(experiment / "extend-1") == [experiment / "extend-1" / "train_e"]
    assert trial_folders(experiment) == sorted([
        *(experiment / name for name in ("train_a", "train_b", "train_c")),
        *(experiment / run / name for run, name in (("extend-1", "train_e"), ("extend-2", "train_f"),
                                                    ("extend-10", "train_g")))])
    assert experiments_in(experiment.parent) == [experiment]


def unrecorded(caught) -> list[str]:
    return [str(w.message) for w in caught if "params.json but no trial.json" in str(w.message)]


def test_every_reader_takes_the_trial_folders_of_the_layout(experiment):
    """The analysis reads the recorded ones and names the one without a record; the upgrade writes the record of
    that one only, and then the analysis reads it too. Neither looks in the folders that are no trial's."""
    recorded = [folder for folder in trial_folders(experiment) if folder.name != "train_b"]
    with pytest.warns(AnalysisWarning) as caught:
        assert [t.path for t in read_trials(experiment)] == recorded
    assert unrecorded(caught) == [f"{experiment / 'train_b'}: params.json but no trial.json; trial skipped"]
    assert upgrade(experiment) == (1, [])
    assert not (experiment / "moved" / "train_x" / "trial.json").exists()
    with pytest.warns(AnalysisWarning) as caught:  # the checkpoints here are not loadable ones
        assert [t.path for t in read_trials(experiment)] == trial_folders(experiment)
    assert unrecorded(caught) == []


def test_a_trials_checkpoints(experiment):
    a = experiment / "train_a"
    assert checkpoint_folder(a, 1) == a / "checkpoint_000001"
    assert checkpoint_folders(a) == [a / "checkpoint_000000", a / "checkpoint_000001"]
    assert checkpoint_files(a) == [a / "checkpoint_000000" / "checkpoint.pt", a / "checkpoint_000001" / "checkpoint.pt"]
    # a checkpoint Tune has not finished copying, and a file of that name outside a checkpoint folder: neither
    assert checkpoint_folders(experiment / "train_c") == [experiment / "train_c" / "checkpoint_000000"]
    assert checkpoint_files(experiment / "train_c") == []


def test_tunes_state_and_the_runners_copies(experiment, tmp_path):
    state = newest_state(experiment)
    assert state == experiment / f"experiment_state-{SESSIONS[1]}.json"
    assert search_state_of(state) == experiment / f"basic-variant-state-{SESSIONS[1]}.json"
    assert restorable(experiment) and restorable(experiment / "extend-1") and not restorable(experiment / "extend-2")
    assert [p.name for p in tune_files(experiment)] == [
        *(f"basic-variant-state-{s}.json" for s in SESSIONS), *(f"experiment_state-{s}.json" for s in SESSIONS),
        "search_gen_state-x.json", "tuner.pkl"]
    copies = runner_folder(experiment)
    assert tune_files(copies) == [copies / f"experiment_state-{SESSIONS[0]}.json", copies / "tuner.pkl"]
    assert kept_checkpoint_links(experiment) == [copies / "checkpoints" / "train_a" / "checkpoint_000001"]
    assert replaced_folder(experiment, "20260102-000000") == copies / "replaced" / "20260102-000000"
    assert set_aside_copies(experiment, "train_z") == [copies / "replaced" / "20260101-000000" / "train_z"]
    session = tmp_path / "session"
    assert staging_folder(session, "s") is None
    for stamp in SESSIONS:
        (session / "artifacts" / stamp / "s" / "driver_artifacts").mkdir(parents=True)
    assert staging_folder(session, "s") == session / "artifacts" / SESSIONS[1] / "s" / "driver_artifacts"


def test_the_analysis_and_wandb(experiment):
    assert frame_file(experiment, CURVES_FRAME, "csv") == experiment / "curves.csv"
    assert figures(experiment) == [experiment / "plots" / "loss_curves.png"]
    assert [p.name for p in offline_runs(experiment)] == ["offline-run-20260101_000000-s-analysis"]
    assert offline_runs(experiment / "train_a", "a") == offline_runs(experiment / "train_a")
    assert offline_runs(experiment / "train_a", "b") == []
    found = experiment_offline_runs(experiment)
    assert {pattern: [str(p.relative_to(experiment)) for p in runs] for pattern, runs in found.items()} == {
        "wandb/offline-run-*": ["wandb/offline-run-20260101_000000-s-analysis"],
        "*/wandb/offline-run-*": ["train_a/wandb/offline-run-20260101_000000-a"],
        "extend-*/*/wandb/offline-run-*": ["extend-1/train_e/wandb/offline-run-20260101_000000-e"]}


# Names no module but the layout spells. A name with a dot, a dash or an underscore (a file, a prefix) counts
# anywhere in a string; a plain word (plots, wandb, summary) only where it becomes a path: a `/` operand, an
# argument of Path(), or a module's constant of its own. Text with a space is prose (a message, a help line),
# which names a file without making a path. Tune's progress.csv is read by nobody, and must stay so.
LAYOUT_NAMES = {value for name, value in vars(layout).items() if name.isupper() and isinstance(value, str)
                and name != "CHECKPOINT_NAME" and value != layout.FIRST_RUN}
LAYOUT_NAMES |= {*layout.ERROR_FILES, *(p.split("*")[0] for p in layout.TUNE_FILE_PATTERNS), "progress.csv",
                 "driver_artifacts"}
WORDS = {name for name in LAYOUT_NAMES if re.fullmatch(r"[A-Za-z]+", name)}
SPELLED = re.compile("|".join(re.escape(name) + (r"(?![a-z])" if name.endswith("_") else "")
                              for name in sorted(LAYOUT_NAMES - WORDS)))
SCANNED = ("trainers", "analysis", "tune_looped", "tests/helpers")
SINGLE_RUN = ("a single run's own folder (`<out_dir>/<name>/checkpoints/step_*`, `python -m trainers.train`), "
              "not an experiment's")
# (file, what) -> why it stays
ALLOWED = {
    ("trainers/checkpoint.py", "glob"): SINGLE_RUN,
    ("trainers/checkpoint.py", "checkpoints"): SINGLE_RUN,
    ("trainers/train.py", "checkpoints"): SINGLE_RUN,
    ("trainers/training.py", "checkpoints"): SINGLE_RUN,
    ("tune_looped/cluster.py", "glob"): "Ray's session folders in Ray's temporary folder, not an experiment's",
    ("tests/helpers/sweeps.py", "glob"): "/proc: the processes of a running sweep",
    ("tests/helpers/wandb_files.py", "glob"): "the data file inside one W&B offline run, W&B's format, which the "
                                              "helper decodes",
}


def _docstrings(tree) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def _word(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and node.value in WORDS else None


def hand_made_paths(source: str) -> list[str]:
    """What in `source` globs in a folder or spells a name of the experiment folder's layout."""
    tree = ast.parse(source)
    prose = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("glob", "rglob"):
            found.append("glob")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose \
                and not re.search(r"\s", node.value) and SPELLED.search(node.value):
            found.append(node.value)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            found += [word for side in (node.left, node.right) if (word := _word(side))]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("Path",
                                                                                                          "join"):
            found += [word for arg in node.args if (word := _word(arg))]
    found += [word for node in tree.body if isinstance(node, ast.Assign) and (word := _word(node.value))]
    return sorted(found)


@pytest.mark.parametrize("source, found", [
    ("folder.rglob('*.json')", ["glob"]),
    ("p = root / 'extend-1' / 'trial.json'", ["extend-1", "trial.json"]),
    ("p = f'{root}/checkpoint_{n:06d}'", ["/checkpoint_"]),
    ("p = experiment / 'plots'", ["plots"]),
    ("p = Path(folder, 'wandb')", ["wandb"]),
    ("PLOTS = 'plots'", ["plots"]),
    ("raw.get('wandb'); row['checkpoint_dir_name']; run.log({'summary': 1})", []),
    ("warn(f'{folder}: missing from result.json')", []),
    ("def f():\n    'Reads trial.json.'", []),
])
def test_the_scan_finds_paths_made_by_hand(source, found):
    assert hand_made_paths(source) == found


def test_no_module_but_the_layout_makes_a_path_of_the_experiment_folder_by_hand():
    made = {}
    for package in SCANNED:
        for path in sorted((REPO / package).rglob("*.py")):
            name = str(path.relative_to(REPO))
            if name != "trainers/layout.py":
                made.update({(name, what): None for what in hand_made_paths(path.read_text())})
    assert sorted(set(made) - set(ALLOWED)) == []
    assert sorted(set(ALLOWED) - set(made)) == [], "an allowed exception that no longer occurs"
