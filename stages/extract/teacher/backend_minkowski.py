"""MinkowskiEngine 0.5.4 behind ``SparseOps``: its convolution functions fed with the canonical kernels.

The canonical layout *is* MinkowskiEngine's (x-fastest offsets, ``(K, in, out)``; ``(in, out)`` for volume-1
stride-1 kernels), so weights pass through unchanged. Output coordinate maps are left to MinkowskiEngine, as in
its own U-Nets: a strided conv creates (or reuses) the coarser map, a transposed conv finds the finer one.
MinkowskiEngine misbehaves on an empty coordinate map, so empty inputs are refused before reaching it.
"""

from __future__ import annotations

import MinkowskiEngine as ME
import torch
from MinkowskiEngineBackend._C import ConvolutionMode

from .sparse import kernel_volume


class MinkowskiOps:
    name = "minkowski"

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self._generators: dict[tuple[int, int, int], ME.KernelGenerator] = {}

    def _generator(self, kernel_size: int, stride: int, dilation: int) -> ME.KernelGenerator:
        key = (kernel_size, stride, dilation)
        if key not in self._generators:
            self._generators[key] = ME.KernelGenerator(kernel_size=kernel_size, stride=stride, dilation=dilation,
                                                       dimension=3)
        return self._generators[key]

    def from_voxels(self, coords: torch.Tensor, feats: torch.Tensor) -> ME.SparseTensor:
        if len(coords) == 0:
            raise ValueError("MinkowskiEngine cannot run on an empty coordinate map (guard empty inputs first)")
        batch = torch.zeros(len(coords), 1, dtype=torch.int32, device=coords.device)
        c = torch.cat([batch, coords.to(torch.int32)], dim=1)
        return ME.SparseTensor(features=feats, coordinates=c, device=str(feats.device))

    def _apply(self, fn, x: ME.SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel_size: int,
               stride: int, dilation: int) -> ME.SparseTensor:
        out_key = ME.CoordinateMapKey(x.coordinate_map_key.get_coordinate_size())
        feats = fn.apply(x.F, weight, self._generator(kernel_size, stride, dilation), ConvolutionMode.DEFAULT,
                         x.coordinate_map_key, out_key, x.coordinate_manager)
        if bias is not None:
            feats = feats + bias.reshape(1, -1)
        return ME.SparseTensor(feats, coordinate_map_key=out_key, coordinate_manager=x.coordinate_manager)

    def conv(self, x: ME.SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel_size: int,
             stride: int, dilation: int) -> ME.SparseTensor:
        if kernel_volume(kernel_size) == 1 and stride == 1:  # ME's own shortcut: a plain matrix product
            feats = x.F @ weight.reshape(weight.shape[-2], weight.shape[-1])
            return self.with_features(x, feats if bias is None else feats + bias.reshape(1, -1))
        return self._apply(ME.MinkowskiConvolutionFunction, x, weight, bias, kernel_size, stride, dilation)

    def conv_transpose(self, x: ME.SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       kernel_size: int, stride: int) -> ME.SparseTensor:
        return self._apply(ME.MinkowskiConvolutionTransposeFunction, x, weight, bias, kernel_size, stride, 1)

    def features(self, x: ME.SparseTensor) -> torch.Tensor:
        return x.F

    def with_features(self, x: ME.SparseTensor, feats: torch.Tensor) -> ME.SparseTensor:
        return ME.SparseTensor(feats, coordinate_map_key=x.coordinate_map_key, coordinate_manager=x.coordinate_manager)

    def cat(self, a: ME.SparseTensor, b: ME.SparseTensor) -> ME.SparseTensor:
        return ME.cat(a, b)

    def coordinates(self, x: ME.SparseTensor) -> torch.Tensor:
        return x.C[:, 1:].to(torch.int64)

    def tensor_stride(self, x: ME.SparseTensor) -> int:
        return int(x.tensor_stride[0])
