from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.extract.projection import ProjectionConfig, project_points, project_points_reference, world_to_camera

K = np.array([[60.0, 0, 31.5], [0, 60.0, 23.5], [0, 0, 1]])


def _scene(seed: int, n: int = 2000):
    rng = np.random.default_rng(seed)
    pts = rng.uniform([-2, -1.5, 1], [2, 1.5, 6], size=(n, 3)).astype(np.float32)
    pose = np.eye(4)
    a = rng.uniform(-0.3, 0.3)
    pose[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    pose[:3, 3] = rng.normal(0, 0.2, 3)
    pts = (pts @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)  # world points seen by this camera
    return pts, pose


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 2), st.sampled_from(["pixel", "cell"]), st.sampled_from([4, 6, 8]))
def test_vectorized_equals_reference(seed, dilation, sampling, stride):
    pts, pose = _scene(seed)
    cfg = ProjectionConfig(stride=stride, dilation=dilation, depth_check=False, sampling=sampling)
    a = project_points(pts, pose, K, 48, 64, cfg)
    b = project_points_reference(pts, pose, K, 48, 64, cfg)
    np.testing.assert_array_equal(a.cells, b.cells)
    np.testing.assert_array_equal(a.point_index, b.point_index)
    np.testing.assert_allclose(a.depth, b.depth, rtol=1e-6)


def test_exact_nearest_point_at_anchor_pixel():
    """--dilation 0 --no-depth-check --sampling pixel: the cached point at cell (i, j) is exactly the nearest
    projected point at pixel (K*i, K*j)."""
    pts, pose = _scene(3, 20_000)
    cfg = ProjectionConfig(stride=8, dilation=0, depth_check=False)
    res = project_points(pts, pose, K, 48, 64, cfg)
    x, y, z = world_to_camera(pts, pose)
    u = np.rint(x * (np.float32(1) / z) * np.float32(60) + np.float32(31.5))
    v = np.rint(y * (np.float32(1) / z) * np.float32(60) + np.float32(23.5))
    seen = 0
    for i in range(6):
        for j in range(8):
            at = np.flatnonzero((u == 8 * j) & (v == 8 * i) & (z > 0))
            cell = i * 8 + j
            if at.size == 0:
                assert cell not in res.cells
                continue
            best = at[np.lexsort((at, z[at]))[0]]
            k = np.flatnonzero(res.cells == cell)
            assert k.size == 1 and res.point_index[k[0]] == best
            seen += 1
    assert seen > 10


def test_occluded_point_loses_and_ties_go_to_lower_index():
    pose = np.eye(4)
    pts = np.array([[0, 0, 5.0], [0, 0, 2.0], [0, 0, 2.0], [0, 0, -1.0]], np.float32)  # far, near, tie, behind
    k = np.array([[10.0, 0, 8], [0, 10.0, 8], [0, 0, 1]])
    res = project_points(pts, pose, k, 17, 17, ProjectionConfig(dilation=0, depth_check=False))
    assert res.cells.tolist() == [1 * 3 + 1] and res.point_index.tolist() == [1]
    assert res.depth.tolist() == [2.0]


def test_rounding_not_truncation():
    pose = np.eye(4)
    k = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1]])
    pts = np.array([[7.6, 8.4, 1.0]], np.float32)  # rounds to (8, 8); truncation would give (7, 8)
    res = project_points(pts, pose, k, 16, 16, ProjectionConfig(dilation=0, depth_check=False))
    assert res.cells.tolist() == [1 * 2 + 1]


