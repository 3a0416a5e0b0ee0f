"""Projection: z-buffer points/s per core at 640x480 and 1296x968, vs a straightforward reference and vs the
memory bandwidth of moving the same arrays."""

from __future__ import annotations

import argparse

import numpy as np

from bench.common import emit, median_time
from stages.extract.projection import ProjectionConfig, project_points, project_points_reference


def scene_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A room-like point set (walls, floor, boxes) seen from inside: most points in front of the camera."""
    rng = np.random.default_rng(seed)
    pts = rng.uniform([-3, -3, 0], [3, 3, 2.8], size=(n, 3)).astype(np.float32)
    face = rng.integers(0, 5, n)
    pts[face == 0, 0] = -3
    pts[face == 1, 0] = 3
    pts[face == 2, 1] = 3
    pts[face == 3, 2] = 0
    pose = np.eye(4)
    # camera at eye height looking along +y (OpenCV axes: z forward = world +y, y down = world -z)
    pose[:3, :3] = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], np.float64)  # columns: camera x, y, z in world
    pose[:3, 3] = [0, -2.5, 1.5]
    return pts, pose


def run(n_points: int = 300_000, repeats: int = 5) -> dict:
    import torch

    torch.set_num_threads(1)
    out = {"name": "projection", "points": n_points, "sizes": {}}
    pts, pose = scene_points(n_points)
    for (w, h, f) in ((640, 480, 577.9), (1296, 968, 1170.2)):
        out["sizes"][f"{w}x{h}"] = _measure(pts, pose, w, h, f, repeats)
    return out


def _measure(pts: np.ndarray, pose: np.ndarray, w: int, h: int, f: float, repeats: int) -> dict:
    n_points = pts.shape[0]
    k = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
    depth = np.zeros((h, w), np.float32)
    row: dict = {}
    for label, cfg, d in (("pixel", ProjectionConfig(depth_check=False), None),
                          ("pixel+depth-check", ProjectionConfig(), depth),
                          ("cell", ProjectionConfig(sampling="cell", depth_check=False), None)):
        t = median_time(lambda cfg=cfg, d=d: project_points(pts, pose, k, h, w, cfg, depth=d), repeats)
        row[label] = {"seconds": t, "points_per_s": n_points / t}
    sub = pts[:20_000]
    t_ref = median_time(lambda: project_points_reference(sub, pose, k, h, w, ProjectionConfig(depth_check=False)), 1, 0)
    row["reference_points_per_s"] = sub.shape[0] / t_ref
    # bandwidth bound: read the points once and write one int per point (what any projection must at least move)
    buf = np.empty(n_points, np.int64)
    t_mem = median_time(lambda: (np.copyto(buf, pts[:, 0].view(np.int32)), pts.copy()), repeats)
    row["memory_move_points_per_s"] = n_points / t_mem
    row["speedup_vs_reference"] = row["pixel"]["points_per_s"] / row["reference_points_per_s"]
    row["fraction_of_memory_bound"] = row["pixel"]["points_per_s"] / row["memory_move_points_per_s"]
    row["target_20M_per_core_met"] = row["pixel"]["points_per_s"] >= 20e6
    row["covered_cells"] = int(project_points(pts, pose, k, h, w, ProjectionConfig(depth_check=False)).cells.size)
    return row


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=int, default=300_000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    emit(run(a.points, a.repeats))
