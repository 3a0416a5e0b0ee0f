"""Writing a cache: the root manifest, one scene group per writer, the completion marker last.

Zarr loses data when two writers touch one chunk, so each scene lives in its own group written by exactly one
SceneWriter; the root attributes are written only by the process that owns the cache (create and finalize).
A scene group without ``complete: true`` in its attributes is incomplete: readers refuse it, and a rerun of
the extraction deletes and rewrites it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from .errors import CacheError, FingerprintMismatchError
from .feature_codec import DEFAULT_FEATURE_DTYPE, FeatureQuantizer
from .layout import SCENES_GROUP, ArraySpec, frame_arrays, grid_shape, stream_arrays
from .manifest import GlobalStats, Manifest, validate_scene_name
from .moments import Moments, merge_all
from .records import CachedFrame
from .store import open_root


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} != {vb!r}")
    return out


def manifest_differences(a: Manifest, b: Manifest) -> list[str]:
    """Human-readable differences between two manifests (ignoring statistics and producer)."""
    da, db = a.to_json(), b.to_json()
    for d in (da, db):
        for k in ("stats", "producer", "fingerprint", "params_fingerprint"):
            d.pop(k, None)
        d["encoding"].setdefault("features", DEFAULT_FEATURE_DTYPE)  # omitted from the JSON when the default
    return _diff_keys(da, db)


class _Stream:
    """One growing array, appended in whole chunks (a partial chunk is flushed once, at the end)."""

    def __init__(self, group: zarr.Group, spec: ArraySpec):
        self.spec = spec
        self.array = group.create_array(spec.name, shape=(0, *spec.row_shape), dtype=spec.dtype,
                                        chunks=(spec.rows_per_chunk, *spec.row_shape),
                                        compressors=spec.compressors(), fill_value=0)
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.rows = 0
        self.sha = hashlib.sha256()

    def add(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.spec.dtype)
        if rows.ndim != 1 + len(self.spec.row_shape):  # -1 is ambiguous for zero-width rows (2D-only caches)
            rows = rows.reshape(-1, *self.spec.row_shape)
        self.sha.update(rows.tobytes())
        self.pending.append(rows)
        self.pending_rows += rows.shape[0]
        self.rows += rows.shape[0]
        if self.pending_rows >= self.spec.rows_per_chunk:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.pending_rows:
            return
        data = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        n = data.shape[0] if final else (data.shape[0] // self.spec.rows_per_chunk) * self.spec.rows_per_chunk
        if n:
            self.array.append(data[:n], axis=0)
        rest = data[n:]
        self.pending = [rest] if rest.shape[0] else []
        self.pending_rows = rest.shape[0]

    def close(self) -> str:
        self._flush(final=True)
        return self.sha.hexdigest()


@dataclass
class SceneSummary:
    name: str
    frames: int
    cells: int
    moments: Moments
    grid_cells: int  # frames x grid cells: the denominator of coverage
    checksums: dict[str, str]


class SceneWriter:
    """Writes one scene group. Use as a context manager; `commit()` writes the completion marker last.

    With a `quantizer` (the manifest's `encoding.features` is uint8; CacheWriter.begin_scene makes it from the scene's
    feature range) the features are stored as its affine uint8 code; the moments are still those of the unquantized
    (float16) features.
    """

    def __init__(self, group: zarr.Group, name: str, *, height: int, width: int, channels: int, stride: int,
                 attrs: dict | None = None, quantizer: FeatureQuantizer | None = None):
        self.group, self.name = group, name
        self.height, self.width, self.channels, self.stride = height, width, channels, stride
        self.grid = grid_shape(height, width, stride)
        self.extra_attrs = dict(attrs or {})
        self.quantizer = quantizer
        stored = DEFAULT_FEATURE_DTYPE if quantizer is None else "uint8"
        self.streams = {s.name: _Stream(group, s) for s in stream_arrays(height, width, channels, stored)}
        self.frame_ids: list[int] = []
        self.poses: list[np.ndarray] = []
        self.intrinsics: list[np.ndarray] = []
        self.image_offsets = [0]
        self.cell_offsets = [0]
        self.moments = Moments.empty(channels)
        self.committed = False

    def add(self, f: CachedFrame) -> None:
        where = f"scene {self.name}, frame {f.frame_id}"
        if tuple(f.image_size) != (self.height, self.width) or f.labels.shape != (self.height, self.width):
            raise CacheError(f"{where}: image/labels size {f.image_size}/{f.labels.shape} != scene size "
                             f"{(self.height, self.width)}")
        n = f.cells.shape[0]
        if f.features.shape != (n, self.channels):
            raise CacheError(f"{where}: features shape {f.features.shape} != ({n}, {self.channels})")
        for k in ("point_index", "point_labels", "depth"):
            if getattr(f, k).shape != (n,):
                raise CacheError(f"{where}: {k} has shape {getattr(f, k).shape}, expected ({n},)")
        if n and (np.any(np.diff(f.cells.astype(np.int64)) <= 0) or f.cells[0] < 0
                  or f.cells[-1] >= self.grid[0] * self.grid[1]):
            raise CacheError(f"{where}: cell indices must be strictly increasing within the {self.grid} grid")
        feats = np.asarray(f.features, dtype=np.float16)
        if n and not np.isfinite(feats).all():
            raise CacheError(f"{where}: {int((~np.isfinite(feats)).any(axis=1).sum())} feature rows are NaN/Inf"
                             " (in float16): refusing to cache them")
        for m, name in ((f.pose, "pose"), (f.intrinsics, "intrinsics")):
            if not np.isfinite(m).all():
                raise CacheError(f"{where}: non-finite {name}")
        img = np.frombuffer(f.image, dtype=np.uint8)
        self.streams["image_data"].add(img)
        self.streams["labels"].add(f.labels[None])
        self.streams["cells"].add(f.cells)
        self.streams["features"].add(feats if self.quantizer is None else self.quantizer.quantize(feats, where))
        self.streams["point_index"].add(f.point_index)
        self.streams["point_labels"].add(f.point_labels)
        self.streams["depth"].add(f.depth)
        self.moments = self.moments.merge(Moments.of(feats))  # of the unquantized features, whatever is stored
        self.frame_ids.append(int(f.frame_id))
        self.poses.append(np.asarray(f.pose, np.float64))
        self.intrinsics.append(np.asarray(f.intrinsics, np.float64))
        self.image_offsets.append(self.image_offsets[-1] + img.shape[0])
        self.cell_offsets.append(self.cell_offsets[-1] + n)

    def commit(self, extra_attrs: dict | None = None) -> SceneSummary:
        """Flush everything, then write the attributes with the completion marker: the last write of a scene."""
        if not self.frame_ids:
            raise CacheError(f"scene {self.name}: no valid frames; the scene is left incomplete")
        checksums = {name: s.close() for name, s in self.streams.items()}
        f = len(self.frame_ids)
        small = {
            "frame_id": np.asarray(self.frame_ids, np.int64),
            "pose": np.stack(self.poses),
            "intrinsics": np.stack(self.intrinsics),
            "image_size": np.tile(np.asarray([[self.height, self.width]], np.int32), (f, 1)),
            "image_offsets": np.asarray(self.image_offsets, np.int64),
            "cell_offsets": np.asarray(self.cell_offsets, np.int64),
        }
        for spec in frame_arrays():
            data = small[spec.name]
            arr = self.group.create_array(spec.name, shape=data.shape, dtype=spec.dtype,
                                          chunks=(min(spec.rows_per_chunk, data.shape[0]), *spec.row_shape),
                                          compressors=spec.compressors(), fill_value=0)
            arr[...] = data
            checksums[spec.name] = hashlib.sha256(np.ascontiguousarray(data, dtype=spec.dtype).tobytes()).hexdigest()
        summary = SceneSummary(self.name, f, self.cell_offsets[-1], self.moments,
                               f * self.grid[0] * self.grid[1], checksums)
        attrs = dict(self.group.attrs)
        attrs.update(self.extra_attrs)
        attrs.update(extra_attrs or {})
        attrs.update({
            "scene": self.name, "frames": f, "cells": summary.cells, "image_size": [self.height, self.width],
            "grid_shape": list(self.grid), "channels": self.channels, "moments": self.moments.to_json(),
            "checksums": checksums, "checksum_algorithm": "sha256 of each array's uncompressed C-order bytes",
            **(self.quantizer.to_attrs() if self.quantizer is not None else {}),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "complete": True,
        })
        self.group.attrs.put(attrs)  # the completion marker: written last, in one metadata write
        self.committed = True
        return summary


class CacheWriter:
    """Owns a cache's root: creates it (or reopens one with the same fingerprint) and hands out scene writers."""

    def __init__(self, root: zarr.Group, manifest: Manifest, url: str):
        self.root, self.manifest, self.url = root, manifest, url

    @classmethod
    def create(cls, url: str | Path, manifest: Manifest) -> CacheWriter:
        """Create a cache, or reopen an existing one made with the same fingerprint (to resume)."""
        from .reader import read_manifest

        path = Path(str(url).removeprefix("file://"))
        if (path / "zarr.json").exists():
            root = open_root(path, mode="r+")
            existing = read_manifest(root, str(path))
            if existing.fingerprint() != manifest.fingerprint():
                diff = "; ".join(manifest_differences(existing, manifest)) or "scene inputs differ"
                raise FingerprintMismatchError(
                    f"{path} holds a cache with fingerprint {existing.fingerprint()[:12]}, this run would make "
                    f"{manifest.fingerprint()[:12]} ({diff}); use another --out or delete it")
            return cls(root, existing, str(path))
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        root.attrs.put(manifest.to_json())
        root.create_group(SCENES_GROUP)
        return cls(root, manifest, str(path))

    def scene_status(self, name: str) -> str:
        """'complete', 'incomplete' (a group without the marker) or 'missing'."""
        from .reader import scene_group_status

        return scene_group_status(self.root, name)

    def begin_scene(self, name: str, *, height: int, width: int, attrs: dict | None = None,
                    feature_range: tuple[np.ndarray, np.ndarray] | None = None) -> SceneWriter:
        """Start (or restart) a scene: an existing incomplete group is deleted first; a complete one is refused.

        `feature_range`: per-channel (min, max) over every feature the scene will write (the teacher's whole
        per-point feature matrix); required when the manifest's `encoding.features` is uint8, unused otherwise.
        """
        validate_scene_name(name)
        quantizer = None
        if self.manifest.encoding.features == "uint8":
            if not self.manifest.channels:  # a 2D-only cache: nothing to quantize
                quantizer = FeatureQuantizer.from_range(np.zeros(0), np.zeros(0))
            elif feature_range is None:
                raise CacheError(f"scene {name}: the cache stores uint8 features: begin_scene needs the scene's "
                                 "per-channel feature_range=(min, max)")
            else:
                quantizer = FeatureQuantizer.from_range(*feature_range, where=f"scene {name}")
                if quantizer.channels != self.manifest.channels:
                    raise CacheError(f"scene {name}: feature_range has {quantizer.channels} channels, the cache "
                                     f"{self.manifest.channels}")
        if name not in self.manifest.dataset.scenes:
            raise CacheError(f"scene {name} is not in this cache's scene list")
        status = self.scene_status(name)
        scenes = self.root[SCENES_GROUP]
        if status == "complete":
            raise CacheError(f"scene {name} is already complete in {self.url}")
        if status == "incomplete":
            del scenes[name]
        group = scenes.create_group(name)
        group.attrs.put({"scene": name, "complete": False, "writer": {"host": socket.gethostname(),
                                                                        "pid": os.getpid(), "started": time.time()}})
        return SceneWriter(group, name, height=height, width=width, channels=self.manifest.channels,
                           stride=self.manifest.projection.stride, attrs=attrs, quantizer=quantizer)

    def finalize_stats(self) -> GlobalStats | None:
        """Merge the per-scene moments of every complete scene into the root's global statistics."""
        from .reader import CacheReader

        reader = CacheReader(self.root, self.manifest, self.url)
        if not self.manifest.channels:
            return None
        moments = merge_all((reader.scene_moments(s) for s in reader.complete_scenes()), self.manifest.channels)
        stats = GlobalStats.from_moments(moments) if moments.count else None
        self.manifest.stats = stats
        attrs = dict(self.root.attrs)
        attrs["stats"] = None if stats is None else {"count": stats.count, "mean": stats.mean, "var": stats.var}
        self.root.attrs.put(attrs)
        return stats
