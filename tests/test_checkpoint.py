"""Checkpoint files: written whole or not at all with their checksum, refused when damaged, read without running
code, and loaded into a model whether this code or the research's code wrote them."""
import hashlib
import os
import re
import subprocess

import pytest
import torch

from helpers.models import prompts, run, tiny
from trainers.checkpoint import (CHECKPOINT_FILE, checkpoint_dir_of, checksum_file, latest_checkpoint,
                                 load_checkpoint, load_research_checkpoint, read_weights, save_checkpoint)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tune_looped_state(step=7):
    return {"model": tiny().state_dict(), "optimizer": {"state": {}, "param_groups": []}, "step": step,
            "rng": {"torch": torch.get_rng_state()}, "metrics": [{"step": step - 1, "overall_loss": 0.5}],
            "config": {"model": {"n_layer": 2}}}


@pytest.mark.parametrize("wrap", ["model", "model_state_dict", None])
def test_checkpoint_round_trip(tmp_path, wrap):
    source, target = tiny(seed=0), tiny(seed=1)
    path = tmp_path / "ckpt.pt"
    sd = source.state_dict()
    torch.save({wrap: sd, "step": 7} if wrap else sd, path)
    xs, ys = prompts()
    assert not torch.allclose(run(source, xs, ys), run(target, xs, ys))
    assert load_research_checkpoint(target, path) is target
    torch.testing.assert_close(run(target, xs, ys), run(source, xs, ys), atol=0, rtol=0)


def test_checkpoint_with_nanogpt_mask_buffers_loads(tmp_path):
    source, target = tiny("gpt2", seed=0), tiny("gpt2", seed=1)
    sd = dict(source.state_dict())
    for i in range(2):
        sd[f"_backbone.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(17, 17)).view(1, 1, 17, 17)
        sd[f"_backbone.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save({"model": sd}, tmp_path / "ref.pt")
    load_research_checkpoint(target, tmp_path / "ref.pt")
    xs, ys = prompts()
    torch.testing.assert_close(target(xs, ys), source(xs, ys), atol=0, rtol=0)


def test_checkpoint_with_missing_key_is_refused(tmp_path):
    sd = dict(tiny().state_dict())
    del sd["_read_out.bias"]
    torch.save({"model": sd}, tmp_path / "partial.pt")
    with pytest.raises(RuntimeError, match="_read_out.bias"):
        load_research_checkpoint(tiny(), tmp_path / "partial.pt")


@pytest.mark.parametrize("content", [[1, 2, 3], {"step": 3}, {"model": [1]}, {}])
def test_checkpoint_of_the_wrong_shape_is_refused(tmp_path, content):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match="odd.pt.*expected.*'model'"):
        load_research_checkpoint(tiny(), path)


def test_non_checkpoint_file_is_refused(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello world")
    with pytest.raises(ValueError, match="notes.pt"):
        load_research_checkpoint(tiny(), path)


class _Malicious:
    marker = None

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused(tmp_path):
    payload = _Malicious()
    payload.marker = tmp_path / "pwned"
    torch.save({"model": payload}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt"):
        load_research_checkpoint(tiny(), tmp_path / "evil.pt")
    assert not payload.marker.exists()


def test_save_and_load_round_trip(tmp_path):
    state = tune_looped_state()
    directory = save_checkpoint(tmp_path / "checkpoints" / "step_000007", state)
    # the writes go through temporary files; only the finished file and its checksum are left
    assert sorted(p.name for p in directory.iterdir()) == [CHECKPOINT_FILE, CHECKPOINT_FILE + ".sha256"]
    data = (directory / CHECKPOINT_FILE).read_bytes()
    assert checksum_file(directory / CHECKPOINT_FILE).read_text() == \
        f"{hashlib.sha256(data).hexdigest()}  {CHECKPOINT_FILE}\n"
    check = ["sha256sum", "--check", "--quiet", CHECKPOINT_FILE + ".sha256"]
    assert subprocess.run(check, cwd=directory).returncode == 0
    for where in (directory, directory / CHECKPOINT_FILE):
        loaded = load_checkpoint(where)
        assert loaded.keys() == state.keys() and loaded["step"] == 7 and loaded["metrics"] == state["metrics"]
        for key, tensor in state["model"].items():
            assert torch.equal(loaded["model"][key], tensor)
        assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])


def test_a_truncated_file_is_refused_with_a_one_line_reason(tmp_path):
    file = save_checkpoint(tmp_path, tune_looped_state()) / CHECKPOINT_FILE
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path)
    assert str(err.value) == (f"{file}: damaged checkpoint: {file.stat().st_size} bytes whose sha256 differs from "
                              "the one saved with it (checkpoint.pt.sha256)")
    # without its checksum (a checkpoint of an earlier version), the unpickler's own reason
    checksum_file(file).unlink()
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{file}: not a loadable checkpoint, only tensors and containers are accepted (")
    assert message.endswith(")") and "\n" not in message


@pytest.mark.parametrize("damage", ["flipped byte", "empty", "empty checksum"])
def test_damage_that_still_unpickles_is_refused_by_its_checksum(tmp_path, damage):
    file = save_checkpoint(tmp_path, tune_looped_state()) / CHECKPOINT_FILE
    if damage == "flipped byte":
        # a byte of a tensor's storage: the zip archive and the pickle still read, the weights are wrong
        data = bytearray(file.read_bytes())
        data[-200] ^= 0xFF
        file.write_bytes(bytes(data))
    elif damage == "empty":
        file.write_bytes(b"")
    else:
        checksum_file(file).write_text("")
    with pytest.raises(ValueError, match=f"^{re.escape(str(file))}: damaged checkpoint"):
        load_checkpoint(tmp_path)


def test_an_earlier_checkpoint_without_a_checksum_loads(tmp_path):
    torch.save(tune_looped_state(), tmp_path / CHECKPOINT_FILE)
    assert load_checkpoint(tmp_path)["step"] == 7


def test_a_missing_file_and_a_foreign_file_are_named(tmp_path):
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / CHECKPOINT_FILE))}: no checkpoint file there$"):
        load_checkpoint(tmp_path)
    torch.save({"model": tiny().state_dict(), "step": 3}, tmp_path / CHECKPOINT_FILE)
    missing = "missing config, metrics, optimizer, rng"
    with pytest.raises(ValueError, match=rf"not a tune-looped checkpoint \({missing}\)$"):
        load_checkpoint(tmp_path)
    # read_weights leaves a missing file to the caller: it is not a damaged checkpoint
    with pytest.raises(FileNotFoundError):
        read_weights(tmp_path / "absent.pt")


def test_the_latest_checkpoint_is_the_highest_step(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (20, 100, 9):
        save_checkpoint(tmp_path / "checkpoints" / f"step_{step:06d}", tune_looped_state(step))
    (tmp_path / "checkpoints" / "step_000200").mkdir()  # a folder with no file in it is no checkpoint
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000100"
    assert checkpoint_dir_of(tmp_path / "step_000100" / CHECKPOINT_FILE) == tmp_path / "step_000100"
    assert checkpoint_dir_of(tmp_path / "step_000100") == tmp_path / "step_000100"
