"""Starting or joining Ray, the dashboard, and where results are stored."""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from tune_looped.space import SpaceError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MIN_FREE_BYTES = 200 * 2**20


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def is_uri(storage: str) -> bool:
    return "://" in storage


def check_storage(storage: str) -> str:
    """Fail before anything starts when a local storage path cannot take results; URIs are Ray's to check.

    Only the last folder of the path may be missing (Ray creates it): a mistyped parent fails here instead of
    growing a tree in an unexpected place. Nothing is left behind: the write check's file is deleted at once.
    """
    if is_uri(storage):
        return storage
    path = Path(storage).expanduser().absolute()
    folder = path if path.exists() else path.parent
    if not folder.is_dir():
        where = "it" if folder == path else f"the parent {folder}"
        problem = "is not a folder" if folder.exists() else "does not exist; create it first"
        raise SpaceError(f"--storage {storage}: {where} {problem}")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_check_"):
            pass
    except OSError as err:
        raise SpaceError(f"--storage {storage}: cannot write in {folder} ({err.strerror or err})") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise SpaceError(f"--storage {storage}: {free / 2**20:.0f} MiB free on that disk, less than the "
                         f"{MIN_FREE_BYTES // 2**20} MiB a sweep needs for its checkpoints and results")
    return str(path.resolve())


def start_ray(address: str | None, *, num_cpus=None, num_gpus=None, dashboard_host: str = "127.0.0.1"):
    """An embedded local Ray (the default) or a connection to a running cluster (`--address`)."""
    import ray

    if address:
        context = ray.init(address=address, log_to_driver=True)
    else:
        if dashboard_host not in LOOPBACK:
            warn(f"the dashboard listens on {dashboard_host}: anyone who reaches it can run code on this machine")
        context = ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=True,
                           dashboard_host=dashboard_host)
    url = context.dashboard_url
    if url:
        print(f"Ray dashboard: http://{url}  (token auth: `ray get-auth-token` prints the token to paste,"
              f" or send it as 'Authorization: Bearer <token>')", file=sys.stderr)
    return context


def warn_if_local_storage_on_cluster(storage: str) -> None:
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) > 1 and not is_uri(storage):
        warn(f"--storage {storage} is a local path on a {len(alive)}-node cluster: Ray needs storage every node "
             "can reach (a shared filesystem or s3://, gs://) for checkpoints and results")
