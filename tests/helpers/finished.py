"""Finished experiments built once per session (per xdist worker) and shared read-only: a test that reads one gets
a copy of its own, so that no test sees another's writes and none pays for the analysis (its figures take
seconds) again."""
import shutil
from pathlib import Path


class Finished:
    def __init__(self, root: Path):
        self._root = root
        self._built: dict[tuple[str, str], tuple[Path, object]] = {}

    def copy(self, build, to: Path):
        """Copy into `to` the experiment that `build(folder)` writes into a folder of the same name, built on the
        first call for that `build` and name. Returns what `build` returned, its paths in the folder moved to
        the copy."""
        key = (f"{build.__module__}.{build.__qualname__}", to.name)
        if key not in self._built:
            folder = self._root / str(len(self._built)) / to.name
            self._built[key] = folder, build(folder)
        folder, value = self._built[key]
        shutil.copytree(folder, to)
        return _moved(value, folder, to)


def _moved(value, old: Path, new: Path):
    if isinstance(value, Path):
        return new / value.relative_to(old) if value.is_relative_to(old) else value
    if isinstance(value, dict):
        return {key: _moved(item, old, new) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(item, old, new) for item in value)
    return value
