"""The small sparse-op interface the teacher network is written against, and the canonical kernel layout.

Canonical weight layout = MinkowskiEngine 0.5.4's: a convolution kernel is ``(kernel_volume, in, out)`` with the
kernel offsets enumerated x-fastest (the reverse of ``itertools.product`` order); a kernel of volume 1 at stride 1
is ``(in, out)``. Each backend converts from this layout, so checkpoints have exactly one layout.

Offsets follow MinkowskiEngine: an odd kernel size K covers ``-(K-1)/2 .. (K-1)/2``, an even one ``0 .. K-1``,
both scaled by the tensor stride and the dilation. A stride-s convolution's output coordinates are the input's
floored to multiples of ``s * tensor_stride``; a transposed convolution writes onto the coordinate map of the finer
stride that the encoder produced (a U-Net's skip connection), so decoder and encoder rows line up for ``cat``.

Coordinates handed to a backend are non-negative voxel indices (the caller shifts them by a multiple of the
largest stride), which keeps every backend's floor/truncation conventions identical.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch


def kernel_offsets(kernel_size: int, dimension: int = 3) -> np.ndarray:
    """(K**D, D) int64 kernel offsets in canonical order: the first axis (x) varies fastest."""
    k = int(kernel_size)
    start = -(k - 1) // 2 if k % 2 == 1 else 0
    axis = np.arange(start, start + k, dtype=np.int64)
    # meshgrid with indexing="ij" over (z, y, x) reversed gives x the fastest-changing position.
    grids = np.meshgrid(*([axis] * dimension), indexing="ij")
    return np.stack([g.reshape(-1) for g in reversed(grids)], axis=1)


def kernel_volume(kernel_size: int, dimension: int = 3) -> int:
    return int(kernel_size) ** dimension


def canonical_kernel_shape(cin: int, cout: int, kernel_size: int, stride: int, transposed: bool) -> tuple[int, ...]:
    """The shape MinkowskiEngine 0.5.4 gives a kernel (volume-1 stride-1 kernels are a plain matrix)."""
    vol = kernel_volume(kernel_size)
    if vol == 1 and stride == 1 and not transposed:
        return (cin, cout)
    return (vol, cin, cout)


def as_kernel_stack(weight: torch.Tensor) -> torch.Tensor:
    """A canonical kernel as (K, in, out), whichever of the two canonical shapes it has."""
    return weight.unsqueeze(0) if weight.dim() == 2 else weight


class SparseOps(Protocol):
    """What the network needs from a sparse-convolution library. ``x`` is the backend's own sparse tensor."""

    name: str

    def from_voxels(self, coords: torch.Tensor, feats: torch.Tensor) -> Any:
        """A stride-1 sparse tensor from unique non-negative (N, 3) int coordinates and (N, C) features."""

    def conv(self, x: Any, weight: torch.Tensor, bias: torch.Tensor | None, kernel_size: int, stride: int,
             dilation: int) -> Any:
        """Sparse convolution; stride 1 keeps the coordinate map (submanifold), stride s > 1 coarsens it."""

    def conv_transpose(self, x: Any, weight: torch.Tensor, bias: torch.Tensor | None, kernel_size: int,
                       stride: int) -> Any:
        """Transposed convolution back onto the finer stride's existing coordinate map."""

    def features(self, x: Any) -> torch.Tensor:
        """(N, C) features, rows aligned with ``coordinates(x)``."""

    def with_features(self, x: Any, feats: torch.Tensor) -> Any:
        """The same coordinate map with new features (batch norm, ReLU, residual sums go through this)."""

    def cat(self, a: Any, b: Any) -> Any:
        """Channel concatenation of two tensors on the same coordinate map (``a`` first)."""

    def coordinates(self, x: Any) -> torch.Tensor:
        """(N, 3) int64 coordinates in stride-1 voxel units, rows aligned with ``features(x)``."""

    def tensor_stride(self, x: Any) -> int: ...
