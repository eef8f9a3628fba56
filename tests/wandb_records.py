"""What an offline wandb run logged, read back from its .wandb file (for tests).

The file is a LevelDB-style log (the format of wandb's own transaction log): a 7-byte header
(":W&B", magic, version), then 32 KiB blocks of records, each with a 7-byte header (crc32,
length, kind: 1 whole, 2 first, 3 middle, 4 last piece); each record a wandb Record protobuf.
"""

import json
import struct
import time
from pathlib import Path

BLOCK, HEADER = 32768, 7


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", path
    pos, pieces, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        pieces = chunk if kind in (1, 2) else pieces + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pieces)
            out.append(record)
    return out


def finished(path: Path, timeout: float = 30) -> list:
    """The records of a run's file once it holds the run's end: wandb.finish() returns before
    wandb's service process has written them all (a process's exit waits for it)."""
    deadline = time.monotonic() + timeout
    while True:
        found = records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def logged(folder: Path) -> dict:
    """{"runs": [(id, group, name)], "history": [{key: value} with "_step"], "summary": {key: value}}
    of every offline run under FOLDER/wandb, in the order written."""
    found = {"runs": [], "history": [], "summary": {}}
    for path in sorted(Path(folder).glob("wandb/offline-run-*/*.wandb")):
        for r in finished(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                found["runs"].append((r.run.run_id, r.run.run_group, r.run.display_name))
            elif kind == "history":
                found["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                         for i in r.history.item})
            elif kind == "summary":
                found["summary"] |= {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update}
    return found
