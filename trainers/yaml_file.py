"""Reading a YAML file strictly: config files and space files both come through here.

PyYAML lets a later duplicate key silently win and reports undecodable bytes with a traceback; a researcher
who wrote `n_layer` twice, or gave a binary file by mistake, gets one line naming the file instead.

PyYAML also reads whatever it is given, for as long as that takes: `/dev/zero` or a FIFO given as a file, a few
hundred bytes of aliases that expand to billions of values (an "alias bomb"), or nesting that ends in Python's
RecursionError. So only a regular file is read, and a file, its nesting and its expanded aliases have bounds,
each a one-line error before anything is built from the document.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import yaml

from trainers.schema import ConfigError

MAX_FILE_BYTES = 2**20
MAX_DEPTH = 64
# values in a document with each alias counted as a copy of what it names; the shipped spaces hold a few hundred
MAX_VALUES = 100_000
NOT_REGULAR = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def yaml11_float(value):
    """`value`, or the float a string spells: PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a string,
    where researchers mean a number."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def load_yaml(path: Path, what: str = "file"):
    """The document in `path` (None for an empty file), or ConfigError: one line naming the file (and the key,
    for a duplicate); `what` names the file's kind in the error."""
    try:
        text = _read(Path(path), what).decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (byte {err.start} is not UTF-8); expected a YAML {what}"
                            ) from None
    loader = _BoundedLoader(text, path)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, path, what)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    finally:
        loader.dispose()


def _read(path: Path, what: str) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES; what it is is looked at before it is opened, as
    reading a FIFO blocks and reading a device may never end."""
    try:
        mode, size = (info := os.stat(path)).st_mode, info.st_size
        if not stat.S_ISREG(mode):
            kind = next((name for is_kind, name in NOT_REGULAR if is_kind(mode)), "a special file")
            raise ConfigError(f"{path}: {kind}, not a regular file; expected a YAML {what}")
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ConfigError(f"{path}: a loop of symbolic links; expected a YAML {what}") from None
        raise ConfigError(f"{path}: cannot read {what} ({err.strerror})") from None
    if max(size, len(data)) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: at most {MAX_FILE_BYTES // 2**20} MiB for a YAML {what}, got "
                          f"{max(size, len(data))} bytes")
    return data


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, whose composer (which recurses once a level) stops at MAX_DEPTH levels, long
    before Python's recursion limit would."""

    def __init__(self, text: str, path):
        super().__init__(text)
        self.path, self.depth = path, 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise ConfigError(f"{self.path}: line {line}: at most {MAX_DEPTH} levels of nesting, got more")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _check_nodes(root, path, what: str) -> None:
    """Refuse a key given twice in a mapping, and a document whose aliases expand it beyond MAX_VALUES values or
    MAX_DEPTH levels, or refer to the value that holds them: a walk of the document as construction expands it,
    stopped at the first bound it crosses."""
    seen = 0
    holding: set[int] = set()

    def visit(node, prefix: str, depth: int) -> None:
        nonlocal seen
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(f"{path}: at most {MAX_VALUES} values in a YAML {what}, aliases expanded, got more "
                              "(an alias bomb?)")
        if isinstance(node, yaml.ScalarNode):
            return
        where, line = f"{path}: {prefix or 'top level'}", node.start_mark.line + 1
        if id(node) in holding:
            raise ConfigError(f"{where}: an alias to a value that holds it (line {line}); it would never end")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: at most {MAX_DEPTH} levels of nesting, aliases expanded, got more "
                              f"(line {line})")
        holding.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                visit(item, f"{prefix}[{i}]", depth + 1)
        else:
            first_line: dict = {}
            for key_node, value_node in node.value:
                # a key that is not a scalar is unhashable, which construction refuses
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                dotted = f"{prefix}.{key}" if prefix else str(key)
                if key is not None and key != "<<":
                    _note_key(first_line, key, key_node.start_mark.line + 1, f"{path}: {dotted}")
                visit(value_node, dotted, depth + 1)
        holding.discard(id(node))

    visit(root, "", 1)


def _note_key(first_line: dict, key, line: int, where: str) -> None:
    """Remember the line of a mapping's key, or refuse the key given a second time."""
    if key in first_line:
        lines = f"line {line}" if line == first_line[key] else f"lines {first_line[key]} and {line}"
        raise ConfigError(f"{where}: key given twice ({lines}); give it once")
    first_line[key] = line
