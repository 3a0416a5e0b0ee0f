"""MinkUNet Res16UNet34C (Choy et al. 2019), written once against the ``SparseOps`` interface.

Parameter names and shapes are MinkowskiEngine's / SpatioTemporalSegmentation's (``conv0p1s1.kernel``,
``bn0.bn.weight``, ``block1.0.conv1.kernel``, ``convtr4p16s2.kernel``, ``final.kernel``, ``final.bias``), so a
state_dict of the reference implementation loads strictly and every backend reads the same weights.

Encoder: conv0 (k5) at stride 1, then four (k2, s2) downsamplings each followed by BasicBlocks; decoder: four
(k2, s2) transposed convolutions, each concatenated with the encoder's tensor of that stride (decoder first)
and followed by BasicBlocks; ``final`` is a 1x1 classifier. The paper's teacher feature is ``block8``'s output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .sparse import SparseOps, canonical_kernel_shape


@dataclass(frozen=True)
class UNetSpec:
    layers: tuple[int, ...]
    planes: tuple[int, ...]
    init_dim: int = 32
    conv0_kernel: int = 5


# Res16UNetBase variants (SpatioTemporalSegmentation / MinkowskiEngine examples), all with BasicBlock.
ARCHITECTURES: dict[str, UNetSpec] = {
    "Res16UNet34C": UNetSpec(layers=(2, 3, 4, 6, 2, 2, 2, 2), planes=(32, 64, 128, 256, 256, 128, 96, 96)),
    "Res16UNet34B": UNetSpec(layers=(2, 3, 4, 6, 2, 2, 2, 2), planes=(32, 64, 128, 256, 64, 64, 64, 64)),
    "Res16UNet14A": UNetSpec(layers=(1, 1, 1, 1, 1, 1, 1, 1), planes=(32, 64, 128, 256, 128, 128, 96, 96)),
    "Res16UNet18A": UNetSpec(layers=(2, 2, 2, 2, 2, 2, 2, 2), planes=(32, 64, 128, 256, 128, 128, 96, 96)),
    # Ours, for CPU budgets (not a MinkowskiEngine variant): 14A's depth with narrow planes and a 3x3x3 first
    # convolution, so 48 feature channels at block8 (the paper's teacher has 96). A training step costs ~1/4 of
    # 14A's here (spconv, one thread); with 96 channels in block7/8 it cost 1.5x more and learned no faster.
    "Res16UNet14S": UNetSpec(layers=(1, 1, 1, 1, 1, 1, 1, 1), planes=(32, 48, 64, 96, 64, 64, 48, 48),
                             conv0_kernel=3),
}


class SparseConv(nn.Module):
    """A convolution's parameters in MinkowskiEngine's names and shapes; the backend does the arithmetic."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 bias: bool = False, transposed: bool = False):
        super().__init__()
        self.cin, self.cout = cin, cout
        self.kernel_size, self.stride, self.dilation, self.transposed = kernel_size, stride, dilation, transposed
        self.kernel = nn.Parameter(torch.empty(canonical_kernel_shape(cin, cout, kernel_size, stride, transposed)))
        self.bias = nn.Parameter(torch.zeros(1, cout)) if bias else None

    def reset_parameters(self, generator: torch.Generator) -> None:
        # Kaiming-normal with the fan-in of a full kernel (MinkowskiEngine examples use fan_out; either keeps
        # activations O(1) through the residual blocks).
        fan_in = self.cin * (self.kernel.shape[0] if self.kernel.dim() == 3 else 1)
        with torch.no_grad():
            self.kernel.normal_(0.0, math.sqrt(2.0 / fan_in), generator=generator)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, ops: SparseOps, x: Any) -> Any:
        if self.transposed:
            return ops.conv_transpose(x, self.kernel, self.bias, self.kernel_size, self.stride)
        return ops.conv(x, self.kernel, self.bias, self.kernel_size, self.stride, self.dilation)

    def extra_repr(self) -> str:
        kind = "transposed, " if self.transposed else ""
        return f"{self.cin}->{self.cout}, {kind}kernel={self.kernel_size}, stride={self.stride}"


