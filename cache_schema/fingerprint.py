"""Canonical hashing of JSON-able values (the basis of a cache's fingerprint) and of files (checkpoints)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any


def _normalize(v: Any) -> Any:
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"non-finite value {v} cannot be fingerprinted")
        return float(repr(v)) if v != int(v) else int(v)  # 2.0 and 2 hash alike
    if isinstance(v, dict):
        return {str(k): _normalize(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_normalize(x) for x in v]
    return v


def canonical_json(v: Any) -> str:
    return json.dumps(_normalize(v), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_hash(v: Any) -> str:
    return hashlib.sha256(canonical_json(v).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (checkpoints are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
