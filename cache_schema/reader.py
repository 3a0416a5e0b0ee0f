"""Reading a cache: read-only, by path or URL; incomplete scenes are never read as data."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import CacheError, FingerprintMismatchError, IncompleteSceneError, ManifestError
from .feature_codec import DEFAULT_FEATURE_DTYPE, FeatureQuantizer
from .layout import SCENES_GROUP, grid_shape
from .manifest import Manifest, validate_scene_name
from .moments import Moments
from .records import CachedFrame, FrameBlock
from .store import open_root


def read_manifest(root: zarr.Group, url: str) -> Manifest:
    try:
        attrs = dict(root.attrs)
    except Exception as e:  # malformed zarr.json
        raise ManifestError(f"{url}: cannot read the root attributes: {e}") from e
    try:
        return Manifest.from_json(attrs)
    except ManifestError as e:
        raise type(e)(f"{url}: {e}") from e


def _scene_attrs(root: zarr.Group, name: str) -> dict | None:
    try:
        node = root[f"{SCENES_GROUP}/{name}"]
    except (KeyError, FileNotFoundError):
        return None
    except Exception:  # a zarr.json cut short by a kill: the scene was never finished
        return {"complete": False}
    try:
        return dict(node.attrs)
    except Exception:
        return {"complete": False}


def scene_group_status(root: zarr.Group, name: str) -> str:
    attrs = _scene_attrs(root, name)
    if attrs is None:
        return "missing"
    return "complete" if attrs.get("complete") is True else "incomplete"


class SceneReader:
    """One complete scene. Per-frame metadata and offsets are loaded once; data is read by contiguous slices.

    Features come out as float16 whatever the cache stores (`feature_dtype`, the manifest's `encoding.features`):
    uint8 codes are dequantized with the scene's `feature_scale` / `feature_offset` (`decode_features`).
    """

    def __init__(self, group: zarr.Group, name: str, channels: int, stride: int,
                 feature_dtype: str = DEFAULT_FEATURE_DTYPE):
        self.group, self.name, self.channels, self.stride = group, name, channels, stride
        self.feature_dtype = feature_dtype
        attrs = dict(group.attrs)
        self.attrs = attrs
        self.quantizer = FeatureQuantizer.from_attrs(attrs, channels, f"scene {name}") \
            if feature_dtype == "uint8" else None
        self.num_frames = int(attrs["frames"])
        self.image_height, self.image_width = (int(v) for v in attrs["image_size"])
        self.grid_shape = grid_shape(self.image_height, self.image_width, stride)
        self.frame_id = group["frame_id"][:]
        self.pose = group["pose"][:]
        self.intrinsics = group["intrinsics"][:]
        self.image_size = group["image_size"][:]
        self.image_offsets = group["image_offsets"][:]
        self.cell_offsets = group["cell_offsets"][:]
        self._check_offsets()
        stored = np.dtype(self.arrays["features"].dtype)
        if stored != np.dtype(self.feature_dtype):
            raise CacheError(f"scene {self.name}: features are stored as {stored}, the manifest says "
                             f"{self.feature_dtype}")

    def _check_offsets(self) -> None:
        f = self.num_frames
        for name, off in (("image_offsets", self.image_offsets), ("cell_offsets", self.cell_offsets)):
            if off.shape != (f + 1,) or off[0] != 0 or np.any(np.diff(off) < 0):
                raise CacheError(f"scene {self.name}: {name} malformed (shape {off.shape}, frames {f})")
        # self.arrays opens each array's metadata once; read_block reuses the same handles (one fetch remotely)
        n_image, n_cells = self.arrays["image_data"].shape[0], self.arrays["cells"].shape[0]
        if self.image_offsets[-1] != n_image:
            raise CacheError(f"scene {self.name}: image_offsets end {self.image_offsets[-1]} != image_data "
                             f"length {n_image}")
        if self.cell_offsets[-1] != n_cells:
            raise CacheError(f"scene {self.name}: cell_offsets end {self.cell_offsets[-1]} != cells length {n_cells}")

    @property
    def num_cells(self) -> int:
        return int(self.cell_offsets[-1])

    @cached_property
    def arrays(self) -> dict[str, zarr.Array]:
        return {k: self.group[k] for k in ("image_data", "labels", "cells", "features", "point_index",
                                           "point_labels", "depth")}

    def moments(self) -> Moments:
        return Moments.from_json(self.attrs["moments"])

    def decode_features(self, stored: np.ndarray) -> np.ndarray:
        """Rows of the stored `features` array as float16 (uint8 codes dequantized in float32, then cast)."""
        return stored if self.quantizer is None else self.quantizer.dequantize(stored)

    def read_block(self, start: int, stop: int) -> FrameBlock:
        """Frames [start, stop) with one store call per array (7 calls for any block size)."""
        if not 0 <= start < stop <= self.num_frames:
            raise IndexError(f"scene {self.name}: frames [{start}, {stop}) out of range 0..{self.num_frames}")
        a = self.arrays
        i0, i1 = int(self.image_offsets[start]), int(self.image_offsets[stop])
        c0, c1 = int(self.cell_offsets[start]), int(self.cell_offsets[stop])
        return FrameBlock(
            scene=self.name, start=start, stop=stop, frame_id=self.frame_id[start:stop],
            image_size=self.image_size[start:stop], intrinsics=self.intrinsics[start:stop],
            pose=self.pose[start:stop], image_offsets=self.image_offsets[start:stop + 1] - i0,
            image_data=a["image_data"][i0:i1], labels=a["labels"][start:stop],
            cell_offsets=self.cell_offsets[start:stop + 1] - c0, cells=a["cells"][c0:c1],
            features=self.decode_features(a["features"][c0:c1]), point_index=a["point_index"][c0:c1],
            point_labels=a["point_labels"][c0:c1], depth=a["depth"][c0:c1])

    def read_frame(self, index: int) -> CachedFrame:
        if not 0 <= index < self.num_frames:
            raise IndexError(f"scene {self.name}: frame {index} out of range (0..{self.num_frames - 1})")
        return self.read_block(index, index + 1).frame(0)


class CacheReader:
    """A cache opened for reading. Never writes to the store."""

    def __init__(self, root: zarr.Group, manifest: Manifest, url: str):
        self.root, self.manifest, self.url = root, manifest, url
        self._status: dict[str, str] = {}

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint()

    def scene_status(self, name: str) -> str:
        if name not in self._status:
            self._status[name] = scene_group_status(self.root, name)
        return self._status[name]

    def complete_scenes(self) -> list[str]:
        return [s for s in self.manifest.dataset.scenes if self.scene_status(s) == "complete"]

    def incomplete_scenes(self) -> list[str]:
        """Scenes of the manifest's list that are not complete (written partly, or not at all)."""
        return [s for s in self.manifest.dataset.scenes if self.scene_status(s) != "complete"]

    def scene(self, name: str) -> SceneReader:
        validate_scene_name(name)
        if name not in self.manifest.dataset.scenes:
            n = len(self.manifest.dataset.scenes)
            raise CacheError(f"{self.url}: no scene {name!r} in this cache (it has {n})")
        status = self.scene_status(name)
        if status != "complete":
            raise IncompleteSceneError(f"{self.url}: scene {name} is {status} (no completion marker); "
                                       "rerun the extraction to finish it")
        return SceneReader(self.root[f"{SCENES_GROUP}/{name}"], name, self.manifest.channels,
                           self.manifest.projection.stride, self.manifest.encoding.features)

    def scene_moments(self, name: str) -> Moments:
        attrs = _scene_attrs(self.root, name)
        if not attrs or attrs.get("complete") is not True:
            raise IncompleteSceneError(f"{self.url}: scene {name} is not complete")
        return Moments.from_json(attrs["moments"])

    def global_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, var) float64 per channel; a cache without statistics (not finalized) is an error."""
        s = self.manifest.stats
        if s is None:
            raise CacheError(f"{self.url}: no global statistics (run `distill-cache stats {self.url}`)")
        return np.asarray(s.mean, np.float64), np.asarray(s.var, np.float64)


def open_cache(url: str | Path, *, expect_fingerprint: str | None = None,
               storage_options: dict[str, Any] | None = None) -> CacheReader:
    """Open a cache read-only by path, file://, http(s):// or s3:// URL."""
    try:
        root = open_root(url, mode="r", storage_options=storage_options)
    except FileNotFoundError as e:
        raise CacheError(f"no cache at {url}: {e}") from e
    manifest = read_manifest(root, str(url))
    if expect_fingerprint is not None and manifest.fingerprint() != expect_fingerprint:
        raise FingerprintMismatchError(f"{url}: fingerprint {manifest.fingerprint()} != expected {expect_fingerprint}")
    return CacheReader(root, manifest, str(url))
