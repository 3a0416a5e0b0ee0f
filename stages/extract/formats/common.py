"""Helpers shared by the dataset modules: input fingerprints and the reader protocol."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from .records import FrameRecord, SceneRecord, SkipCounter

_EDGE = 1 << 16  # bytes hashed at each end of a file


def fingerprint_files(root: Path, relpaths: Iterable[str]) -> str:
    """A content fingerprint of input files that is the same in every lab holding the same files.

    Hashes, per file in sorted order: its path relative to the dataset root, its size, and its first and last
    64 KiB. Whole-file hashes of multi-GB `.sens` files would cost minutes per scene; size plus both ends
    catches truncation, re-exports and different scans, and is independent of mtimes and absolute paths.
    """
    h = hashlib.sha256()
    for rel in sorted(set(relpaths)):
        p = Path(root) / rel
        size = p.stat().st_size
        h.update(rel.encode() + b"\0" + str(size).encode() + b"\0")
        with open(p, "rb") as f:
            h.update(f.read(_EDGE))
            if size > 2 * _EDGE:
                f.seek(size - _EDGE)
                h.update(f.read(_EDGE))
    return h.hexdigest()


class DatasetReader(Protocol):
    """What stage one needs from a dataset, whichever it is."""

    name: str  # "scannet" | "s3dis" | "nyu"
    label_space: str  # key of cache_schema.labels.LABEL_SPACES
    has_3d: bool  # False for 2D-only sources (NYU-v2): load_scene is not available

    def scene_names(self) -> list[str]: ...

    def load_scene(self, name: str) -> SceneRecord: ...

    def frames(self, name: str, frame_skip: int = 1, skips: SkipCounter | None = None) -> Iterator[FrameRecord]: ...

    def scene_input_files(self, name: str) -> list[str]:
        """Paths (relative to the dataset root) of every file the scene is read from, for fingerprinting."""
        ...
