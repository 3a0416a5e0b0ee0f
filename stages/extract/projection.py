"""Projection of a scene's points into a frame: world -> camera, z-buffer (nearest point wins), K-stride sampling.

Conventions (the cache's spec repeats them):
- Pixel (u, v) has its centre at integer coordinates; a point projects to (rint(fx·x/z + cx), rint(fy·y/z + cy))
  — rounded, not truncated, unlike the paper's released code.
- Cell (i, j) of the K-stride grid (ceil(H/K) × ceil(W/K)) is anchored at pixel (K·i, K·j).
  `pixel` sampling (the paper): the cell holds the nearest point projecting exactly onto its anchor pixel.
  `cell` sampling: the nearest point projecting anywhere in pixels [K·i, K·i+K) × [K·j, K·j+K).
- Splat radius R: a point covers its (2R+1)² pixel neighbourhood, still subject to the z-buffer.
- Depth check: a point survives at a pixel only if |z − d| ≤ max(abs_tol, rel_tol·d) for the sensor depth d
  there; pixels without a valid depth (0) give no evidence and keep the point.
- Ties in depth go to the lower point index (a stable sort over points kept in index order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cache_schema.layout import grid_shape


@dataclass(frozen=True)
class ProjectionConfig:
    stride: int = 8
    dilation: int = 0
    depth_check: bool = True
    depth_abs_tol: float = 0.1
    depth_rel_tol: float = 0.05
    sampling: str = "pixel"  # pixel | cell
    near: float = 1e-3  # points closer than this (or behind) are dropped

    def __post_init__(self) -> None:
        if self.stride < 1 or self.dilation < 0 or self.sampling not in ("pixel", "cell"):
            raise ValueError(f"invalid projection config {self}")


@dataclass
class ProjectedCells:
    """The covered cells of one frame, sorted by cell index."""

    cells: np.ndarray  # (n,) int32 linear cell index i*grid_w + j
    point_index: np.ndarray  # (n,) int64 index into the scene's point array
    depth: np.ndarray  # (n,) float32 camera z of that point, metres
    grid: tuple[int, int]


def world_to_camera(points: np.ndarray, cam_to_world: np.ndarray) -> np.ndarray:
    """(N, 3) camera coordinates of world points, with the inverse of a rigid camera-to-world pose."""
    r = cam_to_world[:3, :3].astype(np.float64)
    t = cam_to_world[:3, 3].astype(np.float64)
    # x_cam = R^T (x_world - t); written as one float32 matmul on the shifted points
    rt = r.T.astype(np.float32)
    return (points - t.astype(np.float32)) @ rt.T


def _pixels(cam: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = cam[:, 2]
    inv_z = 1.0 / z
    u = np.rint(cam[:, 0] * inv_z * np.float32(intrinsics[0, 0]) + np.float32(intrinsics[0, 2]))
    v = np.rint(cam[:, 1] * inv_z * np.float32(intrinsics[1, 1]) + np.float32(intrinsics[1, 2]))
    return u, v, z


def _depth_ok(cam: np.ndarray, z: np.ndarray, depth: np.ndarray, depth_intrinsics: np.ndarray,
              cfg: ProjectionConfig) -> np.ndarray:
    """Depth check at the point's own depth-image pixel (colour and depth are registered)."""
    ud, vd, _ = _pixels(cam, depth_intrinsics)
    hd, wd = depth.shape
    inside = (ud >= 0) & (ud < wd) & (vd >= 0) & (vd < hd)
    d = np.zeros_like(z)
    d[inside] = depth[vd[inside].astype(np.intp), ud[inside].astype(np.intp)]
    tol = np.maximum(np.float32(cfg.depth_abs_tol), np.float32(cfg.depth_rel_tol) * d)
    return (d <= 0) | (np.abs(z - d) <= tol)