class SparseBatchNorm(nn.Module):
    """MinkowskiBatchNorm's layout: the torch BatchNorm1d lives under ``.bn``."""

    def __init__(self, channels: int, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm1d(channels, momentum=momentum)

    def forward(self, ops: SparseOps, x: Any) -> Any:
        return ops.with_features(x, self.bn(ops.features(x)))


def relu(ops: SparseOps, x: Any) -> Any:
    return ops.with_features(x, torch.relu(ops.features(x)))


class Downsample(nn.Sequential):
    """1x1 projection of a residual when channels change: keys ``downsample.0.kernel``, ``downsample.1.bn.*``."""

    def __init__(self, cin: int, cout: int):
        super().__init__(SparseConv(cin, cout, kernel_size=1), SparseBatchNorm(cout))

    def forward(self, ops: SparseOps, x: Any) -> Any:  # type: ignore[override]
        return self[1](ops, self[0](ops, x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, dilation: int = 1):
        super().__init__()
        self.conv1 = SparseConv(cin, planes, kernel_size=3, dilation=dilation)
        self.norm1 = SparseBatchNorm(planes)
        self.conv2 = SparseConv(planes, planes, kernel_size=3, dilation=dilation)
        self.norm2 = SparseBatchNorm(planes)
        self.downsample = Downsample(cin, planes) if cin != planes else None

    def forward(self, ops: SparseOps, x: Any) -> Any:
        out = relu(ops, self.norm1(ops, self.conv1(ops, x)))
        out = self.norm2(ops, self.conv2(ops, out))
        residual = self.downsample(ops, x) if self.downsample is not None else x
        return ops.with_features(out, torch.relu(ops.features(out) + ops.features(residual)))


class Stage(nn.ModuleList):
    """``blockN``: a run of BasicBlocks, keys ``blockN.<i>.*``."""

    def __init__(self, cin: int, planes: int, count: int):
        super().__init__([BasicBlock(cin if i == 0 else planes, planes) for i in range(count)])

    def forward(self, ops: SparseOps, x: Any) -> Any:  # type: ignore[override]
        for block in self:
            x = block(ops, x)
        return x


# Layers whose output can be taken as the teacher feature, in forward order, with their tensor stride.
FEATURE_LAYERS: dict[str, int] = {
    "block1": 2, "block2": 4, "block3": 8, "block4": 16, "block5": 8, "block6": 4, "block7": 2, "block8": 1,
    "final": 1,
}


POINT_INPUTS = 6  # a point's own position inside its voxel (3, -0.5..0.5) and its RGB (3, rgb/255 - 0.5)


class PointHead(nn.Module):
    """Per-point logits on top of a voxel network (ours; not in MinkowskiNet): a point's voxel feature with the
    point's own sub-voxel position and colour, through a two-layer MLP, added to its voxel's ``final`` logits.

    A voxel's points all get one prediction from a voxel network, so at 8 cm a floor voxel holding a chair leg, or
    a wall voxel holding a picture's edge, costs whichever class it does not predict (the voxel ceiling: 81 % mIoU
    at 8 cm on the synthetic world, 96 % at 2 cm). The head can split such a voxel by where each point lies in it.
    The first layer is a linear map of [voxel feature, point inputs], computed as its two halves: the voxel half
    once per voxel (a voxel holds several points), the point half per point. Its last layer starts at zero, so an
    untrained head leaves the voxel logits unchanged.
    """

    def __init__(self, channels: int, out_channels: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or channels
        self.voxel = nn.Linear(channels, hidden)
        self.point = nn.Linear(POINT_INPUTS, hidden, bias=False)
        self.out = nn.Linear(hidden, out_channels)

    def reset_parameters(self, generator: torch.Generator) -> None:
        std = math.sqrt(2.0 / (self.voxel.in_features + self.point.in_features))  # Kaiming over the whole input
        with torch.no_grad():
            self.voxel.weight.normal_(0.0, std, generator=generator)
            self.voxel.bias.zero_()
            self.point.weight.normal_(0.0, std, generator=generator)
            self.out.weight.zero_()
            self.out.bias.zero_()

    def forward(self, voxel_features: torch.Tensor, point_rows: torch.Tensor, point_inputs: torch.Tensor
                ) -> torch.Tensor:
        """(M, C) voxel features, (N,) each point's voxel row, (N, POINT_INPUTS) -> (N, classes)."""
        h = self.voxel(voxel_features)[point_rows] + self.point(point_inputs.to(voxel_features.dtype))
        return self.out(torch.relu(h))


class Res16UNet(nn.Module):
    """Res16UNetBase with BasicBlock; ``forward`` returns the sparse tensor of one named layer; with a
    ``point_head``, ``point_logits`` scores every point (see ``PointHead``)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 20, architecture: str = "Res16UNet34C",
                 point_head: bool = False):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
        spec = ARCHITECTURES[architecture]
        self.architecture = architecture
        p, n, d = spec.planes, spec.layers, spec.init_dim
        self.conv0p1s1 = SparseConv(in_channels, d, kernel_size=spec.conv0_kernel)
        self.bn0 = SparseBatchNorm(d)
        self.conv1p1s2 = SparseConv(d, d, kernel_size=2, stride=2)
        self.bn1 = SparseBatchNorm(d)
        self.block1 = Stage(d, p[0], n[0])
        self.conv2p2s2 = SparseConv(p[0], p[0], kernel_size=2, stride=2)
        self.bn2 = SparseBatchNorm(p[0])
        self.block2 = Stage(p[0], p[1], n[1])
        self.conv3p4s2 = SparseConv(p[1], p[1], kernel_size=2, stride=2)
        self.bn3 = SparseBatchNorm(p[1])
        self.block3 = Stage(p[1], p[2], n[2])
        self.conv4p8s2 = SparseConv(p[2], p[2], kernel_size=2, stride=2)
        self.bn4 = SparseBatchNorm(p[2])
        self.block4 = Stage(p[2], p[3], n[3])
        self.convtr4p16s2 = SparseConv(p[3], p[4], kernel_size=2, stride=2, transposed=True)
        self.bntr4 = SparseBatchNorm(p[4])
        self.block5 = Stage(p[4] + p[2], p[4], n[4])
        self.convtr5p8s2 = SparseConv(p[4], p[5], kernel_size=2, stride=2, transposed=True)
        self.bntr5 = SparseBatchNorm(p[5])
        self.block6 = Stage(p[5] + p[1], p[5], n[5])
        self.convtr6p4s2 = SparseConv(p[5], p[6], kernel_size=2, stride=2, transposed=True)
        self.bntr6 = SparseBatchNorm(p[6])
        self.block7 = Stage(p[6] + p[0], p[6], n[6])
        self.convtr7p2s2 = SparseConv(p[6], p[7], kernel_size=2, stride=2, transposed=True)
        self.bntr7 = SparseBatchNorm(p[7])
        self.block8 = Stage(p[7] + d, p[7], n[7])
        self.final = SparseConv(p[7], out_channels, kernel_size=1, bias=True)
        self.point_head = PointHead(p[7], out_channels) if point_head else None
        self.channels = {"block1": p[0], "block2": p[1], "block3": p[2], "block4": p[3], "block5": p[4],
                         "block6": p[5], "block7": p[6], "block8": p[7], "final": out_channels}

    def reset_parameters(self, seed: int) -> None:
        """Deterministic weights from ``seed``; BN at identity (weight 1, bias 0, running stats 0/1)."""
        g = torch.Generator().manual_seed(int(seed))
        for m in self.modules():
            if isinstance(m, SparseConv):
                m.reset_parameters(g)
            elif isinstance(m, nn.BatchNorm1d):
                m.reset_parameters()
        if self.point_head is not None:
            self.point_head.reset_parameters(g)

    def point_logits(self, ops: SparseOps, block8: Any, point_rows: torch.Tensor,
                     point_inputs: torch.Tensor | None = None) -> torch.Tensor:
        """(N, classes) logits of N points from ``block8`` (this network's block8 output): ``point_rows`` = each
        point's row in block8's coordinate map, ``point_inputs`` = (N, POINT_INPUTS), needed only with a point
        head. Without one: its voxel's logits."""
        logits = ops.features(self.final(ops, block8))[point_rows]
        if self.point_head is None:
            return logits
        if point_inputs is None:
            raise ValueError("a network with a point head needs each point's inputs (teacher.point_inputs)")
        return logits + self.point_head(ops.features(block8), point_rows, point_inputs)

    def forward(self, ops: SparseOps, x: Any, layer: str = "final") -> Any:  # type: ignore[override]
        if layer not in FEATURE_LAYERS:
            raise ValueError(f"unknown feature layer {layer!r}; choose one of {list(FEATURE_LAYERS)}")

        def tap(name: str, value: Any) -> bool:  # stop at the requested layer: no wasted decoder work
            return name == layer

        def down(conv: SparseConv, bn: SparseBatchNorm, inp: Any) -> Any:
            return relu(ops, bn(ops, conv(ops, inp)))

        def up(conv: SparseConv, bn: SparseBatchNorm, inp: Any, skip: Any, block: Callable) -> Any:
            return block(ops, ops.cat(relu(ops, bn(ops, conv(ops, inp))), skip))

        out_p1 = down(self.conv0p1s1, self.bn0, x)
        out_b1p2 = self.block1(ops, down(self.conv1p1s2, self.bn1, out_p1))
        if tap("block1", out_b1p2):
            return out_b1p2
        out_b2p4 = self.block2(ops, down(self.conv2p2s2, self.bn2, out_b1p2))
        if tap("block2", out_b2p4):
            return out_b2p4
        out_b3p8 = self.block3(ops, down(self.conv3p4s2, self.bn3, out_b2p4))
        if tap("block3", out_b3p8):
            return out_b3p8
        out = self.block4(ops, down(self.conv4p8s2, self.bn4, out_b3p8))
        if tap("block4", out):
            return out
        out = up(self.convtr4p16s2, self.bntr4, out, out_b3p8, self.block5)
        if tap("block5", out):
            return out
        out = up(self.convtr5p8s2, self.bntr5, out, out_b2p4, self.block6)
        if tap("block6", out):
            return out
        out = up(self.convtr6p4s2, self.bntr6, out, out_b1p2, self.block7)
        if tap("block7", out):
            return out
        out = up(self.convtr7p2s2, self.bntr7, out, out_p1, self.block8)
        if tap("block8", out):
            return out
        return self.final(ops, out)
