"""Where a retried or resumed trial starts: the checkpoint Tune restores, or, when that one is damaged, the
newest of the trial's other checkpoints that loads, else step 0. Ray's own Checkpoint objects on real folders."""
import pytest
import torch
from ray import tune

from test_checkpoint import tune_looped_state
from trainers.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from tune_looped.trainable import _resume_point

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trial_folder(root, steps):
    """A trial folder as Ray leaves it: `checkpoint_NNNNNN/` holding the trainer's checkpoint of each step."""
    for number, step in enumerate(steps):
        save_checkpoint(root / f"checkpoint_{number:06d}", tune_looped_state(step))
    return root


def truncate(folder):
    file = folder / CHECKPOINT_FILE
    file.write_bytes(file.read_bytes()[:100])


def test_the_restored_checkpoint_when_it_loads(tmp_path):
    trial = trial_folder(tmp_path / "trial", [10, 20])
    local = _resume_point(tune.Checkpoint(str(trial / "checkpoint_000001")), tmp_path / "work")
    assert load_checkpoint(local)["step"] == 20


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
    trial = trial_folder(tmp_path / "trial", [10, 20, 30])
    truncate(trial / "checkpoint_000002")
    (trial / "checkpoint_000001" / CHECKPOINT_FILE).unlink()  # a copy Ray never finished
    local = _resume_point(tune.Checkpoint(str(trial / "checkpoint_000002")), tmp_path / "work")
    assert load_checkpoint(local)["step"] == 10
    log = capsys.readouterr().out.splitlines()
    assert log[0] == (f"checkpoint {trial / 'checkpoint_000002'} does not load (damaged checkpoint: 100 bytes whose "
                      "sha256 differs from the one saved with it (checkpoint.pt.sha256)); trying the one before it")
    assert log[1].startswith(f"checkpoint {trial / 'checkpoint_000001'} does not load (") and len(log) == 2


def test_no_loadable_checkpoint_starts_again_from_step_0(tmp_path, capsys):
    trial = trial_folder(tmp_path / "trial", [10])
    truncate(trial / "checkpoint_000000")
    torch.save({"not": "a checkpoint"}, tmp_path / "trial" / "params.pt")  # not a checkpoint folder: not tried
    assert _resume_point(tune.Checkpoint(str(trial / "checkpoint_000000")), tmp_path / "work") is None
    assert capsys.readouterr().out.splitlines()[-1] == "no checkpoint of this trial loads; starting again from step 0"
