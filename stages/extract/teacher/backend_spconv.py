"""spconv 2.x behind ``SparseOps``: its modules run with the canonical kernels converted per call.

spconv keeps weights as ``(out, k_x, k_y, k_z, in)`` when the indices are given in (x, y, z) order, so a canonical
x-fastest ``(K, in, out)`` kernel is reshaped to ``(k_z, k_y, k_x, in, out)`` and permuted. Strided convolutions
must have kernel == stride (the U-Net's k2 s2), where spconv's output set equals MinkowskiEngine's floor-pooled
one; a transposed convolution reuses the pairs of the strided convolution that made its target map (spconv's
``indice_key``), which places it exactly on the encoder's coordinates. CPU kernels are float32/float16 only.

spconv 2.3.8's CPU convolution races when torch runs more than one thread: two runs of the same input differed
by up to 6% of the feature scale here, while single-threaded runs match the torch backend to 2e-7. Its CPU
convolutions therefore run with one torch thread (restored afterwards).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import spconv.pytorch as spconv
import torch
from torch.func import functional_call

from .sparse import as_kernel_stack


def to_spconv_weight(weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    w = as_kernel_stack(weight)
    k = kernel_size
    return w.reshape(k, k, k, w.shape[1], w.shape[2]).permute(4, 2, 1, 0, 3).contiguous()


@contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class SpconvTensor:
    t: spconv.SparseConvTensor
    stride: int


class SpconvOps:
    name = "spconv"

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self._modules: dict[tuple, torch.nn.Module] = {}
        if not torch.cuda.is_available():
            # spconv's CPU backward asks for a CUDA stream (upstream issue 366); there is none to ask for.
            import spconv.pytorch.ops as spops

            spops.get_current_stream = lambda: 0

    def _module(self, kind: str, cin: int, cout: int, k: int, s: int, d: int, key: str) -> torch.nn.Module:
        sig = (kind, cin, cout, k, s, d, key)
        if sig not in self._modules:
            if kind == "subm":
                m = spconv.SubMConv3d(cin, cout, k, dilation=d, padding=(k - 1) // 2 * d, bias=False, indice_key=key)
            elif kind == "down":
                m = spconv.SparseConv3d(cin, cout, k, stride=s, padding=0, bias=False, indice_key=key)
            else:
                m = spconv.SparseInverseConv3d(cin, cout, k, bias=False, indice_key=key)
            self._modules[sig] = m.to(self.device)
        return self._modules[sig]

    def from_voxels(self, coords: torch.Tensor, feats: torch.Tensor) -> SpconvTensor:
        if len(coords) == 0:
            raise ValueError("spconv needs at least one voxel (guard empty inputs first)")
        c = coords.to(device=feats.device, dtype=torch.int32)
        shape = [int(v) for v in ((c.max(dim=0).values // 16 + 1) * 16).tolist()]
        idx = torch.cat([torch.zeros(len(c), 1, dtype=torch.int32, device=c.device), c], dim=1)
        return SpconvTensor(spconv.SparseConvTensor(feats, idx, shape, batch_size=1), stride=1)

    def conv(self, x: SpconvTensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel_size: int,
             stride: int, dilation: int) -> SpconvTensor:
        w = as_kernel_stack(weight)
        cin, cout = w.shape[1], w.shape[2]
        if kernel_size == 1 and stride == 1:  # a plain matrix product (spconv's own 1x1 path reads weights otherwise)
            feats = x.t.features @ w[0]
            return self.with_features(x, feats if bias is None else feats + bias.reshape(1, -1))
        if stride == 1:
            m = self._module("subm", cin, cout, kernel_size, 1, dilation, f"subm{x.stride}_{kernel_size}_{dilation}")
        elif kernel_size == stride and dilation == 1:
            m = self._module("down", cin, cout, kernel_size, stride, 1, f"down{x.stride}_{kernel_size}")
        else:
            raise NotImplementedError(f"spconv backend: strided conv needs kernel == stride (got k{kernel_size} "
                                      f"s{stride} d{dilation}); use the torch or minkowski backend")
        with _one_thread(self.device):
            out = functional_call(m, {"weight": to_spconv_weight(w, kernel_size)}, (x.t,))
        if bias is not None:
            out = out.replace_feature(out.features + bias.reshape(1, -1))
        return SpconvTensor(out, x.stride * stride)

    def conv_transpose(self, x: SpconvTensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel_size: int,
                       stride: int) -> SpconvTensor:
        if kernel_size != stride:
            raise NotImplementedError(f"spconv backend: transposed conv needs kernel == stride "
                                      f"(got k{kernel_size} s{stride})")
        fine = x.stride // stride
        w = as_kernel_stack(weight)
        m = self._module("up", w.shape[1], w.shape[2], kernel_size, stride, 1, f"down{fine}_{kernel_size}")
        with _one_thread(self.device):
            out = functional_call(m, {"weight": to_spconv_weight(w, kernel_size)}, (x.t,))
        if bias is not None:
            out = out.replace_feature(out.features + bias.reshape(1, -1))
        return SpconvTensor(out, fine)

    def features(self, x: SpconvTensor) -> torch.Tensor:
        return x.t.features

    def with_features(self, x: SpconvTensor, feats: torch.Tensor) -> SpconvTensor:
        return SpconvTensor(x.t.replace_feature(feats), x.stride)

    def cat(self, a: SpconvTensor, b: SpconvTensor) -> SpconvTensor:
        if a.stride != b.stride or a.t.indices.shape != b.t.indices.shape:
            raise ValueError(f"cat needs one coordinate map (strides {a.stride} and {b.stride})")
        return self.with_features(a, torch.cat([a.t.features, b.t.features], dim=1))

    def coordinates(self, x: SpconvTensor) -> torch.Tensor:
        return x.t.indices[:, 1:].to(torch.int64) * x.stride

    def tensor_stride(self, x: SpconvTensor) -> int:
        return x.stride
