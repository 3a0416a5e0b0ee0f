"""The sparse→dense scatter: the CPU (numpy) and device (torch) implementations pick the same winners, including
NaN, negative and tied depths, and evaluation's identity shortcut equals the general rule; a scaled-up frame fills
each cached cell's whole footprint (exact cells on constructed frames)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.train.loader.scatter import output_grid, scatter_batch_torch, scatter_frame


def _dense(cells, feats, depth, labels, a, grid_w, stride, out_grid):
    gh, gw = out_grid
    out = (np.zeros((feats.shape[1], gh, gw), np.float32), np.zeros((gh, gw), bool),
           np.full((gh, gw), 255, np.int64), np.zeros((gh, gw), np.float32))
    scatter_frame(cells, feats, depth, labels, grid_w=grid_w, stride=stride, a=a, out_feat=out[0], out_mask=out[1],
                  out_labels=out[2], out_depth=out[3])
    return out


def _torch_dense(cells, feats, depth, labels, a, grid_w, stride, out_grid):
    got = scatter_batch_torch(torch.zeros(cells.size, dtype=torch.int32), torch.from_numpy(cells),
                              torch.from_numpy(feats), torch.from_numpy(depth), torch.from_numpy(labels),
                              grid_w=torch.tensor([grid_w]), stride=stride, a=torch.from_numpy(a)[None], batch=1,
                              out_grid=out_grid)
    return tuple(g[0].numpy() for g in got)


@pytest.mark.parametrize(("stride", "a"), [
    (4, [[0.9, 0.1, 3.0], [-0.1, 0.9, 1.0]]),  # a finer cache grid than the output's: many cells compete
    (8, [[1.7, 0.3, -5.0], [-0.3, 1.7, 2.0]]),  # scaled up and rotated: footprints span several output cells
])
def test_numpy_and_torch_scatter_agree_on_awkward_depths(stride: int, a: list) -> None:
    rng = np.random.default_rng(4)
    grid_w = 12
    cells = np.sort(rng.choice(10 * grid_w, 90, replace=False)).astype(np.int32)
    depth = rng.choice(np.array([0.5, 1.0, 2.0, np.nan, -1.0], np.float16), cells.size)
    feats = rng.normal(size=(cells.size, 3)).astype(np.float16)
    labels = rng.integers(0, 20, cells.size).astype(np.uint8)
    a = np.array(a)
    grid = output_grid((40, 48))
    want = _dense(cells, feats, depth, labels, a, grid_w, stride, grid)
    got = _torch_dense(cells, feats, depth, labels, a, grid_w, stride, grid)
    assert want[1].sum() > 5 and want[1].sum() < grid[0] * grid[1]
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w, g)


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_scaled_up_cells_fill_their_footprint(scale: int) -> None:
    # a 4x5-cell frame (stride 8) with cells (0,0), (1,1), (2,3) covered, scaled by s about the origin: cell (i,j)
    # stands for source pixels [8j-4, 8j+4) x [8i-4, 8i+4); output cell u's centre 8u comes from source 8u/s, so
    # the cell fills the s x s block of output cells u in [s·j - s/2, s·j + s/2), clipped to the grid
    grid_w, cells = 5, np.array([0, 6, 13], np.int32)
    feats = np.array([[1.0], [2.0], [3.0]], np.float16)
    depth, labels = np.ones(3, np.float16), np.array([4, 5, 6], np.uint8)
    a = np.array([[scale, 0.0, 0.0], [0.0, scale, 0.0]])
    grid = (4 * scale, 5 * scale)
    want = np.zeros(grid, np.float32)
    lo = -(scale // 2)  # first offset of the block: s=1: 0; s=2: -1 (u = 2j-1, 2j); s=3: -1 (u = 3j-1 .. 3j+1)
    for (i, j), f in zip([(0, 0), (1, 1), (2, 3)], (1.0, 2.0, 3.0), strict=True):
        for dv in range(lo, lo + scale):
            for du in range(lo, lo + scale):
                if 0 <= scale * i + dv < grid[0] and 0 <= scale * j + du < grid[1]:
                    want[scale * i + dv, scale * j + du] = f
    for dense in (_dense, _torch_dense):
        out = dense(cells, feats, depth, labels, a, grid_w, 8, grid)
        np.testing.assert_array_equal(out[0][0], want)
        np.testing.assert_array_equal(out[1], want > 0)
        np.testing.assert_array_equal(out[2][want > 0], (want[want > 0] + 3).astype(np.int64))  # labels 4, 5, 6
    # the two interior cells each fill s² output cells: coverage no longer falls as 1/s²
    assert (want == 2.0).sum() == (want == 3.0).sum() == scale**2


@pytest.mark.parametrize("nearer", [1, 2])
def test_downscaled_competitors_nearest_wins(nearer: int) -> None:
    # at scale 1/2, cells j=1 (pixel 8 -> 4, rounds to output cell 1) and j=2 (pixel 16 -> 8: output cell 1, whose
    # centre also lies in j=2's footprint) claim the same output cell: the smaller depth wins either way round
    cells = np.array([0, 1, 2], np.int32)
    feats = np.array([[10.0], [11.0], [12.0]], np.float16)
    depth = np.array([1.0, 2.0, 2.0], np.float16)
    depth[nearer] = 1.5
    a = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]])
    for dense in (_dense, _torch_dense):
        out = dense(cells, feats, depth, np.zeros(3, np.uint8), a, 3, 8, (1, 2))
        np.testing.assert_array_equal(out[0][0, 0], [10.0, 10.0 + nearer])


def test_identity_shortcut_equals_general_rule() -> None:
    rng = np.random.default_rng(5)
    gh, gw = 6, 8
    cells = np.sort(rng.choice(gh * gw, 20, replace=False)).astype(np.int32)
    feats = rng.normal(size=(20, 4)).astype(np.float16)
    depth = rng.uniform(1, 3, 20).astype(np.float16)
    labels = rng.integers(0, 20, 20).astype(np.uint8)
    eye = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    fast = _dense(cells, feats, depth, labels, eye, gw, 8, (gh, gw))
    nudged = _dense(cells, feats, depth, labels, eye + 1e-9, gw, 8, (gh, gw))  # not identity: the general path
    for f, n in zip(fast, nudged, strict=True):
        np.testing.assert_array_equal(f, n)
    i, j = np.divmod(cells, gw)
    np.testing.assert_array_equal(fast[0][:, i, j].T, feats.astype(np.float32))
    # cells out of order or out of range (not what the writer stores) take the general path, not a wrong shortcut
    bad = _dense(np.array([5, 5, 2], np.int32), feats[:3], np.array([2.0, 1.0, 1.0], np.float16), labels[:3], eye,
                 gw, 8, (gh, gw))
    assert bad[1].sum() == 2 and bad[3].reshape(-1)[5] == 1.0
