"""Read what an offline W&B run wrote (its ``run-<id>.wandb`` file), for tests.

The file is a LevelDB-style log (a 7-byte header ``:W&B`` + magic + version, then 32 KiB blocks
of chunks ``<crc32 u32><length u16><type u8><data>``, a record split over FIRST / MIDDLE / LAST
chunks) of ``wandb_internal_pb2.Record`` protobufs. Recent wandb releases write it from their
Go core and ship no Python reader, so the few lines here read it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_chunks(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B log")
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = b""
        elif length == 0:
            break
    return out


def run_facts(path: Path) -> dict:
    """``{"group", "job_type", "tags", "name", "config": {key: value}, "summary_keys",
    "artifacts": [names]}`` of an offline run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    facts: dict = {"config": {}, "summary_keys": set(), "artifacts": []}
    for raw in read_chunks(path):
        record = pb.Record()
        try:
            record.ParseFromString(raw)
        except Exception:  # a torn last record
            continue
        kind = record.WhichOneof("record_type")
        if kind == "run":
            facts.update(group=record.run.run_group, job_type=record.run.job_type,
                         tags=list(record.run.tags), name=record.run.display_name)
            for item in record.run.config.update:
                facts["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                facts["config"][item.key] = json.loads(item.value_json)
        elif kind == "summary":
            facts["summary_keys"].update(_key(item) for item in record.summary.update)
        elif kind == "history":
            facts["summary_keys"].update(_key(item) for item in record.history.item)
        elif kind == "artifact":
            facts["artifacts"].append(record.artifact.name)
    return facts


def _key(item) -> str:
    """A summary / history item's top-level key (``nested_key[0]`` in recent protocol versions)."""
    return item.key or (item.nested_key[0] if item.nested_key else "")


def offline_runs(folder: Path) -> list[Path]:
    """The ``run-*.wandb`` files under a W&B folder."""
    return sorted(Path(folder).glob("**/offline-run-*/run-*.wandb"))
