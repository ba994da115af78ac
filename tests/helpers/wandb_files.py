"""Reading back what W&B wrote offline: the records of a run's `.wandb` file.

The file is a LevelDB-style log: a 7-byte header (`:W&B`, a 2-byte magic number, a version byte), then blocks of
32 KiB holding chunks, each with a 7-byte header (CRC-32C, length, chunk type: full, first, middle or last) and
a piece of one serialised `Record` protobuf; a block's tail too short for a header is zero padding.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    out, pending, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < HEADER:
            offset += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + HEADER])
        chunk = data[offset + HEADER:offset + HEADER + length]
        offset += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def run_file(offline_run: Path) -> Path:
    return next(Path(offline_run).glob("run-*.wandb"))


def summary(offline_run: Path) -> dict:
    """The run's summary as its updates left it."""
    found = {}
    for record in records(run_file(offline_run)):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                found[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return found


def history(offline_run: Path) -> list[dict]:
    """Each logged row: key -> its JSON value (a table or an image is a reference to a file under files/)."""
    rows = []
    for record in records(run_file(offline_run)):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_settings(offline_run: Path) -> dict:
    """The run record's fields: id, project, entity, job type, run group, name."""
    for record in records(run_file(offline_run)):
        if record.WhichOneof("record_type") == "run":
            run = record.run
            return {"id": run.run_id, "project": run.project, "entity": run.entity, "job_type": run.job_type,
                    "group": run.run_group, "name": run.display_name}
    raise AssertionError(f"{offline_run}: no run record")


def artifacts(offline_run: Path) -> list[dict]:
    """Each logged artifact: its name, type and the paths in its manifest."""
    found = []
    for record in records(run_file(offline_run)):
        if record.WhichOneof("record_type") == "artifact":
            artifact = record.artifact
            found.append({"name": artifact.name, "type": artifact.type,
                          "paths": sorted(entry.path for entry in artifact.manifest.contents)})
    return found
