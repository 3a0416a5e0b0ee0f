"""One scene in, one complete scene group out: teacher once, then every frame projected, encoded and written."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from cache_schema import CachedFrame, CacheWriter
from cache_schema.image_codec import encode_image

from .formats.common import DatasetReader
from .formats.records import FrameRecord, SceneRecord, SkipCounter
from .label_embedding import LabelEmbeddingTeacher
from .projection import PointColumns, ProjectionConfig, project_points


class FeatureTeacher(Protocol):
    channels: int

    def point_features(self, points: np.ndarray, colors: np.ndarray) -> np.ndarray: ...


class ExtractionError(ValueError):
    """A scene cannot be extracted (the message names scene and frame)."""


@dataclass(frozen=True)
class JobConfig:
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    frame_skip: int = 1
    image_size: tuple[int, int] | None = None  # (W, H) of stored images; None = source size
    image_format: str = "jpeg"
    jpeg_quality: int = 90
    feature_dtype: str = "float16"  # manifest encoding.features: float16 | uint8 (lossy, per-scene affine code)


@dataclass
class SceneResult:
    scene: str
    frames: int = 0
    cells: int = 0
    grid_cells: int = 0
    skips: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # read, teacher, projection, encode, write
    error: str | None = None

    @property
    def coverage(self) -> float:
        return self.cells / self.grid_cells if self.grid_cells else 0.0


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {k: 0.0 for k in ("read", "teacher", "projection", "encode", "write")}

    def add(self, part: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[part] += now - t0
        return now


def scale_intrinsics(k: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Intrinsics for an image resized from src (W, H) to dst (W, H), pixel centres at integers."""
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    out = np.array(k, dtype=np.float64, copy=True)
    out[0, 0] *= sx
    out[1, 1] *= sy
    out[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
    return out


def prepare_frame(frame: FrameRecord, image_size: tuple[int, int] | None, scene: str, unlabelled: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, labels, intrinsics) at the stored size, checked against each other."""
    h, w = frame.image.shape[:2]
    k = np.asarray(frame.intrinsics, np.float64)
    where = f"scene {scene}, frame {frame.frame_id}"
    if not (0 < k[0, 2] < w and 0 < k[1, 2] < h) or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise ExtractionError(f"{where}: intrinsics (cx={k[0, 2]:.1f}, cy={k[1, 2]:.1f}) do not fit the "
                              f"{w}x{h} image: image/intrinsics size mismatch")
    labels = frame.labels if frame.labels is not None else np.full((h, w), unlabelled, np.uint8)
    if labels.shape != (h, w):
        raise ExtractionError(f"{where}: label map {labels.shape[::-1]} != image {w}x{h}")
    image = frame.image
    if image_size is not None and image_size != (w, h):
        image = cv2.resize(image, image_size, interpolation=cv2.INTER_AREA)
        labels = cv2.resize(labels, image_size, interpolation=cv2.INTER_NEAREST)
        k = scale_intrinsics(k, (w, h), image_size)
    return image, labels.astype(np.uint8), k


def point_features(teacher: FeatureTeacher | LabelEmbeddingTeacher, scene: SceneRecord, points: np.ndarray,
                   finite: np.ndarray) -> np.ndarray:
    """(n_finite, C) features of the scene's finite points: the 3D teacher sees points and colours, the
    label-embedding control only the points' labels."""
    if isinstance(teacher, LabelEmbeddingTeacher):
        if teacher.label_space.name != scene.label_space:
            raise ExtractionError(f"scene {scene.name}: the label embedding is of {teacher.label_space.name}, the "
                                  f"scene's labels are {scene.label_space}")
        labels = np.asarray(scene.labels)
        if labels.shape != (points.shape[0],):
            raise ExtractionError(f"scene {scene.name}: {labels.shape[0]} point labels for {points.shape[0]} points")
        return teacher.label_features(labels[finite])
    return teacher.point_features(points[finite], scene.colors[finite])


def extract_scene(dataset: DatasetReader, name: str, teacher: FeatureTeacher | LabelEmbeddingTeacher | None,
                  writer: CacheWriter, cfg: JobConfig, on_frame: Callable[[int], None] | None = None) -> SceneResult:
    """Extract one scene into `writer`'s cache; the scene is marked complete only if everything was written."""
    timer = _Timer()
    result = SceneResult(scene=name)
    skips = SkipCounter()
    space_unlabelled = 0 if dataset.label_space.startswith("nyu40") else 255
    t = time.perf_counter()
    channels = teacher.channels if teacher is not None else 0
    features = point_labels = columns = finite_index = feature_range = None
    if teacher is not None:
        scene = dataset.load_scene(name)
        t = timer.add("read", t)
        points = np.asarray(scene.points, np.float32)
        finite = np.isfinite(points).all(axis=1)
        if not finite.any():
            raise ExtractionError(f"scene {name}: no finite points in {points.shape[0]}")
        if not finite.all():
            skips.counts["non-finite points"] = int((~finite).sum())
        features = np.zeros((points.shape[0], channels), np.float16)
        features[finite] = point_features(teacher, scene, points, finite).astype(np.float16)
        if not np.isfinite(features[finite]).all():
            raise ExtractionError(f"scene {name}: the teacher produced NaN/Inf features (float16 overflow?)")
        if writer.manifest.encoding.features == "uint8":  # the range of every feature a frame can take
            valid = features[finite]
            feature_range = (valid.min(axis=0), valid.max(axis=0))
        # only finite points are projected; their indices map back to the scene's point array (order kept,
        # so z-buffer ties still go to the lower original index)
        finite_index = np.flatnonzero(finite)
        columns = PointColumns.of(points[finite_index])
        point_labels = np.asarray(scene.labels, np.uint8)
        t = timer.add("teacher", t)

    scene_writer = None
    for frame in dataset.frames(name, cfg.frame_skip, skips):
        t = timer.add("read", t)
        if not np.isfinite(frame.pose).all():
            skips.add("non-finite pose", f"{name}:{frame.frame_id}")
            continue
        image, labels, k = prepare_frame(frame, cfg.image_size, name, space_unlabelled)
        h, w = labels.shape
        if teacher is not None:
            depth = frame.depth if cfg.projection.depth_check else None
            proj = project_points(columns, frame.pose, k, h, w, cfg.projection, depth=depth,
                                  depth_intrinsics=frame.depth_intrinsics)
            cells, pidx, z = proj.cells, finite_index[proj.point_index], proj.depth
            feats, plabels = features[pidx], point_labels[pidx]
        else:
            cells, pidx, z = np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.float32)
            feats, plabels = np.zeros((0, 0), np.float16), np.zeros(0, np.uint8)
        t = timer.add("projection", t)
        data = encode_image(image, cfg.image_format, cfg.jpeg_quality)
        t = timer.add("encode", t)
        if scene_writer is None:
            scene_writer = writer.begin_scene(name, height=h, width=w, feature_range=feature_range)
        scene_writer.add(CachedFrame(frame_id=int(frame.frame_id), image=data, image_size=(h, w), labels=labels,
                                     intrinsics=k, pose=np.asarray(frame.pose, np.float64), cells=cells,
                                     features=feats, point_index=pidx.astype(np.int32), point_labels=plabels,
                                     depth=z.astype(np.float16)))
        result.frames += 1
        result.cells += int(cells.shape[0])
        result.grid_cells += scene_writer.grid[0] * scene_writer.grid[1]
        t = timer.add("write", t)
        if on_frame is not None:
            on_frame(1)
    result.skips = dict(skips.counts)
    if scene_writer is None:
        raise ExtractionError(f"scene {name}: no valid frames (skipped: {skips.counts or 'none read'})")
    scene_writer.commit({"skips": dict(skips.counts), "seconds": timer.seconds,
                         "input_fingerprint": _scene_fingerprint(dataset, name)})
    timer.add("write", t)
    result.seconds = timer.seconds
    return result


def _scene_fingerprint(dataset: DatasetReader, name: str) -> str:
    from .formats.common import fingerprint_files

    root = getattr(dataset, "root", None)
    files = dataset.scene_input_files(name)
    return fingerprint_files(root, files) if root is not None and files else ""
