"""Reading a YAML file strictly: config files and space files both come through here.

PyYAML lets a later duplicate key silently win and reports undecodable bytes with a traceback; a researcher
who wrote `n_layer` twice, or gave a binary file by mistake, gets one line naming the file instead.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from trainers.schema import ConfigError


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
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what} ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (byte {err.start} is not UTF-8); expected a YAML {what}"
                            ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, path, "")
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    finally:
        loader.dispose()


def _refuse_duplicate_keys(node, path: Path, prefix: str) -> None:
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, path, f"{prefix}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key is not None and key != "<<":
            line = key_node.start_mark.line + 1
            if key in first_line:
                lines = f"line {line}" if line == first_line[key] else f"lines {first_line[key]} and {line}"
                raise ConfigError(f"{path}: {dotted}: key given twice ({lines}); give it once")
            first_line[key] = line
        _refuse_duplicate_keys(value_node, path, dotted)