def test_depth_check_drops_points_behind_the_sensed_surface():
    pose = np.eye(4)
    k = np.array([[10.0, 0, 8], [0, 10.0, 8], [0, 0, 1]])
    pts = np.array([[0, 0, 5.0]], np.float32)
    depth = np.full((17, 17), 2.0, np.float32)  # the sensor sees a surface at 2 m: the point at 5 m is hidden
    cfg = ProjectionConfig()
    assert project_points(pts, pose, k, 17, 17, cfg, depth=depth).cells.size == 0
    depth[:] = 5.1
    assert project_points(pts, pose, k, 17, 17, cfg, depth=depth).cells.size == 1
    for hole in (0.0, np.nan):  # no valid depth: nothing says the point is visible, it is dropped (the release)
        depth[:] = hole
        assert project_points(pts, pose, k, 17, 17, cfg, depth=depth).cells.size == 0
        assert project_points_reference(pts, pose, k, 17, 17, cfg, depth=depth).cells.size == 0
    ref = project_points_reference(pts, pose, k, 17, 17, cfg, depth=np.full((17, 17), 2.0, np.float32))
    assert ref.cells.size == 0
    # without the depth check the same frame keeps the point
    off = ProjectionConfig(depth_check=False)
    assert project_points(pts, pose, k, 17, 17, off, depth=depth).cells.size == 1


def test_dilation_covers_neighbourhood_under_zbuffer():
    pose = np.eye(4)
    k = np.array([[10.0, 0, 8], [0, 10.0, 8], [0, 0, 1]])
    pts = np.array([[0.1, 0, 1.0], [0.0, 0, 3.0]], np.float32)  # pixel (9, 8) near, pixel (8, 8) far
    cfg = ProjectionConfig(depth_check=False, dilation=1)
    res = project_points(pts, pose, k, 17, 17, cfg)
    # the near point's splat reaches anchor (8, 8) and beats the far point that lands there exactly
    assert res.point_index[res.cells.tolist().index(4)] == 0


def _constructed_frame() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Six points in front of an identity camera (f = 10, c = 8) on a 17x17 image, stride 8 (3x3 grid, anchors at
    pixels 0, 8, 16), and a sensor depth of 2 m with a hole (0), a NaN, and a closer surface under point E."""
    px = {"A": (8, 8, 2.0),  # on anchor (8, 8), agrees with the sensor
          "B": (15, 8, 4.0),  # one pixel left of anchor (16, 8), behind the 2 m surface the sensor sees: occluded
          "C": (1, 1, 5.0),  # diagonal neighbour of anchor (0, 0), on a depth hole
          "D": (0, 16, 3.0),  # on anchor (0, 16), where the depth is NaN
          "E": (9, 9, 1.9),  # diagonal neighbour of anchor (8, 8), nearer than A, agrees with the sensor
          "G": (-1, 8, 2.0)}  # one pixel left of the image, beside anchor (0, 8): outside the depth image
    pts = np.array([[(u - 8) * z / 10, (v - 8) * z / 10, z] for u, v, z in px.values()], np.float32)
    k = np.array([[10.0, 0, 8], [0, 10.0, 8], [0, 0, 1]])
    depth = np.full((17, 17), 2.0, np.float32)
    depth[1, 1] = 0.0
    depth[16, 0] = np.nan
    depth[9, 9] = 1.9
    return pts, k, depth


A, B, C, D, E, G = range(6)


@pytest.mark.parametrize(("dilation", "depth_check", "cells", "winners"), [
    # depth check: B (occluded), C (hole), D (NaN) and G (no depth pixel) are dropped; the 3x3 splat lets E,
    # nearer than A, win A's anchor
    (0, True, [4], [A]),
    (1, True, [4], [E]),
    # no depth check: every point takes part; undilated only the points on anchors are sampled
    (0, False, [4, 6], [A, D]),
    (1, False, [0, 3, 4, 5, 6], [C, G, E, B, D]),
])
def test_constructed_frame_exact_cells(dilation, depth_check, cells, winners):
    pts, k, depth = _constructed_frame()
    cfg = ProjectionConfig(dilation=dilation, depth_check=depth_check)
    for project in (project_points, project_points_reference):
        res = project(pts, np.eye(4), k, 17, 17, cfg, depth=depth)
        assert res.grid == (3, 3)
        assert res.cells.tolist() == cells and res.point_index.tolist() == winners
        np.testing.assert_array_equal(res.depth, pts[winners, 2])


@pytest.mark.parametrize("n", [0, 5])
def test_empty_and_out_of_view(n):
    pts = np.zeros((n, 3), np.float32) - 1  # behind
    res = project_points(pts, np.eye(4), K, 48, 64, ProjectionConfig(depth_check=False))
    assert res.cells.size == 0 and res.grid == (6, 8)
