"""Files written whole or not at all: the target holds the old content or the new one, never a mix, and no
temporary file is left beside it."""
import os

import pytest

from trainers import atomic


def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "sub" / "record.json"
    atomic.write_text(target, "old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["record.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "figure.png"
    target.write_text("old")
    with pytest.raises(OSError, match="No space left"):
        with atomic.replacing(target) as temporary:
            assert temporary.parent == tmp_path and temporary.name.startswith(".figure.")
            # the suffix stays: matplotlib and pandas choose the format by it
            assert temporary.suffix == ".png"
            temporary.write_text("half")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_the_file_gets_the_umasks_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "space.yaml", "name: x\n")
    finally:
        os.umask(previous)
    assert (tmp_path / "space.yaml").stat().st_mode & 0o777 == 0o644
