"""PSPNet (Zhao et al. 2017) on the dilated ResNet: the 2D network Φ2D of the paper's Figure 2.

    image (B,3,H,W) → backbone → layer3 (B,1024|256,H/8,W/8), layer4 (B,2048|512,H/8,W/8)
    layer4 → pyramid pooling (bins 1,2,3,6, each 1x1 conv to in/4 channels: 512 for ResNet-50/101, 128 for 18/34)
          → context = concat(layer4, 4 pooled maps)           (B,4096|1024,H/8,W/8)
    context → 3x3 conv+BN+ReLU → f2d                          (B,512,H/8,W/8)  the feature before the classifier
    [f2d | extra] → Dropout(0.1) → 1x1 conv → logits          upsampled bilinearly to (H, W)
      (with ``fuse``: [f2d | extra] → 3x3 conv+BN+ReLU (512) first: Conv3 of the paper's Figure 3)
    layer3 → 3x3 conv+BN+ReLU (256) → Dropout → 1x1 conv       auxiliary logits (loss weight 0.4, training only)

``width`` scales the backbone (resnet.py), f2d (512) and the auxiliary head (256) alike; the pyramid pooling's
reduction follows the backbone's output channels. The channel counts above are width 1.0's, the paper's PSPNet.

``extra_channels`` widens the classifier's input for features concatenated to f2d (the calibrated f3d_sim of
the distillation branch); ``fuse`` mixes the concatenation with a 3x3 conv+BN+ReLU back to f2d's width before the
classifier, so the extra features reach the logits non-linearly and in context. Without extra channels there is
nothing to fuse: the baseline is the unchanged PSPNet. Upsampling uses ``align_corners=True`` as PSPNet does:
with H = 8k+1 it is exact for the stride-8 grid whose cell i sits on pixel 8i.

In training the logits are upsampled as U_h · x · U_wᵀ in float32 (``upsample_bilinear``): the same bilinear
interpolation, written as small matrix products, whose result lies in memory channels-last (B, H, W, K) so that
the cross-entropy reads each pixel's K logits contiguously (``losses.segmentation_loss``). On a 2-core CPU this
took a head's upsampling and cross-entropy from ~21 to ~9 ms; PyTorch's NCHW log-softmax over the class
dimension was most of it. Evaluation and export keep ``F.interpolate``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.train.model.resnet import DilatedResNet, scaled_width


@functools.lru_cache(maxsize=64)
def bilinear_matrix(n_out: int, n_in: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation with ``align_corners=True``: output i samples input
    position i·(n_in − 1)/(n_out − 1), PyTorch's definition. Cached: a training run asks for the same few sizes
    every step (read-only: callers must not modify it)."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    if n_in == 1 or n_out == 1:
        m[:, 0] = 1.0
    else:
        src = torch.arange(n_out, dtype=torch.float64) * ((n_in - 1) / (n_out - 1))
        left = src.floor().long().clamp(max=n_in - 2)
        frac = src - left
        rows = torch.arange(n_out)
        m[rows, left] = 1.0 - frac
        m[rows, left + 1] += frac
    return m.to(device=device, dtype=dtype)


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=True)`` as two matrix products, in float32 whatever
    autocast says. The result is (B, K, H, W), float32, laid out channels-last: a view of a contiguous
    (B, H, W, K) tensor."""
    b, k, h, w = x.shape
    with torch.autocast(x.device.type, enabled=False):
        x = x.float().permute(0, 2, 3, 1)  # (B, h, w, K): a view when x is channels-last
        u_h = bilinear_matrix(size[0], h, x.device, x.dtype)
        u_w = bilinear_matrix(size[1], w, x.device, x.dtype)
        rows = torch.matmul(u_w, x)  # (B, h, W, K)
        out = torch.matmul(u_h, rows.reshape(b, h, size[1] * k))  # (B, H, W·K)
        return out.view(b, size[0], size[1], k).permute(0, 3, 1, 2)


def _upsample(x: torch.Tensor, size: tuple[int, int], training: bool) -> torch.Tensor:
    if training:
        return upsample_bilinear(x, size)
    return F.interpolate(x, size, mode="bilinear", align_corners=True)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: average-pool to each bin size, 1x1 reduce, upsample, concatenate."""

    def __init__(self, in_channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.reduction = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_channels, self.reduction, 1, bias=False),
                          nn.BatchNorm2d(self.reduction), nn.ReLU(inplace=True)) for b in bins)
        self.out_channels = in_channels + self.reduction * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [F.interpolate(s(x), size, mode="bilinear", align_corners=True)
                                for s in self.stages], dim=1)


@dataclass
class PSPFeatures:
    layer3: torch.Tensor  # (B, C3, H/8, W/8) input of the auxiliary head
    context: torch.Tensor  # (B, Cppm, H/8, W/8) pyramid pooling output
    f2d: torch.Tensor  # (B, 512·width, H/8, W/8)


class PSPNet(nn.Module):
    def __init__(self, depth: int = 50, num_classes: int = 20, extra_channels: int = 0, aux: bool = True,
                 width: float = 1.0, fuse: bool = False, dropout: float = 0.1,
                 bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.backbone = DilatedResNet(depth, width)
        self.ppm = PyramidPooling(self.backbone.out_channels, bins)
        f2d_channels, aux_channels = scaled_width(512, width), scaled_width(256, width)
        self.bottleneck = conv_bn_relu(self.ppm.out_channels, f2d_channels)
        self.fusion = conv_bn_relu(f2d_channels + extra_channels, f2d_channels) if fuse and extra_channels else None
        classifier_in = f2d_channels if self.fusion is not None else f2d_channels + extra_channels
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(classifier_in, num_classes, 1))
        self.aux_head = nn.Sequential(conv_bn_relu(self.backbone.layer3_channels, aux_channels),
                                      nn.Dropout2d(dropout), nn.Conv2d(aux_channels, num_classes, 1)) if aux else None
        self.f2d_channels, self.extra_channels = f2d_channels, extra_channels

    def encode(self, image: torch.Tensor) -> PSPFeatures:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"PSPNet expects images (B, 3, H, W), got {tuple(image.shape)}")
        layer3, layer4 = self.backbone(image)
        context = self.ppm(layer4)
        return PSPFeatures(layer3=layer3, context=context, f2d=self.bottleneck(context))

    def classify(self, f2d: torch.Tensor, size: tuple[int, int], extra: torch.Tensor | None = None) -> torch.Tensor:
        x = f2d if extra is None else torch.cat([f2d, extra], dim=1)
        if x.shape[1] != self.f2d_channels + self.extra_channels:
            raise ValueError(f"classifier expects {self.f2d_channels + self.extra_channels} channels, got "
                             f"{x.shape[1]}")
        if self.fusion is not None:
            x = self.fusion(x)
        return _upsample(self.classifier(x), size, self.training)

    def auxiliary(self, layer3: torch.Tensor, size: tuple[int, int]) -> torch.Tensor | None:
        if self.aux_head is None:
            return None
        return _upsample(self.aux_head(layer3), size, self.training)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Plain PSPNet logits (B, num_classes, H, W); only valid without extra classifier channels."""
        size = (image.shape[-2], image.shape[-1])
        return self.classify(self.encode(image).f2d, size)
