"""Pure-PyTorch sparse convolution: sorted int64 voxel keys, ``searchsorted`` neighbour maps, gather + matmul.

Runs wherever torch runs (CPU, any CUDA build). Kernel maps are computed once per (stride, kernel, dilation)
and shared by every layer of a forward pass through a per-input ``_Context``. The convolution is a custom
autograd function that gathers in chunks (im2col over the offsets that occur) and re-gathers in backward, so
training memory stays close to that of the activations themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .sparse import as_kernel_stack, kernel_offsets

_BITS = 21  # per axis: 2**21 voxels of 2 cm = 42 km, far beyond any room
_LIMIT = 1 << _BITS
# Stored coordinates are shifted by _PAD (a multiple of every tensor stride, so strided pooling is unchanged)
# and kept below _LIMIT - _PAD: neighbour keys are then plain additions that never wrap into another axis.
_PAD = 1024
_CHUNK_ELEMS = 1 << 24  # gathered (rows x K*C) elements per matmul: bounds the im2col buffer to 64 MB (fp32)


def voxel_keys(coords: torch.Tensor) -> torch.Tensor:
    """One int64 per non-negative (N, 3) coordinate, ordered like the coordinates lexicographically."""
    c = coords.to(torch.int64)
    return (c[:, 0] << (2 * _BITS)) | (c[:, 1] << _BITS) | c[:, 2]


@dataclass
class _CoordMap:
    coords: torch.Tensor  # (N, 3) int64, padded by _PAD, sorted by key
    keys: torch.Tensor  # (N,) int64, ascending


@dataclass
class KernelMap:
    """Gather tables of one convolution between two coordinate maps, for the offsets that occur at all.

    ``fwd[u, j]`` is the input row feeding output ``u`` through offset ``ks[j]`` (``n_in`` = none);
    ``bwd[i, j]`` is the output row input ``i`` feeds through that offset (``n_out`` = none). On a lattice each
    (offset, row) pairs with at most one partner, so both directions are gathers: no scatter-add, which on CPU
    is several times slower than one large im2col matmul.
    """

    ks: torch.Tensor  # (K',) kernel indices used
    fwd: torch.Tensor  # (n_out, K') int64
    bwd: torch.Tensor  # (n_in, K') int64

    def transposed(self) -> KernelMap:
        return KernelMap(ks=self.ks, fwd=self.bwd, bwd=self.fwd)


@dataclass
class _Context:
    """Coordinate maps per tensor stride and cached kernel maps, shared by all tensors of one forward pass."""

    maps: dict[int, _CoordMap] = field(default_factory=dict)
    kernel_maps: dict[tuple, KernelMap] = field(default_factory=dict)


@dataclass
class TorchSparseTensor:
    feats: torch.Tensor
    stride: int
    ctx: _Context

    @property
    def coords(self) -> torch.Tensor:
        return self.ctx.maps[self.stride].coords


def _sorted_map(coords: torch.Tensor) -> tuple[_CoordMap, torch.Tensor]:
    keys = voxel_keys(coords)
    keys, order = torch.sort(keys)
    return _CoordMap(coords=coords[order].to(torch.int64), keys=keys), order


def _build_kernel_map(src: _CoordMap, dst: _CoordMap, offsets: torch.Tensor, step: int) -> KernelMap:
    """For each output coordinate u and offset o, the input at u + o * step (MinkowskiEngine's definition)."""
    n_in, n_out = len(src.keys), len(dst.keys)
    rows = torch.arange(n_out, device=dst.keys.device)
    ks, fwd_cols, bwd_cols = [], [], []
    for k, off in enumerate(offsets * step):
        q = dst.keys + (off[0] << (2 * _BITS)) + (off[1] << _BITS) + off[2]  # linear: no axis wraps (_PAD)
        idx = torch.searchsorted(src.keys, q).clamp_(max=max(n_in - 1, 0))
        found = src.keys[idx] == q if n_in else torch.zeros_like(q, dtype=torch.bool)
        if not bool(found.any()):
            continue
        fwd = torch.full((n_out,), n_in, dtype=torch.int64, device=rows.device)
        fwd[found] = idx[found]
        bwd = torch.full((n_in,), n_out, dtype=torch.int64, device=rows.device)
        bwd[idx[found]] = rows[found]
        ks.append(k)
        fwd_cols.append(fwd)
        bwd_cols.append(bwd)
    if not ks:
        empty = torch.empty(0, dtype=torch.int64, device=rows.device)
        return KernelMap(ks=empty, fwd=empty.reshape(n_out, 0), bwd=empty.reshape(n_in, 0))
    return KernelMap(ks=torch.tensor(ks, device=rows.device), fwd=torch.stack(fwd_cols, 1),
                     bwd=torch.stack(bwd_cols, 1))


def _gather_matmul(x: torch.Tensor, table: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """out[u] = concat_j x[table[u, j]] @ w, with table entries == len(x) reading a zero row."""
    n, kk = table.shape
    out = x.new_empty(n, w.shape[1])
    if kk == 0:
        return out.zero_()
    xp = torch.cat([x, x.new_zeros(1, x.shape[1])])
    step = max(1, _CHUNK_ELEMS // max(kk * x.shape[1], 1))
    for s in range(0, n, step):
        out[s:s + step] = xp[table[s:s + step]].reshape(-1, kk * x.shape[1]) @ w
    return out


class _SparseConvFn(torch.autograd.Function):
    """out[u] = sum_j feats[fwd[u, j]] @ W[ks[j]]; backward gathers through ``bwd``."""

    @staticmethod
    def forward(ctx, feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(feats, weight)
        ctx.kmap = kmap
        w = weight[kmap.ks]  # (K', in, out)
        return _gather_matmul(feats, kmap.fwd, w.reshape(-1, w.shape[2]))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        feats, weight = ctx.saved_tensors
        kmap: KernelMap = ctx.kmap
        grad_out = grad_out.contiguous()
        w = weight[kmap.ks]
        kk, cin, cout = w.shape
        grad_feats = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_feats = _gather_matmul(grad_out, kmap.bwd, w.transpose(1, 2).reshape(kk * cout, cin))
        if ctx.needs_input_grad[1]:
            gw = feats.new_zeros(kk * cin, cout)
            xp = torch.cat([feats, feats.new_zeros(1, cin)])
            step = max(1, _CHUNK_ELEMS // max(kk * cin, 1))
            for s in range(0, len(kmap.fwd), step):
                cols = xp[kmap.fwd[s:s + step]].reshape(-1, kk * cin)
                gw += cols.t() @ grad_out[s:s + step]
            grad_w = torch.zeros_like(weight)
            grad_w[kmap.ks] = gw.reshape(kk, cin, cout)
        return grad_feats, grad_w, None


class TorchOps:
    """The ``SparseOps`` of the pure-PyTorch backend."""

    name = "torch"

    def from_voxels(self, coords: torch.Tensor, feats: torch.Tensor) -> TorchSparseTensor:
        coords = coords.to(device=feats.device, dtype=torch.int64)
        if len(coords) and (int(coords.min()) < 0 or int(coords.max()) >= _LIMIT - 2 * _PAD):
            raise ValueError(f"voxel coordinates must lie in [0, {_LIMIT - 2 * _PAD}); shift them first")
        cmap, order = _sorted_map(coords + _PAD)
        ctx = _Context(maps={1: cmap})
        return TorchSparseTensor(feats=feats[order], stride=1, ctx=ctx)

    def _coarse_map(self, x: TorchSparseTensor, out_stride: int) -> _CoordMap:
        ctx = x.ctx
        if out_stride not in ctx.maps:
            keys = torch.unique(voxel_keys(torch.div(x.coords, out_stride, rounding_mode="floor") * out_stride))
            mask = _LIMIT - 1
            coords = torch.stack([keys >> (2 * _BITS), (keys >> _BITS) & mask, keys & mask], dim=1)
            ctx.maps[out_stride] = _CoordMap(coords=coords, keys=keys)
        return ctx.maps[out_stride]

    def _kernel_map(self, ctx: _Context, fine: int, coarse: int, kernel_size: int, dilation: int) -> KernelMap:
        key = (fine, coarse, kernel_size, dilation)
        if key not in ctx.kernel_maps:
            if kernel_size * fine * dilation >= _PAD:
                raise ValueError(f"kernel reach {kernel_size}x{fine * dilation} exceeds the coordinate padding")
            offsets = torch.as_tensor(kernel_offsets(kernel_size), device=ctx.maps[fine].keys.device)
            ctx.kernel_maps[key] = _build_kernel_map(ctx.maps[fine], ctx.maps[coarse], offsets,
                                                     step=fine * dilation)
        return ctx.kernel_maps[key]

    def conv(self, x: TorchSparseTensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel_size: int,
             stride: int, dilation: int) -> TorchSparseTensor:
        out_stride = x.stride * stride
        out_map = self._coarse_map(x, out_stride) if stride > 1 else x.ctx.maps[x.stride]
        kmap = self._kernel_map(x.ctx, x.stride, out_stride, kernel_size, dilation)
        assert len(kmap.fwd) == len(out_map.keys)
        out = _SparseConvFn.apply(x.feats, as_kernel_stack(weight), kmap)
        if bias is not None:
            out = out + bias.reshape(1, -1)
        return TorchSparseTensor(feats=out, stride=out_stride, ctx=x.ctx)

    def conv_transpose(self, x: TorchSparseTensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       kernel_size: int, stride: int) -> TorchSparseTensor:
        if x.stride % stride:
            raise ValueError(f"transposed conv stride {stride} does not divide tensor stride {x.stride}")
        out_stride = x.stride // stride
        if out_stride not in x.ctx.maps:
            raise ValueError(f"no coordinate map at tensor stride {out_stride} to transpose onto")
        kmap = self._kernel_map(x.ctx, out_stride, x.stride, kernel_size, 1)
        out = _SparseConvFn.apply(x.feats, as_kernel_stack(weight), kmap.transposed())
        if bias is not None:
            out = out + bias.reshape(1, -1)
        return TorchSparseTensor(feats=out, stride=out_stride, ctx=x.ctx)

    def features(self, x: TorchSparseTensor) -> torch.Tensor:
        return x.feats

    def with_features(self, x: TorchSparseTensor, feats: torch.Tensor) -> TorchSparseTensor:
        return TorchSparseTensor(feats=feats, stride=x.stride, ctx=x.ctx)

    def cat(self, a: TorchSparseTensor, b: TorchSparseTensor) -> TorchSparseTensor:
        if a.stride != b.stride or a.ctx is not b.ctx:
            raise ValueError(f"cat needs one coordinate map (strides {a.stride} and {b.stride})")
        return self.with_features(a, torch.cat([a.feats, b.feats], dim=1))

    def coordinates(self, x: TorchSparseTensor) -> torch.Tensor:
        return x.coords - _PAD

    def tensor_stride(self, x: TorchSparseTensor) -> int:
        return x.stride
