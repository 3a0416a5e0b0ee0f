"""Dilated ResNet backbone with the deep stem (PSPNet's "ResNet-v1c"), output stride 8.

``width`` multiplies every width (stem 64/64/128, layer planes 64/128/256/512; each rounded to a multiple of 8,
at least 8) so that a CPU run keeps the architecture at a fraction of the cost; 1.0 is the paper's ResNet and the
only width ImageNet weights fit.

The stem is three 3x3 convolutions (3->64 stride 2, 64->64, 64->128) instead of one 7x7; layer3 and layer4 keep
stride 1 and dilate their 3x3 convolutions by 2 and 4, so layer4 is at 1/8 of the input. A feature cell i of the
1/8 grid is centred on input pixel 8i (all strided convolutions are 3x3 with padding 1), which is exactly the
K=8 sampling grid of the cache (``cache_schema.layout.grid_shape``: ceil(H/8) x ceil(W/8) cells).

Pretrained weights (``load_pretrained``) are an ImageNet state_dict with torchvision-style names. Accepted stem
layouts, all mapped onto this module's names ``conv1, bn1, conv2, bn2, conv3, bn3``:

================================  =========================================================
checkpoint keys                   maps to
================================  =========================================================
``conv1/bn1/conv2/bn2/conv3/bn3``  as is (hszhao/semseg "resnet50_v2" and our own state_dict)
``conv1.0 conv1.1 conv1.3``        ``conv1 bn1 conv2`` (deep stem stored as one Sequential,
``conv1.4 conv1.6 conv1.7``        ``bn2 conv3 bn3``    ReLUs at indices 2, 5, 8)
``stem.0 stem.1 stem.3``           ``conv1 bn1 conv2`` (mmcv/mmseg ResNetV1c)
``stem.4 stem.6 stem.7``           ``bn2 conv3 bn3``
================================  =========================================================

Prefixes ``module.`` (DataParallel) and ``backbone.`` are stripped, a top-level ``state_dict``/``model`` entry
is unwrapped, ``fc.*`` is ignored and a missing ``num_batches_tracked`` is tolerated. A torchvision 7x7 stem
(``conv1.weight`` of shape (64, 3, 7, 7)) is refused: its layer1 expects 64 input channels, not the deep stem's
128, so it cannot be mapped without leaving layers untrained. Every other mismatch is an error that lists
the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


def scaled_width(channels: int, width: float) -> int:
    """``channels`` × ``width`` rounded to a multiple of 8 (at least 8): the width multiplier's one rounding rule."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return max(8, round(channels * width / 8) * 8)


class PretrainedMismatchError(ValueError):
    """A pretrained checkpoint does not fit the backbone; the message lists every offending key."""


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        # stride on the 3x3 (ResNet v1.5 / semseg), the dilation there too
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DilatedResNet(nn.Module):
    """ResNet-{18,34,50,101} with the deep stem and output stride 8; ``forward`` returns (layer3, layer4).
    ``width`` scales every width (see the module docstring)."""

    def __init__(self, depth: int = 50, width: float = 1.0) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        kind, blocks = DEPTHS[depth]
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.width = depth, width
        stem1, stem3 = scaled_width(64, width), scaled_width(128, width)
        planes = [scaled_width(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(3, stem1, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem1)
        self.conv2 = nn.Conv2d(stem1, stem1, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem1)
        self.conv3 = nn.Conv2d(stem1, stem3, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(stem3)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = stem3
        self.layer1 = self._make_layer(block, planes[0], blocks[0], stride=1, dilation=1)
        self.layer2 = self._make_layer(block, planes[1], blocks[1], stride=2, dilation=1)
        self.layer3 = self._make_layer(block, planes[2], blocks[2], stride=1, dilation=2)
        self.layer4 = self._make_layer(block, planes[3], blocks[3], stride=1, dilation=4)
        self.layer3_channels = planes[2] * block.expansion
        self.out_channels = planes[3] * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, n: int, stride: int,
                    dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, dilation) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.layer2(self.layer1(self.maxpool(x)))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)


_SEQUENTIAL_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}


def _unwrap(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedMismatchError(f"{path}: expected a state_dict (name -> tensor), got {type(obj).__name__}")
    return obj


def map_pretrained_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a checkpoint's keys onto ``DilatedResNet`` names (see the module docstring); drops ``fc.*``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key
        for prefix in ("module.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k.startswith("fc."):
            continue
        m = re.match(r"^(conv1|stem)\.(\d+)\.(.+)$", k)
        if m and m.group(2) in _SEQUENTIAL_STEM:
            k = f"{_SEQUENTIAL_STEM[m.group(2)]}.{m.group(3)}"
        out[k] = value
    return out


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Problems fitting ``state`` into ``model`` as readable lines (empty: it fits exactly)."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing:
        problems.append(f"missing ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        problems.append(f"unexpected ({len(unexpected)}): " + ", ".join(unexpected))
    if misshaped:
        problems.append(f"mis-shaped ({len(misshaped)}): " + "; ".join(misshaped))
    return problems


def load_pretrained(backbone: DilatedResNet, path: Path | str) -> None:
    """Initialise ``backbone`` from an ImageNet ResNet state_dict at ``path`` (strict; never downloads)."""
    path = Path(path)
    if backbone.width != 1.0:
        raise PretrainedMismatchError(
            f"{path}: ImageNet weights fit only the full-width ResNet (width 1.0); this backbone has width "
            f"{backbone.width}. Train it from scratch (no pretrained) or use width 1.0.")
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
    state = map_pretrained_keys(_unwrap(torch.load(path, map_location="cpu", weights_only=True), path))
    stem = state.get("conv1.weight")
    if stem is not None and stem.shape[-1] == 7:
        raise PretrainedMismatchError(
            f"{path}: conv1.weight has shape {tuple(stem.shape)}, a torchvision 7x7 stem; this backbone uses the "
            "deep stem (three 3x3 convs 64,64,128) and its layer1 expects 128 input channels. Use a deep-stem "
            "ImageNet checkpoint (e.g. semseg's resnet{50,101}_v2 or a conv1.0/1/3/4/6/7 deep-stem ResNet).")
    problems = check_state_dict(backbone, state)
    if problems:
        raise PretrainedMismatchError(f"{path} does not fit DilatedResNet-{backbone.depth}:\n  "
                                      + "\n  ".join(problems))
    # older torchvision files carry no num_batches_tracked: keep the model's own counter for those
    state.update({k: v for k, v in backbone.state_dict().items() if k not in state})
    backbone.load_state_dict(state, strict=True)
