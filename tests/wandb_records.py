"""Read the records of a W&B offline run file (``run-<id>.wandb``) for tests.

wandb 0.31 ships no Python reader; the file is LevelDB's log format (after a 7-byte header
``:W&B`` + magic + version): 32 KiB blocks of records, each with a 7-byte header (crc32c,
little-endian length, type 1 full / 2 first / 3 middle / 4 last). The payloads are
``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def _payloads(data: bytes):
    pos, parts = HEADER, []  # the file header occupies the start of block 0
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the rest of a block too small for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        parts.append(chunk)
        if kind in (1, 4):
            yield b"".join(parts)
            parts = []


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:8]
    out = []
    for payload in _payloads(data):
        rec = pb.Record()
        rec.ParseFromString(payload)
        out.append(rec)
    return out
