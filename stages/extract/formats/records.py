"""The typed records every dataset reader yields, so stage one never cares which dataset it reads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SceneRecord:
    """One scan: a point set (mesh vertices or room points) in the frame its camera poses live in."""

    name: str
    points: np.ndarray  # (N, 3) float32, metres, same frame as FrameRecord.pose
    colors: np.ndarray  # (N, 3) uint8 RGB
    labels: np.ndarray  # (N,) uint8, ids of the dataset's label space (cache_schema.labels), unlabelled value there
    point_ids: np.ndarray  # (N,) int64, index of each point in the source file (vertex / line order)
    label_space: str  # a key of cache_schema.labels.LABEL_SPACES
    meta: dict = field(default_factory=dict)  # e.g. {"axis_alignment": 4x4 list} for ScanNet


@dataclass
class FrameRecord:
    """One posed RGB(-D) frame."""

    frame_id: int  # source frame index (ScanNet: index in the .sens; others: running index within the scene)
    image: np.ndarray  # (H, W, 3) uint8 RGB
    intrinsics: np.ndarray  # (3, 3) float64, for `image` at its stored size
    pose: np.ndarray  # (4, 4) float64 camera-to-world, metres (OpenCV axes: x right, y down, z forward)
    depth: np.ndarray | None = None  # (Hd, Wd) float32 metres, 0 = invalid
    depth_intrinsics: np.ndarray | None = None  # (3, 3) float64 for `depth`
    labels: np.ndarray | None = None  # (H, W) uint8 in the scene's label space, same size as `image`
    name: str = ""  # source name (file name or "frame N")


@dataclass
class SkipCounter:
    """Counted, reported skips (bad frames, bad lines) instead of silent drops or whole-run aborts."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 5 and where:
            ex.append(where)

    def merge(self, other: SkipCounter) -> None:
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
            self.examples.setdefault(k, []).extend(other.examples.get(k, [])[: 5 - len(self.examples.get(k, []))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class MeshRecord:
    """A labelled triangle mesh, what the synthetic world hands the format writers (and ScanNet's plys hold)."""

    vertices: np.ndarray  # (N, 3) float32 metres
    colors: np.ndarray  # (N, 3) uint8 RGB
    faces: np.ndarray  # (M, 3) int32 vertex indices
    labels: np.ndarray  # (N,) uint8 NYU40 ids (0 = unlabelled)
    instances: np.ndarray | None = None  # (N,) int32 object instance ids (0 = none), for aggregation/segs files
