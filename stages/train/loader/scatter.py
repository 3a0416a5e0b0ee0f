"""Sparse → dense: cached cells moved by a frame's transform into the output's stride-8 grid, the nearest wins.

Cell (i, j) of a cache with stride K sits on source pixel (K·j, K·i) (column, row) and stands for the K×K block
of source pixels around it, its *footprint* [K·j − K/2, K·j + K/2) × [K·i − K/2, K·i + K/2) (the pixels that round
to it, as the release's 8×8 blocks). After the frame's transform A (augment.py) a covered cell claims
- the output cell its own pixel lands in, (round(x'/8), round(y'/8)) of a grid with ceil(Ho/8) × ceil(Wo/8)
  cells, and
- every output cell whose centre (8u, 8v) comes from a source pixel inside its footprint, A⁻¹(8u, 8v).
The second claim is what keeps coverage when an image is scaled up by s > 1: a cell's footprint then spans about
s × s output cells, where the first claim alone would fill one of them and coverage would fall as 1/s². At s ≤ 1
the two claims nearly coincide. Claims outside the grid are dropped. Where several cells claim one output cell,
the one with the smallest cached depth wins, ties going to the earlier cell in the frame's stored order:
deterministic whatever the thread or device. Two implementations of the same rule: numpy per frame (worker
threads) and torch for a whole batch (device); both invert A with the same closed form, so that they agree on
every footprint boundary.
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


def inverse_affine(a: np.ndarray) -> np.ndarray:
    """The output→source 2×3 matrix of a source→output one, in closed form (scatter_batch_torch uses the same
    arithmetic, so both paths map an output cell centre to bit-identical source coordinates)."""
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
    p, q, r, s = a[1, 1] / det, -a[0, 1] / det, -a[1, 0] / det, a[0, 0] / det
    return np.array([[p, q, -(p * a[0, 2] + q * a[1, 2])], [r, s, -(r * a[0, 2] + s * a[1, 2])]])


def footprint_cells(a: np.ndarray, grid_w: int, stride: int, out_grid: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(linear cache-grid cell whose footprint holds the source of each output cell's centre, valid mask), both
    (gh·gw,); invalid where that source lies left, right or above the cache grid."""
    gh, gw = out_grid
    v, u = np.divmod(np.arange(gh * gw, dtype=np.int64), gw)
    inv = inverse_affine(a)
    x, y = (OUTPUT_STRIDE * u).astype(np.float64), (OUTPUT_STRIDE * v).astype(np.float64)
    sx = inv[0, 0] * x + inv[0, 1] * y + inv[0, 2]
    sy = inv[1, 0] * x + inv[1, 1] * y + inv[1, 2]
    j = np.floor(sx / stride + 0.5).astype(np.int64)
    i = np.floor(sy / stride + 0.5).astype(np.int64)
    return i * grid_w + j, (j >= 0) & (j < grid_w) & (i >= 0)


_NONE = np.iinfo(np.int64).max  # "no claim" among (depth key << 32 | row) keys


def scatter_frame(cells: np.ndarray, features: np.ndarray, depth: np.ndarray, train_labels: np.ndarray, *,
                  grid_w: int, stride: int, a: np.ndarray, out_feat: np.ndarray, out_mask: np.ndarray,
                  out_labels: np.ndarray, out_depth: np.ndarray) -> None:
    """One frame's cells into its (already cleared) output slots: features (C, gh, gw), mask/labels/depth (gh, gw)."""
    gh, gw = out_mask.shape
    c = cells.astype(np.int64)
    if (stride == OUTPUT_STRIDE and grid_w == gw and np.array_equal(a, _IDENTITY)
            and (c.size == 0 or (c[0] >= 0 and c[-1] < gh * gw and bool(np.all(c[1:] > c[:-1]))))):
        # evaluation at native size: each cell keeps its own place (the writer stores them strictly increasing,
        # checked here) and its footprint holds exactly that cell's centre, so there is nothing to resolve
        win = np.arange(c.size)
        t = c
    elif c.size == 0:
        return
    else:
        # every claim as one int64 key per (output cell, cached cell): the min is the nearest, then the earliest
        key = (depth_key(depth) << 32) | np.arange(c.size, dtype=np.int64)
        best = np.full(gh * gw, _NONE, np.int64)
        target, keep = cell_targets(cells, grid_w, stride, a, (gh, gw))
        rows = np.flatnonzero(keep)
        won = rows[nearest_wins(target[rows], depth[rows])]  # rows ascend: ties go to the earlier cell
        best[target[won]] = key[won]
        # footprint claims: the nearest row of each cached cell (rows repeat a cell only in malformed input)
        ok = np.flatnonzero(c >= 0)
        own = ok[nearest_wins(c[ok], depth[ok])]
        table = np.full(max(int(c.max()) + 1, 1), _NONE, np.int64)
        table[c[own]] = key[own]
        src, valid = footprint_cells(a, grid_w, stride, (gh, gw))
        valid &= src < table.size
        np.minimum(best, np.where(valid, table[np.where(valid, src, 0)], _NONE), out=best)
        t = np.flatnonzero(best != _NONE)
        win = best[t] & 0xFFFFFFFF
    if out_feat.shape[0]:
        # cast the winners first: a casting fancy-assignment through the transposed view is ~3× slower
        out_feat.reshape(out_feat.shape[0], -1)[:, t] = features[win].astype(np.float32).T
    out_mask.reshape(-1)[t] = True
    out_labels.reshape(-1)[t] = train_labels[win]
    out_depth.reshape(-1)[t] = depth[win]


_IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def footprint_cells_torch(a: torch.Tensor, grid_w: torch.Tensor, stride: int, out_grid: tuple[int, int]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """footprint_cells for a batch: a (B, 2, 3) float64, grid_w (B,) → (B, gh·gw) cells and valid mask, with
    inverse_affine's closed form written out (the same arithmetic, so the same cells)."""
    gh, gw = out_grid
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    p, q, r, s = a[:, 1, 1] / det, -a[:, 0, 1] / det, -a[:, 1, 0] / det, a[:, 0, 0] / det
    tx, ty = -(p * a[:, 0, 2] + q * a[:, 1, 2]), -(r * a[:, 0, 2] + s * a[:, 1, 2])
    o = torch.arange(gh * gw, device=a.device)
    x, y = (OUTPUT_STRIDE * (o % gw)).double(), (OUTPUT_STRIDE * (o // gw)).double()
    sx = p[:, None] * x + q[:, None] * y + tx[:, None]
    sy = r[:, None] * x + s[:, None] * y + ty[:, None]
    j = torch.floor(sx / stride + 0.5).long()
    i = torch.floor(sy / stride + 0.5).long()
    w = grid_w[:, None]
    return i * w + j, (j >= 0) & (j < w) & (i >= 0)


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
    none = torch.iinfo(torch.int64).max
    feat = torch.zeros(batch, c, gh * gw, device=dev)
    mask = torch.zeros(batch * gh * gw, dtype=torch.bool, device=dev)
    lab = torch.full((batch * gh * gw,), 255, dtype=torch.int64, device=dev)
    dep = torch.zeros(batch * gh * gw, device=dev)
    if n:
        fi = frame.long()
        cl = cells.long()
        gwb = grid_w.to(dev).long()
        gwf = gwb[fi]
        i, j = cl // gwf, cl % gwf
        ab = a.to(dev, torch.float64)
        af = ab[fi]
        px, py = (stride * j).double(), (stride * i).double()
        x = af[:, 0, 0] * px + af[:, 0, 1] * py + af[:, 0, 2]
        y = af[:, 1, 0] * px + af[:, 1, 1] * py + af[:, 1, 2]
        u = torch.floor(x / OUTPUT_STRIDE + 0.5).long()
        v = torch.floor(y / OUTPUT_STRIDE + 0.5).long()
        keep = (u >= 0) & (u < gw) & (v >= 0) & (v < gh)
        d = torch.nan_to_num(depth.float(), nan=float("inf")).clamp_min(0.0)
        # nearest wins, ties to the earlier row: the min of (depth bits, row) — non-negative float32 bits sort as ints
        key = (d.view(torch.int32).long() << 32) | torch.arange(n, device=dev)
        rows = torch.nonzero(keep).squeeze(1)
        best = torch.full((batch * gh * gw,), none, dtype=torch.int64, device=dev)
        best.scatter_reduce_(0, (fi * (gh * gw) + v * gw + u)[rows], key[rows], reduce="amin", include_self=True)
        # footprint claims (see the module docstring): the nearest row of each cached cell, looked up at the
        # source of every output cell's centre
        ok = torch.nonzero(cl >= 0).squeeze(1)
        g = max(int(cl.max()) + 1, 1)
        table = torch.full((batch * g,), none, dtype=torch.int64, device=dev)
        table.scatter_reduce_(0, fi[ok] * g + cl[ok], key[ok], reduce="amin", include_self=True)
        src, valid = footprint_cells_torch(ab, gwb, stride, out_grid)
        valid &= src < g
        look = torch.where(valid, torch.arange(batch, device=dev)[:, None] * g + src, 0)
        best = torch.minimum(best, torch.where(valid, table[look], none).reshape(-1))
        hit = torch.nonzero(best != none).squeeze(1)
        win = best[hit] & 0xFFFFFFFF
        mask[hit] = True
        lab[hit] = train_labels[win].long()
        dep[hit] = depth[win].float()
        if c:
            b, cell = hit // (gh * gw), hit % (gh * gw)
            feat[b, :, cell] = features[win].float()
    return (feat.view(batch, c, gh, gw), mask.view(batch, gh, gw), lab.view(batch, gh, gw),
            dep.view(batch, gh, gw))
