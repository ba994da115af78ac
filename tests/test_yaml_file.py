"""trainers.yaml_file's bounds: what it refuses to read (anything but a regular file, a file over 1 MiB) and to
build (nesting beyond 64 levels, aliases expanding beyond 100,000 values or into themselves), each one line."""
import os

import pytest

from trainers import yaml_file
from trainers.config import read_yaml
from trainers.schema import ConfigError
from trainers.yaml_file import MAX_DEPTH, load_yaml


def refused(path, what="config file") -> str:
    with pytest.raises(ConfigError) as err:
        load_yaml(path, what)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message[len(f"{path}: "):]


def write(tmp_path, text: str, name: str = "f.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def alias_bomb(levels: int) -> str:
    """`levels` lists of nine aliases to the list before: 9**levels strings in a few hundred bytes."""
    lines = ["a0: &a0 [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_of_a_few_hundred_bytes_is_refused(tmp_path):
    assert len(alias_bomb(9)) < 500
    assert refused(write(tmp_path, alias_bomb(9))) == (
        "at most 100000 values in a YAML config file, aliases expanded, got more (an alias bomb?)")


def test_aliases_within_the_bound_load(tmp_path, monkeypatch):
    # the top mapping, then each list and its nine items: 10, 1 + 9 * 10 and 1 + 9 * 91 values
    expanded = 1 + 10 + 91 + 820
    monkeypatch.setattr(yaml_file, "MAX_VALUES", expanded)
    loaded = load_yaml(write(tmp_path, alias_bomb(3)))
    assert len(loaded["a2"]) == 9 and loaded["a2"][0][0][0] == "lol"
    monkeypatch.setattr(yaml_file, "MAX_VALUES", expanded - 1)
    assert refused(write(tmp_path, alias_bomb(3))).startswith(f"at most {expanded - 1} values")


@pytest.mark.parametrize("text, message", [
    ("a: &a [*a]\n", "a[0]: an alias to a value that holds it (line 1); it would never end"),
    ("model: &m {n_layer: 1, inner: *m}\n",
     "model.inner: an alias to a value that holds it (line 1); it would never end"),
], ids=["sequence", "mapping"])
def test_an_alias_inside_its_own_value_is_refused(tmp_path, text, message):
    assert refused(write(tmp_path, text)) == message


@pytest.mark.parametrize("text, message", [
    ("[" * 500 + "]" * 500 + "\n", "line 1: at most 64 levels of nesting, got more"),
    ("".join("  " * i + f"k{i}:\n" for i in range(500)), "line 64: at most 64 levels of nesting, got more"),
], ids=["flow", "block"])
def test_nesting_500_deep_is_refused_not_a_recursion_error(tmp_path, text, message):
    assert refused(write(tmp_path, text)) == message


def test_nesting_at_the_bound_loads(tmp_path):
    value = load_yaml(write(tmp_path, "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1) + "\n"))
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == 1
    assert "levels of nesting" in refused(write(tmp_path, "[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH + "\n"))


def test_aliases_nesting_beyond_the_bound_are_refused(tmp_path):
    text = "l0: &l0 [1]\n" + "".join(f"l{i}: &l{i} [*l{i - 1}]\n" for i in range(1, MAX_DEPTH + 1))
    # the top mapping, then l63 and the 63 lists it holds, the last l0's (on line 1)
    assert refused(write(tmp_path, text)) == ("l63" + "[0]" * 63 + ": at most 64 levels of nesting, aliases "
                                              "expanded, got more (line 1)")


def test_a_file_over_1_mib_is_refused_before_it_is_parsed(tmp_path):
    path = write(tmp_path, "model: {}\n#" + "x" * 2**20 + "\n")
    assert refused(path) == f"at most 1 MiB for a YAML config file, got {path.stat().st_size} bytes"


@pytest.mark.parametrize("make, message", [
    (lambda path: os.mkfifo(path), "a FIFO, not a regular file; expected a YAML config file"),
    (lambda path: path.mkdir(), "a folder, not a regular file; expected a YAML config file"),
    (lambda path: (path.symlink_to(path.with_name("other.yaml")), path.with_name("other.yaml").symlink_to(path)),
     "a loop of symbolic links; expected a YAML config file"),
    (lambda path: path.symlink_to(path.with_name("nothing.yaml")),
     "cannot read config file (No such file or directory)"),
], ids=["fifo", "folder", "symlink-loop", "dangling-symlink"])
def test_only_a_regular_file_is_read(tmp_path, make, message):
    path = tmp_path / "f.yaml"
    make(path)
    assert refused(path) == message


def test_a_device_is_refused_without_reading_it():
    assert refused("/dev/zero") == "a character device, not a regular file; expected a YAML config file"


def test_a_symlink_loop_as_inherit_is_one_line(tmp_path):
    (tmp_path / "a.yaml").symlink_to(tmp_path / "b.yaml")
    (tmp_path / "b.yaml").symlink_to(tmp_path / "a.yaml")
    top = write(tmp_path, "inherit: [a.yaml]\n", "top.yaml")
    with pytest.raises(ConfigError, match=r"a\.yaml: a loop of symbolic links; expected a YAML config file$"):
        read_yaml(top)


def test_anchors_aliases_and_merge_keys_still_load(tmp_path):
    text = "shared: &s {n_layer: 2, n_embd: 32}\nmodel:\n  <<: *s\n  n_layer: 3\nlist: [*s, *s]\n"
    loaded = load_yaml(write(tmp_path, text))
    assert loaded["model"] == {"n_layer": 3, "n_embd": 32} and loaded["list"] == [loaded["shared"]] * 2
