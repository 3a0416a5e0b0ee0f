"""Dilated ResNet: stride 8 and pretrained-weight loading (round trip, key mapping, readable refusals)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from stages.train.model.resnet import DilatedResNet, PretrainedMismatchError, load_pretrained, map_pretrained_keys


def test_output_stride_and_channels() -> None:
    for depth, c3, c4 in ((18, 256, 512), (50, 1024, 2048)):
        net = DilatedResNet(depth).eval()
        with torch.no_grad():
            l3, l4 = net(torch.randn(1, 3, 65, 65))
        assert l3.shape == (1, c3, 9, 9) and l4.shape == (1, c4, 9, 9)


def test_round_trip_of_own_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = DilatedResNet(18)
    state = dict(src.state_dict())
    state["fc.weight"] = torch.zeros(1000, 512)  # an ImageNet classifier is ignored
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": state}, path)
    torch.manual_seed(1)
    dst = DilatedResNet(18)
    load_pretrained(dst, path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_sequential_deep_stem_keys_are_mapped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = DilatedResNet(18)
    renames = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv1.3", "bn2": "conv1.4", "conv3": "conv1.6",
               "bn3": "conv1.7"}
    state = {}
    for k, v in src.state_dict().items():
        head, _, rest = k.partition(".")
        if head in renames and not k.endswith("num_batches_tracked"):
            state[f"module.{renames[head]}.{rest}"] = v
        elif not k.endswith("num_batches_tracked"):
            state[f"module.{k}"] = v
    assert set(map_pretrained_keys(state)) == {k for k in src.state_dict() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "seq.pth"
    torch.save(state, path)
    dst = DilatedResNet(18)
    load_pretrained(dst, path)
    assert torch.equal(dst.conv2.weight, src.conv2.weight) and torch.equal(dst.bn3.running_var, src.bn3.running_var)


def test_wrong_checkpoint_lists_bad_keys(tmp_path: Path) -> None:
    state = dict(DilatedResNet(18).state_dict())
    del state["layer2.0.conv1.weight"]
    state["layer9.extra"] = torch.zeros(1)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 128, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedMismatchError) as err:
        load_pretrained(DilatedResNet(18), path)
    msg = str(err.value)
    assert "bad.pth" in msg and "missing (1): layer2.0.conv1.weight" in msg
    assert "unexpected (1): layer9.extra" in msg
    assert "layer1.0.conv1.weight: checkpoint (64, 128, 1, 1) vs model (64, 128, 3, 3)" in msg


def test_depth_mismatch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(DilatedResNet(18).state_dict(), path)
    with pytest.raises(PretrainedMismatchError, match="missing"):
        load_pretrained(DilatedResNet(34), path)


def test_torchvision_7x7_stem_is_refused(tmp_path: Path) -> None:
    state = {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64)}
    path = tmp_path / "tv.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedMismatchError, match="7x7 stem"):
        load_pretrained(DilatedResNet(18), path)


def test_pickled_objects_are_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "pickle.pth"
    torch.save({"state_dict": DilatedResNet(18).state_dict(), "obj": Path("x")}, path)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        load_pretrained(DilatedResNet(18), path)
    with pytest.raises(FileNotFoundError):
        load_pretrained(DilatedResNet(18), tmp_path / "absent.pth")
