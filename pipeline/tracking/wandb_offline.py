"""Read back what an offline W&B run logged, from its `.wandb` transaction log, with no server.

wandb 0.31 writes no `files/config.yaml` or `files/wandb-summary.json` for offline runs; everything
is in `run-<id>.wandb`, a LevelDB-style log of wandb's own protobuf `Record`s. Reading it lets
tests check what was really logged, lets the erasure job find deleted data in offline runs, and
lets a user inspect a run before `make sync` (`python -m pipeline.ops.wandb_offline`, the command).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version; then 7-byte record headers (crc, len, type)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    run_id: str = ""
    project: str = ""
    group: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # name -> {"type", "metadata", "files"} for artifacts the run logged as outputs
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def raw_records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        chunk = data[pos : pos + length]
        pos += length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def _set_nested(target: dict[str, Any], item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    value = json.loads(item.value_json)
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def transaction_logs(folder: Path) -> list[Path]:
    """All `.wandb` logs under a run folder (one per offline run, resumes included), oldest first."""
    return sorted(folder.rglob("run-*.wandb"), key=lambda p: p.parent.name)


def logged_to(wandb_file: Path) -> tuple[str, str, str] | None:
    """(run id, entity, project) of the run this log records, from its first run record; None for a log
    with none (cut short before it) or one that is not a W&B log. Parses no record past that one."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    try:
        for raw in raw_records(wandb_file):
            record = pb.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "run":
                return record.run.run_id, record.run.entity, record.run.project
    except (OSError, ValueError, DecodeError):  # unreadable, not a W&B log, or a record cut short
        return None
    return None


def read_offline_run(wandb_file: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    run = OfflineRun()
    for raw in raw_records(wandb_file):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.group = r.run_id, r.project, r.run_group
            run.name = r.display_name
            run.tags = list(r.tags)
            for item in r.config.update:
                _set_nested(run.config, item)
        elif kind == "config":
            for item in record.config.update:
                _set_nested(run.config, item)
        elif kind == "summary":
            for item in record.summary.update:
                _set_nested(run.summary, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set_nested(row, item)
            run.history.append(row)
        elif kind == "artifact":
            a = record.artifact
            run.artifacts[a.name] = {
                "type": a.type,
                "metadata": json.loads(a.metadata) if a.metadata else {},
                "files": [c.path for c in a.manifest.contents],
                "references": [c.ref for c in a.manifest.contents if c.ref],
            }
        elif kind == "files":
            run.files.extend(f.path for f in record.files.files)
    return run

