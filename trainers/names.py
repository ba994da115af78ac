"""Names that become one folder inside another: an experiment's (`--name`, a space file's `name:`) under
`--storage`, and a run's (`wandb.name`) under `out_dir`.

Such a name must not lead out of its folder (`../x`, `/abs`), name the folder itself (`.`, ``), or fail on the
filesystem later (a NUL byte, a name longer than a filesystem allows); one rule, for the runner, the single run
and the schema.
"""
from __future__ import annotations

MAX_NAME_LENGTH = 200
# Linux and macOS filesystems allow 255 bytes a name; 200 characters of emoji are 800
MAX_NAME_BYTES = 255
NAME_RULE = (f"a folder name: 1 to {MAX_NAME_LENGTH} characters, no / or \\, no control characters, "
             "not . or ..")


def is_folder_name(name) -> bool:
    """Whether `name` stays one folder inside the folder it is joined to (NAME_RULE)."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH
            and len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES
            and name not in (".", "..") and not any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in name))
