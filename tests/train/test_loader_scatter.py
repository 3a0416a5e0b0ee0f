"""The sparse→dense scatter: the CPU (numpy) and device (torch) implementations pick the same winners, including
NaN, negative and tied depths, and evaluation's identity shortcut equals the general rule."""

from __future__ import annotations

import numpy as np
import torch

from stages.train.loader.scatter import output_grid, scatter_batch_torch, scatter_frame


def _dense(cells, feats, depth, labels, a, grid_w, stride, out_grid):
    gh, gw = out_grid
    out = (np.zeros((feats.shape[1], gh, gw), np.float32), np.zeros((gh, gw), bool),
           np.full((gh, gw), 255, np.int64), np.zeros((gh, gw), np.float32))
    scatter_frame(cells, feats, depth, labels, grid_w=grid_w, stride=stride, a=a, out_feat=out[0], out_mask=out[1],
                  out_labels=out[2], out_depth=out[3])
    return out


def test_numpy_and_torch_scatter_agree_on_awkward_depths() -> None:
    rng = np.random.default_rng(4)
    grid_w, stride = 12, 4  # a finer cache grid than the output's: many cells compete for each output cell
    cells = np.sort(rng.choice(10 * grid_w, 90, replace=False)).astype(np.int32)
    depth = rng.choice(np.array([0.5, 1.0, 2.0, np.nan, -1.0], np.float16), cells.size)
    feats = rng.normal(size=(cells.size, 3)).astype(np.float16)
    labels = rng.integers(0, 20, cells.size).astype(np.uint8)
    a = np.array([[0.9, 0.1, 3.0], [-0.1, 0.9, 1.0]])
    grid = output_grid((40, 48))
    want = _dense(cells, feats, depth, labels, a, grid_w, stride, grid)
    got = scatter_batch_torch(torch.zeros(cells.size, dtype=torch.int32), torch.from_numpy(cells),
                              torch.from_numpy(feats), torch.from_numpy(depth), torch.from_numpy(labels),
                              grid_w=torch.tensor([grid_w]), stride=stride, a=torch.from_numpy(a)[None], batch=1,
                              out_grid=grid)
    assert want[1].sum() > 5 and want[1].sum() < cells.size  # conflicts happened
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w, g[0].numpy())


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