def project_points(points: np.ndarray, cam_to_world: np.ndarray, intrinsics: np.ndarray, height: int, width: int,
                   cfg: ProjectionConfig, depth: np.ndarray | None = None,
                   depth_intrinsics: np.ndarray | None = None) -> ProjectedCells:
    """Covered cells of one frame. Vectorized: no Python loop over points or pixels (only over splat offsets)."""
    points = np.asarray(points, dtype=np.float32)
    k = cfg.stride
    gh, gw = grid_shape(height, width, k)
    cam = world_to_camera(points, cam_to_world)
    front = np.flatnonzero(cam[:, 2] > cfg.near)
    cam = cam[front]
    u, v, z = _pixels(cam, intrinsics)
    r = cfg.dilation
    # a point can reach pixels u-R..u+R: keep those whose neighbourhood touches the image
    keep = (u >= -r) & (u < width + r) & (v >= -r) & (v < height + r)
    if cfg.depth_check and depth is not None:
        keep &= _depth_ok(cam, z, depth, depth_intrinsics if depth_intrinsics is not None else intrinsics, cfg)
    idx = front[keep]
    u, v, z = u[keep].astype(np.int64), v[keep].astype(np.int64), z[keep]

    cand_cell, cand_z, cand_idx = [], [], []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            uu, vv = u + dx, v + dy
            ok = (uu >= 0) & (uu < width) & (vv >= 0) & (vv < height)
            if cfg.sampling == "pixel":
                ok &= (uu % k == 0) & (vv % k == 0)
            sel = np.flatnonzero(ok)
            cand_cell.append((vv[sel] // k) * gw + uu[sel] // k)
            cand_z.append(z[sel])
            cand_idx.append(idx[sel])
    cell = np.concatenate(cand_cell)
    zz = np.concatenate(cand_z).astype(np.float32)
    pidx = np.concatenate(cand_idx)
    if cell.size == 0:
        return ProjectedCells(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.float32), (gh, gw))
    if r:
        # candidates from several offsets interleave point order: restore it so ties go to the lower index
        order = np.argsort(pidx, kind="stable")
        cell, zz, pidx = cell[order], zz[order], pidx[order]
    # z > 0, so its float32 bit pattern sorts like the value: one integer key orders by (cell, z)
    key = (cell.astype(np.uint64) << np.uint64(32)) | zz.view(np.uint32).astype(np.uint64)
    order = np.argsort(key, kind="stable")
    sorted_cell = cell[order]
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = sorted_cell[1:] != sorted_cell[:-1]
    win = order[first]
    return ProjectedCells(cell[win].astype(np.int32), pidx[win].astype(np.int64), zz[win], (gh, gw))


def project_points_reference(points: np.ndarray, cam_to_world: np.ndarray, intrinsics: np.ndarray, height: int,
                             width: int, cfg: ProjectionConfig, depth: np.ndarray | None = None,
                             depth_intrinsics: np.ndarray | None = None) -> ProjectedCells:
    """A straightforward per-point loop with a dense z-buffer: the reference the tests and benchmark compare to."""
    k = cfg.stride
    gh, gw = grid_shape(height, width, k)
    best_z = np.full(gh * gw, np.inf)
    best_i = np.full(gh * gw, -1, np.int64)
    inv = np.linalg.inv(cam_to_world.astype(np.float64))
    dk = depth_intrinsics if depth_intrinsics is not None else intrinsics
    for i, p in enumerate(np.asarray(points, np.float32)):
        c = (inv[:3, :3].astype(np.float32) @ p + inv[:3, 3].astype(np.float32)).astype(np.float32)
        z = np.float32(c[2])
        if not z > cfg.near:
            continue
        u = int(np.rint(c[0] / z * np.float32(intrinsics[0, 0]) + np.float32(intrinsics[0, 2])))
        v = int(np.rint(c[1] / z * np.float32(intrinsics[1, 1]) + np.float32(intrinsics[1, 2])))
        if cfg.depth_check and depth is not None:
            ud = int(np.rint(c[0] / z * np.float32(dk[0, 0]) + np.float32(dk[0, 2])))
            vd = int(np.rint(c[1] / z * np.float32(dk[1, 1]) + np.float32(dk[1, 2])))
            d = depth[vd, ud] if 0 <= ud < depth.shape[1] and 0 <= vd < depth.shape[0] else 0.0
            if d > 0 and abs(z - d) > max(cfg.depth_abs_tol, cfg.depth_rel_tol * d):
                continue
        for dy in range(-cfg.dilation, cfg.dilation + 1):
            for dx in range(-cfg.dilation, cfg.dilation + 1):
                uu, vv = u + dx, v + dy
                if not (0 <= uu < width and 0 <= vv < height):
                    continue
                if cfg.sampling == "pixel" and (uu % k or vv % k):
                    continue
                cell = (vv // k) * gw + uu // k
                if z < best_z[cell]:
                    best_z[cell], best_i[cell] = z, i
    cells = np.flatnonzero(best_i >= 0)
    return ProjectedCells(cells.astype(np.int32), best_i[cells], best_z[cells].astype(np.float32), (gh, gw))
