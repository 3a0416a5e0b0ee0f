"""The width multiplier: PSPNet's architecture at a fraction of the cost; width 1.0 is the paper's (and yesterday's)
network exactly, parameters scale with width², ImageNet weights only fit width 1.0."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from stages.train.config import ConfigError, apply_overrides, load_config
from stages.train.model.resnet import DilatedResNet, PretrainedMismatchError, load_pretrained, scaled_width
from stages.train.model.student import Student, StudentConfig

C3D = 8


def _meta_student(**kw) -> Student:
    with torch.device("meta"):
        return Student(StudentConfig(num_classes=5, **kw))


def _params(s: Student) -> int:
    return sum(p.numel() for p in s.parameters())


def test_width_rounds_to_multiples_of_eight() -> None:
    assert [scaled_width(c, 1.0) for c in (64, 128, 256, 512)] == [64, 128, 256, 512]
    assert scaled_width(512, 0.3) == 152 and scaled_width(64, 0.25) == 16 and scaled_width(64, 0.01) == 8
    with pytest.raises(ValueError, match="width"):
        scaled_width(64, 0.0)


@pytest.mark.parametrize(("feature_channels", "n_keys", "n_params", "digest"), [
    (C3D, 402, 49106946, "d22fb0abea9e8e79"),
    (0, 370, 49069258, "d1ef6968105aea3d"),
])
def test_width_one_is_the_unscaled_model(feature_channels: int, n_keys: int, n_params: int, digest: str) -> None:
    # key/shape digests of the PSPNet-50 students as they were before the width multiplier existed (whose head
    # is today's fusion="linear")
    s = _meta_student(depth=50, feature_channels=feature_channels, width=1.0, fusion="linear")
    items = sorted((k, tuple(v.shape)) for k, v in s.state_dict().items())
    assert (len(items), _params(s)) == (n_keys, n_params)
    assert hashlib.sha256(repr(items).encode()).hexdigest()[:16] == digest
    shapes = dict(items)
    assert shapes["pspnet.backbone.conv1.weight"] == (64, 3, 3, 3)
    assert shapes["pspnet.backbone.layer4.0.conv3.weight"] == (2048, 512, 1, 1)
    assert shapes["pspnet.bottleneck.0.weight"] == (512, 4096, 3, 3)


def test_parameters_scale_with_width_squared() -> None:
    full = _params(_meta_student(depth=50, feature_channels=C3D))
    for width in (0.25, 0.5):
        ratio = _params(_meta_student(depth=50, feature_channels=C3D, width=width)) / full
        assert 0.8 * width**2 < ratio < 1.25 * width**2, (width, ratio)
    cost = _meta_student(depth=50, feature_channels=C3D, width=0.25).cost((120, 160))
    assert 0.8 / 16 < cost.macs / _meta_student(depth=50, feature_channels=C3D).cost((120, 160)).macs < 1.25 / 16


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
def test_output_shapes_at_each_width(width: float) -> None:
    torch.manual_seed(0)
    s = Student(StudentConfig(depth=18, num_classes=5, feature_channels=C3D, width=width))
    s.set_target_stats(torch.zeros(C3D), torch.ones(C3D))
    out = s.train()(torch.randn(2, 3, 33, 33))
    f2d = scaled_width(512, width)
    assert out.f2d.shape == (2, f2d, 5, 5) and out.f3d_sim.shape == (2, C3D, 5, 5)
    assert out.logits.shape == (2, 5, 33, 33) and out.aux_logits.shape == (2, 5, 33, 33)
    assert s.pspnet.backbone.out_channels == scaled_width(512, width)  # ResNet-18: expansion 1
    assert s.pspnet.ppm.reduction == s.pspnet.backbone.out_channels // 4
    assert s.pspnet.aux_head[0][0].out_channels == scaled_width(256, width)


def test_bottleneck_widths_follow_the_multiplier() -> None:
    net = DilatedResNet(50, width=0.25)
    assert (net.conv1.out_channels, net.conv3.out_channels) == (16, 32)
    assert (net.layer3_channels, net.out_channels) == (256, 512)
    with torch.no_grad():
        c3, c4 = net.eval()(torch.randn(1, 3, 33, 33))
    assert c3.shape == (1, 256, 5, 5) and c4.shape == (1, 512, 5, 5)


def test_imagenet_weights_need_full_width(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(DilatedResNet(18).state_dict(), path)
    with pytest.raises(PretrainedMismatchError, match="width 1.0"):
        load_pretrained(DilatedResNet(18, width=0.5), path)
    with pytest.raises(PretrainedMismatchError, match="width 1.0"):
        Student(StudentConfig(depth=18, num_classes=5, feature_channels=0, width=0.5, pretrained=path))
    with pytest.raises(ConfigError, match="model.width"):
        apply_overrides(load_config(), ["model.width=0.5", f"model.pretrained={path}"])
    with pytest.raises(ConfigError, match="model.width must be > 0"):
        apply_overrides(load_config(), ["model.width=0"])
    assert load_config().model.width == 1.0
