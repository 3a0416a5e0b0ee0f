"""Integrity checks of a cache: markers, versions, array layout, offsets, cells, checksums, NaN/Inf, statistics.

Every problem is reported with the scene and, where it can be located, the frame (an index within the scene);
`verify_cache` never raises for a damaged cache, it describes it. Reading is done in windows of whole chunks so a
chunk that does not decode (truncated, corrupted) is pinned to the frames it holds while the rest is still checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import CacheError, ManifestError, SchemaVersionError
from .feature_codec import FeatureQuantizer
from .layout import SCENES_GROUP, ArraySpec, frame_arrays, grid_shape, stream_arrays
from .manifest import Manifest, validate_scene_name
from .moments import Moments, merge_all

# Recomputed moments differ from the recorded ones only by float64 summation order (float16 features); for uint8
# features the recorded moments are those of the unquantized features, so the moments recomputed from the
# dequantized ones may differ by the quantization error besides (see _compare_moments).
STATS_RTOL = 1e-6
STATS_ATOL = 1e-8
CHUNKS_PER_READ = 8  # one zarr call per window of chunks: zarr fetches a window's chunks concurrently
REQUIRED_ATTRS = ("frames", "cells", "image_size", "grid_shape", "channels", "moments", "checksums")


@dataclass
class Problem:
    scene: str | None  # None: the cache as a whole (manifest, global statistics)
    frame: int | None  # frame index within the scene, where the problem can be located
    kind: str  # manifest | schema_version | missing_scene | incomplete_scene | attrs | array_meta | array_shape |
    # offsets | unreadable | checksum | cells | nonfinite | scene_stats | global_stats
    message: str

    def __str__(self) -> str:
        where = "cache" if self.scene is None else f"scene {self.scene}"
        if self.frame is not None:
            where += f", frame {self.frame}"
        return f"{where}: [{self.kind}] {self.message}"


@dataclass
class VerifyReport:
    url: str
    quick: bool
    scenes_checked: int = 0
    frames_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "ok": self.ok, "quick": self.quick, "scenes_checked": self.scenes_checked,
                "frames_checked": self.frames_checked, "problems": [asdict(p) for p in self.problems]}


def verify_cache(url: str | Path, *, quick: bool = False, scenes: list[str] | None = None,
                 storage_options: dict[str, Any] | None = None,
                 on_scene: Callable[[str], None] | None = None) -> VerifyReport:
    """Check a cache read-only. `quick` skips everything that needs a full read (checksums, cells, NaN/Inf,
    recomputed moments); `scenes` restricts the per-scene checks (the global statistics are always checked)."""
    from .reader import open_cache

    report = VerifyReport(str(url), quick)
    try:
        reader = open_cache(url, storage_options=storage_options)
    except SchemaVersionError as e:
        report.problems.append(Problem(None, None, "schema_version", str(e)))
        return report
    except ManifestError as e:
        report.problems.append(Problem(None, None, "manifest", str(e)))
        return report
    except CacheError as e:
        report.problems.append(Problem(None, None, "manifest", str(e)))
        return report
    manifest = reader.manifest
    names = list(manifest.dataset.scenes)
    if scenes is not None:
        unknown = [s for s in scenes if s not in names]
        for s in unknown:
            report.problems.append(Problem(s, None, "missing_scene", "not in the manifest's scene list"))
        names = [s for s in names if s in scenes]
    for name in names:
        status = reader.scene_status(name)
        if status == "missing":
            report.problems.append(Problem(name, None, "missing_scene", "listed in the manifest, no scene group"))
        elif status == "incomplete":
            report.problems.append(Problem(name, None, "incomplete_scene", "no completion marker (complete: true)"))
        else:
            group = reader.root[f"{SCENES_GROUP}/{name}"]
            probs, frames = check_scene_group(group, name, manifest, quick=quick)
            report.problems += probs
            report.scenes_checked += 1
            report.frames_checked += frames
        if on_scene is not None:
            on_scene(name)
    report.problems += check_global_stats(reader)
    return report


def check_global_stats(reader) -> list[Problem]:
    """Root statistics == the merge of the complete scenes' recorded moments."""
    manifest = reader.manifest
    if not manifest.channels:
        return []
    parts = []
    for s in reader.complete_scenes():
        try:
            parts.append(reader.scene_moments(s))
        except (KeyError, TypeError, ValueError):
            return [Problem(s, None, "attrs", "moments missing or malformed: global statistics not checked")]
    merged = merge_all(parts, manifest.channels)
    stats = manifest.stats
    if stats is None:
        return [Problem(None, None, "global_stats", "no global statistics (run `distill-cache stats`)")] \
            if merged.count else []
    probs = []
    if stats.count != merged.count:
        probs.append(Problem(None, None, "global_stats", f"root stats count {stats.count} != {merged.count}, the "
                                                         "merge of the complete scenes' moments"))
    for key, got, want in (("mean", stats.mean, merged.mean), ("var", stats.var, merged.var)):
        got = np.asarray(got, np.float64)
        if got.shape != want.shape or not np.allclose(got, want, rtol=STATS_RTOL, atol=STATS_ATOL):
            probs.append(Problem(None, None, "global_stats", f"root stats {key} differs from the merge of the "
                                                             f"scenes' moments (max |diff| {_maxdiff(got, want)})"))
    return probs


