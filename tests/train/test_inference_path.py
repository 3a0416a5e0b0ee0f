"""The shared inference path on stand-in models: sliding-window stitching, padding, scales, flips, base size; and
the ONNX-exportable adaptive pooling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stages.train.predict.export import MatrixAdaptiveAvgPool2d, with_exportable_pooling
from stages.train.predict.inference import (
    InferenceConfig,
    predict_probabilities,
    resolve_window,
    scaled_size,
    window_starts,
)


class PerPixel:
    """A per-pixel linear classifier (1x1 convolution): translation-equivariant and blind to its neighbours, so any
    correct stitching of windows reproduces the whole-image result exactly. Records the input sizes it saw."""

    def __init__(self, classes: int = 5) -> None:
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)
        self.sizes: list[tuple[int, ...]] = []

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape))
        return self.conv(x)


def test_window_starts_cover_and_end_flush():
    assert window_starts(50, 65, 44) == [0]
    assert window_starts(65, 65, 44) == [0]
    starts = window_starts(200, 65, 44)
    assert starts == [0, 44, 88, 132, 135] and starts[-1] + 65 == 200
    assert all(b - a <= 44 for a, b in zip(starts, starts[1:], strict=False))  # no gap between windows


def test_sliding_windows_stitch_exactly_and_only_see_the_window_size():
    model = PerPixel()
    x = torch.randn(3, 3, 70, 150)  # shorter than the window (padded), wider (slid)
    whole = model(x).softmax(1)
    model.sizes.clear()
    cfg = InferenceConfig(window=(80, 64), max_batch=4)
    got = predict_probabilities(model, x, cfg)
    assert torch.allclose(got, whole, atol=1e-6)
    assert {s[-2:] for s in model.sizes} == {(80, 64)} and max(s[0] for s in model.sizes) <= 4
    assert sum(s[0] for s in model.sizes) == 3 * len(window_starts(150, 64, 43))  # each window once per image
    flipped = predict_probabilities(model, x, InferenceConfig(window=(80, 64), flip=True, max_batch=4))
    assert torch.allclose(flipped, whole, atol=1e-6)  # a per-pixel model is flip-equivariant


def test_windows_pad_with_the_mean_colour():
    """Padding is 0 in normalized space (the mean colour, as the training crops are padded): a model that predicts
    the mean colour's class sees exactly that outside the image."""
    seen = []

    def model(x):
        seen.append(x)
        return x[:, :2]

    predict_probabilities(model, torch.ones(1, 3, 20, 30), InferenceConfig(window=(40, 40)))
    (x,) = seen
    assert x.shape == (1, 3, 40, 40)
    assert float(x[..., 10:30, 5:35].min()) == 1.0 and float(x.sum()) == 3 * 20 * 30


def test_scales_flip_and_output_size():
    model = PerPixel()
    x = torch.randn(2, 3, 41, 57)
    multi = predict_probabilities(model, x, InferenceConfig(scales=(0.5, 1.0, 1.75), flip=True))
    assert multi.shape == (2, 5, 41, 57) and torch.allclose(multi.sum(1), torch.ones(2, 41, 57), atol=1e-5)
    assert {s[-2:] for s in model.sizes} >= {(20, 28), (72, 100)}
    out = predict_probabilities(model, x, InferenceConfig(scales=(0.75,)), out_size=(82, 114))
    assert out.shape == (2, 5, 82, 114)


def test_base_size_sets_the_long_side():
    assert scaled_size((480, 640), 1.0, None) == (480, 640)
    assert scaled_size((968, 1296), 1.0, 640) == (478, 640)
    assert scaled_size((968, 1296), 0.5, 640) == (239, 320)
    assert scaled_size((640, 480), 1.5, 640) == (960, 720)  # portrait: the height is the long side
    assert scaled_size((10, 10), 0.1, None) == (8, 8)


def test_window_resolution():
    assert resolve_window("crop", 65, None) == (65, 65)
    assert resolve_window("whole", 65, None) is None
    assert resolve_window((48, 64), 65, None) == (48, 64)
    assert resolve_window("crop", 65, (97, 129)) == (97, 129)  # a fixed-size model slides its own size
    with pytest.raises(ValueError, match="only takes 129x97"):
        resolve_window("whole", 65, (97, 129))
    with pytest.raises(ValueError, match="scales"):
        InferenceConfig(scales=(1.0, 0.0))


@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_matrix_adaptive_pooling_equals_pytorch(bins):
    pool, ref = MatrixAdaptiveAvgPool2d(bins), nn.AdaptiveAvgPool2d(bins)
    for hw in [(9, 9), (7, 13), (60, 80), (1, 1), (5, 3)]:
        x = torch.randn(2, 4, *hw)
        assert torch.allclose(pool(x), ref(x), atol=1e-6), hw


def test_exportable_copy_replaces_only_the_pooling():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Sequential(nn.AdaptiveAvgPool2d(3), nn.ReLU()))
    copy = with_exportable_pooling(model)
    assert isinstance(copy[1][0], MatrixAdaptiveAvgPool2d) and isinstance(model[1][0], nn.AdaptiveAvgPool2d)
    x = torch.randn(1, 3, 11, 17)
    assert torch.allclose(copy(x), model(x), atol=1e-6)


def test_forward_views_counts_what_the_model_sees():
    model = PerPixel()
    cfg = InferenceConfig(scales=(0.5, 1.0, 1.5), flip=True, window=(40, 40), max_batch=1)
    predict_probabilities(model, torch.randn(1, 3, 60, 90), cfg)
    assert len(model.sizes) == cfg.forward_views((60, 90)) == 2 * (1 * 2 + 2 * 3 + 3 * 5)  # 30x45, 60x90, 90x135
    assert InferenceConfig(scales=(1.0, 2.0)).forward_views((60, 90)) == 2
