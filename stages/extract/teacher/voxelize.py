"""Points to voxels and back: the voxelization's inverse index maps per-voxel features onto every point."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BITS = 21
_LIMIT = 1 << _BITS


def _keys(c: np.ndarray) -> np.ndarray:
    c = c.astype(np.int64)
    return (c[:, 0] << (2 * _BITS)) | (c[:, 1] << _BITS) | c[:, 2]


@dataclass
class Voxelization:
    coords: np.ndarray  # (M, 3) int64 unique non-negative voxel indices, ascending by key
    point_voxel: np.ndarray  # (N,) int64 row of each point's voxel in ``coords``
    point_coords: np.ndarray  # (N, 3) int64 each point's voxel index (shifted like ``coords``)
    representative: np.ndarray  # (M,) int64 the first point (input order) of each voxel


def voxelize(points: np.ndarray, voxel_size: float, align: int = 16) -> Voxelization:
    """Quantize (N, 3) points to ``voxel_size`` cells, shifted so indices start at a multiple of ``align``.

    The shift is a multiple of the network's largest tensor stride, so strided layers pool exactly the same
    voxels as without it, and every backend only ever sees non-negative coordinates.
    """
    v = np.floor(np.asarray(points, dtype=np.float64) / voxel_size).astype(np.int64)
    shift = (np.floor_divide(v.min(axis=0), align) * align) if len(v) else np.zeros(3, np.int64)
    v -= shift
    if len(v) and int(v.max()) >= _LIMIT:
        raise ValueError(f"scene spans {int(v.max())} voxels along an axis (limit {_LIMIT}); "
                         f"check the point units (metres expected) and voxel_size={voxel_size}")
    keys = _keys(v)
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return Voxelization(coords=v[first], point_voxel=inverse.reshape(-1).astype(np.int64), point_coords=v,
                        representative=first.astype(np.int64))


def rows_for_points(point_coords: np.ndarray, stride: int, layer_coords: np.ndarray) -> np.ndarray:
    """Row in ``layer_coords`` (a strided layer's coordinate map, any row order) holding each point's voxel."""
    q = _keys(np.floor_divide(point_coords, stride) * stride)
    keys = _keys(layer_coords)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    pos = np.searchsorted(sk, q).clip(max=max(len(sk) - 1, 0))
    if len(sk) == 0 or not np.array_equal(sk[pos], q):
        raise RuntimeError("a point's voxel is missing from the layer's coordinate map (backend bug)")
    return order[pos]