def check_scene_group(group: zarr.Group, name: str, manifest: Manifest, *, quick: bool = False
                      ) -> tuple[list[Problem], int]:
    """All checks of one scene group (its completion marker is the caller's business). Returns (problems, frames)."""
    validate_scene_name(name)
    probs: list[Problem] = []

    def problem(kind: str, message: str, frame: int | None = None) -> None:
        probs.append(Problem(name, frame, kind, message))

    try:
        attrs = dict(group.attrs)
    except Exception as e:
        problem("attrs", f"scene attributes unreadable: {e}")
        return probs, 0
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        problem("attrs", f"missing attributes {missing}")
        return probs, 0
    try:
        frames, cells = int(attrs["frames"]), int(attrs["cells"])
        height, width = (int(v) for v in attrs["image_size"])
        channels = int(attrs["channels"])
        recorded = Moments.from_json(attrs["moments"])
        checksums = dict(attrs["checksums"])
    except (TypeError, ValueError, KeyError) as e:
        problem("attrs", f"malformed attributes: {e!r}")
        return probs, 0
    stride = manifest.projection.stride
    grid = grid_shape(height, width, stride)
    if attrs.get("scene", name) != name:
        problem("attrs", f"attribute scene={attrs.get('scene')!r} does not match the group name")
    if channels != manifest.channels:
        problem("attrs", f"channels {channels} != manifest teacher channels {manifest.channels}")
    if list(attrs["grid_shape"]) != list(grid):
        problem("attrs", f"grid_shape {attrs['grid_shape']} != ceil(image_size / stride {stride}) = {list(grid)}")
    feature_dtype = manifest.encoding.features
    quantizer: FeatureQuantizer | None = None
    features_decodable = True
    if feature_dtype == "uint8":
        try:
            quantizer = FeatureQuantizer.from_attrs(attrs, manifest.channels, "scene attributes")
        except CacheError as e:
            problem("attrs", str(e))
            features_decodable = False

    streams = stream_arrays(height, width, manifest.channels, feature_dtype)
    specs = {s.name: s for s in frame_arrays() + streams}
    arrays: dict[str, zarr.Array] = {}
    for spec in specs.values():
        try:
            arr = group[spec.name]
        except Exception as e:
            problem("array_meta", f"array {spec.name} missing or unreadable: {e}")
            continue
        if not isinstance(arr, zarr.Array) or np.dtype(arr.dtype) != np.dtype(spec.dtype):
            problem("array_meta", f"array {spec.name}: dtype {getattr(arr, 'dtype', None)} != {spec.dtype}")
            continue
        if tuple(arr.shape[1:]) != spec.row_shape:
            problem("array_shape", f"array {spec.name}: row shape {tuple(arr.shape[1:])} != {spec.row_shape}")
            continue
        arrays[spec.name] = arr
        if spec.name not in checksums:
            problem("attrs", f"no checksum recorded for array {spec.name}")
    if len(arrays) != len(specs):
        return probs, frames

    expected_rows = {"frame_id": frames, "pose": frames, "intrinsics": frames, "image_size": frames,
                     "image_offsets": frames + 1, "cell_offsets": frames + 1, "labels": frames, "cells": cells,
                     "features": cells, "point_index": cells, "point_labels": cells, "depth": cells}
    for k, n in expected_rows.items():
        if arrays[k].shape[0] != n:
            problem("array_shape", f"array {k} has {arrays[k].shape[0]} rows, the attributes say {n}")

    # The per-frame arrays are small: read them whole (each is one chunk for scenes up to 4096 frames).
    small: dict[str, np.ndarray] = {}
    for spec in frame_arrays():
        try:
            small[spec.name] = arrays[spec.name][...]
        except Exception as e:
            problem("unreadable", f"array {spec.name} does not decode: {e}")
    if len(small) != len(frame_arrays()):
        return probs, frames
    offsets_ok = _check_offsets(small, arrays, frames, cells, problem)
    sizes = small["image_size"]
    if sizes.shape == (frames, 2):
        for f in np.flatnonzero((sizes != np.array([height, width])).any(axis=1))[:20]:
            problem("attrs", f"image_size {sizes[f].tolist()} != scene image_size {[height, width]}", int(f))
    for k in ("pose", "intrinsics"):
        bad = np.flatnonzero(~np.isfinite(small[k].reshape(small[k].shape[0], -1)).all(axis=1))
        for f in bad[:20]:
            problem("nonfinite", f"{k} has NaN/Inf", int(f))
    if quick:
        return probs, frames

    for spec in frame_arrays():
        digest = hashlib.sha256(np.ascontiguousarray(small[spec.name], dtype=spec.dtype).tobytes()).hexdigest()
        if spec.name in checksums and digest != checksums[spec.name]:
            problem("checksum", f"array {spec.name}: sha256 {digest[:12]} != recorded {str(checksums[spec.name])[:12]}")

    row_offsets = {"image_data": small["image_offsets"], "labels": None, "cells": small["cell_offsets"],
                   "features": small["cell_offsets"], "point_index": small["cell_offsets"],
                   "point_labels": small["cell_offsets"], "depth": small["cell_offsets"]}
    moments = Moments.empty(manifest.channels)
    cell_parts: list[np.ndarray] = []
    for spec in streams:
        sha, readable = hashlib.sha256(), True
        offs = row_offsets[spec.name] if offsets_ok else None
        for r0, data, err in _read_windows(arrays[spec.name], spec):
            if err is not None:
                readable = False
                lo, hi = _frames_of_rows(offs, r0, r0 + spec.rows_per_chunk, frames, spec.name == "labels")
                span = "" if lo is None else f" (frames {lo}..{hi})"
                problem("unreadable", f"array {spec.name}: chunk at row {r0} does not decode{span}: {err}", lo)
                continue
            sha.update(np.ascontiguousarray(data, dtype=spec.dtype).tobytes())
            if spec.name == "cells":
                cell_parts.append(data)
            elif spec.name == "features" and data.shape[0] and features_decodable:
                if quantizer is not None:  # moments and NaN/Inf of what readers hand out
                    data = quantizer.dequantize(data)
                bad = ~np.isfinite(data).all(axis=1)
                if bad.any():
                    rows = r0 + np.flatnonzero(bad)
                    for f in _frames_of(offs, rows)[:20]:
                        problem("nonfinite", "features have NaN/Inf", f)
                moments = moments.merge(Moments.of(data[~bad]))
        if readable and spec.name in checksums and sha.hexdigest() != checksums[spec.name]:
            problem("checksum", f"array {spec.name}: sha256 {sha.hexdigest()[:12]} != recorded "
                                f"{str(checksums[spec.name])[:12]} (stored bytes changed since writing)")
        if readable and spec.name == "cells" and offsets_ok:
            all_cells = np.concatenate(cell_parts) if cell_parts else np.zeros(0, np.int32)
            _check_cells(all_cells, small["cell_offsets"], grid, problem)
        if spec.name == "features" and readable and features_decodable:
            _compare_moments(moments, recorded, problem, quantizer)
    return probs, frames


