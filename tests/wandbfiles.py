"""Reading W&B offline run folders back, for tests that check what a run logged.

wandb 0.31 ships no Python reader of its `.wandb` files (the old `DataStore` is gone; the Go
`wandb-core` writes them). The format is LevelDB's log: a 7-byte file header (":W&B", magic
0xBEE1, version 0), then 32 KiB blocks of chunks, each a 7-byte header (CRC-32 of the type byte
and payload, payload length, type: full / first / middle / last) and a payload; a record is one
full chunk or first + middle... + last, and is a serialised `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2

FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK_HEADER = struct.Struct("<IHB")  # crc32, payload length, chunk type
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> Iterator[wandb_internal_pb2.Record]:
    """Every record of one `.wandb` file, in order; a corrupt file raises ValueError."""
    data = Path(path).read_bytes()
    if FILE_HEADER.unpack_from(data) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path}: not a W&B transaction log")
    pos, parts = FILE_HEADER.size, []
    while pos + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER.size:  # the writer pads a block's tail that cannot hold a header
            pos += left_in_block
            continue
        crc, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        payload = data[pos + CHUNK_HEADER.size:pos + CHUNK_HEADER.size + length]
        if kind not in (FULL, FIRST, MIDDLE, LAST) or len(payload) != length:
            raise ValueError(f"{path}: bad chunk at byte {pos}")
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: checksum mismatch at byte {pos}")
        pos += CHUNK_HEADER.size + length
        parts.append(payload)
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


def read_run(path: str | Path) -> dict:
    """One `.wandb` file as {"id", "project", "name", "group", "tags", "resume", "config",
    "history": [rows with "_step"], "exit_code"} ("exit_code" is None when the run never finished)."""
    run, config, history, exit_code = None, {}, [], None
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({_key(item): json.loads(item.value_json) for item in run.config.update})
        elif kind == "config":
            config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
            for item in record.config.remove:
                config.pop(_key(item), None)
        elif kind == "history":
            history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    if run is None:
        raise ValueError(f"{path}: no run record")
    config.pop("_wandb", None)
    return {"id": run.run_id, "project": run.project, "name": run.display_name, "group": run.run_group,
            "tags": list(run.tags), "resume": run.resume, "start_time": run.start_time.ToNanoseconds(),
            "config": config, "history": history, "exit_code": exit_code}


def read_offline_runs(folder: str | Path) -> list[dict]:
    """Every offline run under `folder` (searched recursively: a run folder, a W&B `dir`, or its
    `wandb/`), oldest first; see `read_run` for each one's fields."""
    runs = [read_run(path) for path in Path(folder).rglob("offline-run-*/run-*.wandb")]
    return sorted(runs, key=lambda run: run["start_time"])
