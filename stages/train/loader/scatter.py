"""Sparse → dense: cached cells moved by a frame's transform into the output's stride-8 grid, the nearest wins.

Cell (i, j) of a cache with stride K sits on source pixel (K·j, K·i) (column, row); after the frame's transform A
(augment.py) it lands in output cell (round(x'/8), round(y'/8)) of a grid with ceil(Ho/8) × ceil(Wo/8) cells;
cells landing outside are dropped. Where several cells land in one output cell, the one with the smallest cached
depth wins, ties going to the earlier cell in the frame's stored order: deterministic whatever the thread or
device. Two implementations of the same rule: numpy per frame (worker threads) and torch for a whole batch (device).
"""

from __future__ import annotations

import numpy as np
import torch

OUTPUT_STRIDE = 8


def output_grid(out_hw: tuple[int, int]) -> tuple[int, int]:
    return (-(-out_hw[0] // OUTPUT_STRIDE), -(-out_hw[1] // OUTPUT_STRIDE))


def cell_targets(cells: np.ndarray, grid_w: int, stride: int, a: np.ndarray, out_grid: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(linear output cell, keep mask) of each cached cell under the 2×3 source→output matrix a."""
    c = cells.astype(np.int64)
    i, j = np.divmod(c, grid_w)
    px, py = (stride * j).astype(np.float64), (stride * i).astype(np.float64)
    x = a[0, 0] * px + a[0, 1] * py + a[0, 2]
    y = a[1, 0] * px + a[1, 1] * py + a[1, 2]
    u = np.floor(x / OUTPUT_STRIDE + 0.5).astype(np.int64)
    v = np.floor(y / OUTPUT_STRIDE + 0.5).astype(np.int64)
    gh, gw = out_grid
    keep = (u >= 0) & (u < gw) & (v >= 0) & (v < gh)
    return v * gw + u, keep


def depth_key(depth: np.ndarray) -> np.ndarray:
    """Depth as int64 sort keys: float32 bits of max(depth, 0) (NaN → +inf); non-negative float32 bits sort as
    integers. The device path (scatter_batch_torch) uses the same key, so both pick the same winners."""
    d = np.nan_to_num(depth.astype(np.float32), nan=np.inf)
    np.maximum(d, 0.0, out=d)
    return d.view(np.int32).astype(np.int64)


def nearest_wins(target: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Indices (into target) of the winning cell of each distinct target: smallest depth, then earliest."""
    if target.size == 0:
        return np.zeros(0, np.int64)
    key = (target.astype(np.int64) << 32) | depth_key(depth)
    order = np.argsort(key, kind="stable")  # stable: equal (target, depth) keep their stored order
    t = key[order] >> 32
    first = np.ones(t.shape[0], bool)
    first[1:] = t[1:] != t[:-1]
    return order[first]


def scatter_frame(cells: np.ndarray, features: np.ndarray, depth: np.ndarray, train_labels: np.ndarray, *,
                  grid_w: int, stride: int, a: np.ndarray, out_feat: np.ndarray, out_mask: np.ndarray,
                  out_labels: np.ndarray, out_depth: np.ndarray) -> None:
    """One frame's cells into its (already cleared) output slots: features (C, gh, gw), mask/labels/depth (gh, gw)."""
    gh, gw = out_mask.shape
    c = cells.astype(np.int64)
    if (stride == OUTPUT_STRIDE and grid_w == gw and np.array_equal(a, _IDENTITY)
            and (c.size == 0 or (c[0] >= 0 and c[-1] < gh * gw and bool(np.all(c[1:] > c[:-1]))))):
        # evaluation at native size: each cell keeps its own place (the writer stores them strictly increasing,
        # checked here), so there is nothing to resolve
        win = np.arange(c.size)
        t = c
    else:
        target, keep = cell_targets(cells, grid_w, stride, a, (gh, gw))
        rows = np.flatnonzero(keep)
        win = np.sort(rows[nearest_wins(target[rows], depth[rows])])  # gather rows in stored order: sequential reads
        t = target[win]
    if out_feat.shape[0]:
        # cast the winners first: a casting fancy-assignment through the transposed view is ~3× slower
        out_feat.reshape(out_feat.shape[0], -1)[:, t] = features[win].astype(np.float32).T
    out_mask.reshape(-1)[t] = True
    out_labels.reshape(-1)[t] = train_labels[win]
    out_depth.reshape(-1)[t] = depth[win]


_IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def scatter_batch_torch(frame: torch.Tensor, cells: torch.Tensor, features: torch.Tensor, depth: torch.Tensor,
                        train_labels: torch.Tensor, *, grid_w: torch.Tensor, stride: int, a: torch.Tensor,
                        batch: int, out_grid: tuple[int, int]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All cells of a batch at once, on their device. frame (N,) frame-in-batch of each cell, cells (N,) linear
    cache-grid index, grid_w (B,) cache grid width per frame, a (B, 2, 3). Returns dense features (B, C, gh, gw)
    float32, mask bool, labels int64 (255 empty) and depth float32 (0 empty)."""
    dev = cells.device
    gh, gw = out_grid
    c = features.shape[1]
    n = cells.shape[0]
    feat = torch.zeros(batch, c, gh * gw, device=dev)
    mask = torch.zeros(batch * gh * gw, dtype=torch.bool, device=dev)
    lab = torch.full((batch * gh * gw,), 255, dtype=torch.int64, device=dev)
    dep = torch.zeros(batch * gh * gw, device=dev)
    if n:
        fi = frame.long()
        cl = cells.long()
        gwf = grid_w.to(dev).long()[fi]
        i, j = cl // gwf, cl % gwf
        af = a.to(dev, torch.float64)[fi]
        px, py = (stride * j).double(), (stride * i).double()
        x = af[:, 0, 0] * px + af[:, 0, 1] * py + af[:, 0, 2]
        y = af[:, 1, 0] * px + af[:, 1, 1] * py + af[:, 1, 2]
        u = torch.floor(x / OUTPUT_STRIDE + 0.5).long()
        v = torch.floor(y / OUTPUT_STRIDE + 0.5).long()
        keep = (u >= 0) & (u < gw) & (v >= 0) & (v < gh)
        rows = torch.nonzero(keep).squeeze(1)
        t = (fi * (gh * gw) + v * gw + u)[rows]
        d = torch.nan_to_num(depth.float()[rows], nan=float("inf")).clamp_min(0.0)
        # nearest wins, ties to the earlier row: the min of (depth bits, row) — non-negative float32 bits sort as ints
        key = (d.view(torch.int32).long() << 32) | rows
        best = torch.full((batch * gh * gw,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=dev)
        best.scatter_reduce_(0, t, key, reduce="amin", include_self=True)
        hit = torch.nonzero(best != torch.iinfo(torch.int64).max).squeeze(1)
        win = best[hit] & 0xFFFFFFFF
        mask[hit] = True
        lab[hit] = train_labels[win].long()
        dep[hit] = depth[win].float()
        if c:
            b, cell = hit // (gh * gw), hit % (gh * gw)
            feat[b, :, cell] = features[win].float()
    return (feat.view(batch, c, gh, gw), mask.view(batch, gh, gw), lab.view(batch, gh, gw),
            dep.view(batch, gh, gw))