def _check_offsets(small: dict[str, np.ndarray], arrays: dict[str, zarr.Array], frames: int, cells: int,
                   problem: Callable[..., None]) -> bool:
    ok = True
    for k, end, what in (("image_offsets", arrays["image_data"].shape[0], "image_data length"),
                         ("cell_offsets", cells, "cells attribute")):
        off = small[k]
        if off.shape != (frames + 1,):
            problem("offsets", f"{k} has shape {off.shape}, expected ({frames + 1},)")
            ok = False
            continue
        if off[0] != 0:
            problem("offsets", f"{k}[0] = {off[0]} != 0", 0)
            ok = False
        for f in np.flatnonzero(np.diff(off) < 0)[:20]:
            problem("offsets", f"{k} decreases ({off[f]} -> {off[f + 1]})", int(f))
            ok = False
        if off[-1] != end:
            problem("offsets", f"{k} ends at {off[-1]} != {what} {end}")
            ok = False
        if (off < 0).any() or (off > end).any():
            bad = np.flatnonzero((off[:-1] < 0) | (off[:-1] > end))
            problem("offsets", f"{k} out of bounds 0..{end}", int(bad[0]) if bad.size else None)
            ok = False
    if ok and arrays["cells"].shape[0] != cells:
        ok = False  # already reported as array_shape; frame mapping of cell rows would be wrong
    return ok


