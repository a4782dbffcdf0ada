"""Writes perf_analyzer `--input-data` JSON files for the BYTES inputs of our ensembles.

perf_analyzer takes a BYTES element as base64 of its serialized form: a 4-byte little-endian
length followed by the bytes (plain base64 of the file is read as a bogus length prefix).
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path


def serialized_b64(data: bytes) -> str:
    return base64.b64encode(struct.pack("<I", len(data)) + data).decode()


def write_input_data(path: str | Path, input_name: str, payloads: list[bytes]) -> Path:
    """One perf_analyzer data entry per payload (it cycles through them)."""
    path = Path(path)
    path.write_text(json.dumps({"data": [{input_name: {"b64": serialized_b64(p)}} for p in payloads]}))
    return path