def _check_cells(cells: np.ndarray, offsets: np.ndarray, grid: tuple[int, int], problem: Callable[..., None]) -> None:
    """Cell indices within the grid and strictly increasing within each frame."""
    if not cells.size:
        return
    frame_of = np.searchsorted(offsets, np.arange(cells.size), side="right") - 1
    out = np.flatnonzero((cells < 0) | (cells >= grid[0] * grid[1]))
    for f in np.unique(frame_of[out])[:20]:
        problem("cells", f"cell index outside the {grid[0]}x{grid[1]} grid", int(f))
    c = cells.astype(np.int64)
    same_frame = frame_of[1:] == frame_of[:-1]
    bad = np.flatnonzero(same_frame & (np.diff(c) <= 0))
    for f in np.unique(frame_of[bad])[:20]:
        problem("cells", "cell indices not strictly increasing", int(f))


def _compare_moments(got: Moments, recorded: Moments, problem: Callable[..., None],
                     quantizer: FeatureQuantizer | None = None) -> None:
    """Recorded vs recomputed moments. For uint8 features `got` is of the dequantized values and `recorded` of the
    unquantized ones: with e the per-value error bound (FeatureQuantizer.error_bound, ~scale/2), |Δmean| <= e, and
    since the standard deviation is a norm of the centred values, |Δstd| <= rms(error) <= e, so
    |Δvar| <= e·(2·std + e). Those bounds are added to the summation-order tolerance."""
    if got.count != recorded.count:
        problem("scene_stats", f"moments count {recorded.count} recorded, {got.count} finite feature rows stored")
        return
    if got.mean.shape != recorded.mean.shape or got.m2.shape != recorded.m2.shape:
        problem("scene_stats", f"recorded moments have shape {recorded.mean.shape}, the features {got.mean.shape}")
        return
    extra = {"mean": 0.0, "var": 0.0}
    if quantizer is not None and quantizer.channels == got.mean.shape[0]:
        e = quantizer.error_bound()
        extra = {"mean": e, "var": e * (2 * np.sqrt(np.maximum(recorded.var, 0.0)) + e)}
    for key, a, b in (("mean", got.mean, recorded.mean), ("var", got.var, recorded.var)):
        if not (np.abs(a - b) <= STATS_ATOL + STATS_RTOL * np.abs(b) + extra[key]).all():
            problem("scene_stats", f"recorded moments {key} differ from the stored features (max |diff| "
                                   f"{_maxdiff(a, b)})")


def _maxdiff(a: np.ndarray, b: np.ndarray) -> str:
    return f"{float(np.max(np.abs(a - b))):.3g}" if a.shape == b.shape else f"shapes {a.shape} vs {b.shape}"


def _read_windows(arr: zarr.Array, spec: ArraySpec) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """(first row, data, None) per window of CHUNKS_PER_READ chunks; a window that fails is re-read chunk by chunk
    so each undecodable chunk is reported on its own as (first row, None, error)."""
    n, step = arr.shape[0], spec.rows_per_chunk
    for w0 in range(0, n, step * CHUNKS_PER_READ):
        w1 = min(n, w0 + step * CHUNKS_PER_READ)
        try:
            yield w0, arr[w0:w1], None
            continue
        except Exception:
            pass
        for r0 in range(w0, w1, step):
            try:
                yield r0, arr[r0:min(w1, r0 + step)], None
            except Exception as e:
                yield r0, None, f"{type(e).__name__}: {e}"


def _frames_of_rows(offsets: np.ndarray | None, r0: int, r1: int, frames: int, per_frame: bool
                    ) -> tuple[int | None, int | None]:
    """The frame range [lo, hi] that rows [r0, r1) of an array belong to."""
    if per_frame:
        return r0, min(r1, frames) - 1
    if offsets is None:
        return None, None
    lo = int(np.searchsorted(offsets, r0, side="right") - 1)
    hi = int(np.searchsorted(offsets, r1 - 1, side="right") - 1)
    return max(lo, 0), min(hi, frames - 1)


def _frames_of(offsets: np.ndarray | None, rows: np.ndarray) -> list[int | None]:
    if offsets is None:
        return [None]
    return [int(f) for f in np.unique(np.searchsorted(offsets, rows, side="right") - 1)]
