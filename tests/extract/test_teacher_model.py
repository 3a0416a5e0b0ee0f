"""The teacher network, its checkpoint layout and I/O, and the guards of ``point_features``."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from stages.extract.teacher import (
    CheckpointMismatchError,
    Res16UNet,
    TeacherConfig,
    checkpoint_sha256,
    load_state_dict_strict,
    load_teacher,
    read_state_dict,
    save_teacher_checkpoint,
)
from stages.extract.teacher.backend_torch import TorchOps


def room(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pts = np.c_[rng.uniform(-2, 2, n), rng.uniform(-2, 2, n), rng.uniform(0, 0.1, n)].astype(np.float32)
    return pts, rng.integers(0, 256, (n, 3)).astype(np.uint8)


def test_state_dict_has_minkowski_names_and_shapes():
    sd = Res16UNet(3, 20).state_dict()
    assert sd["conv0p1s1.kernel"].shape == (125, 3, 32)  # 5x5x5 conv0
    assert sd["conv1p1s2.kernel"].shape == (8, 32, 32)
    assert sd["bn0.bn.weight"].shape == (32,) and "bn0.bn.running_var" in sd
    assert sd["block1.0.conv1.kernel"].shape == (27, 32, 32)
    assert sd["block1.0.norm1.bn.weight"].shape == (32,)
    assert sd["block2.0.downsample.0.kernel"].shape == (32, 64)  # 1x1 kernels are (in, out) in ME 0.5
    assert sd["block2.0.downsample.1.bn.weight"].shape == (64,)
    assert sd["convtr4p16s2.kernel"].shape == (8, 256, 256)
    assert sd["block5.0.conv1.kernel"].shape == (27, 256 + 128, 256)
    assert sd["block8.1.conv2.kernel"].shape == (27, 96, 96)
    assert sd["final.kernel"].shape == (96, 20) and sd["final.bias"].shape == (1, 20)
    assert "block8.2.conv1.kernel" not in sd and "block4.5.conv2.kernel" in sd  # LAYERS (2,3,4,6,2,2,2,2)


def test_random_init_is_deterministic_and_features_are_alive():
    pts, cols = room()
    a = load_teacher(TeacherConfig(backend="torch"), init="random", seed=5)
    fa = a.point_features(pts, cols)
    fb = load_teacher(TeacherConfig(backend="torch"), init="random", seed=5).point_features(pts, cols)
    fc = load_teacher(TeacherConfig(backend="torch"), init="random", seed=6).point_features(pts, cols)
    assert fa.shape == (len(pts), 96) and fa.dtype == np.float32
    np.testing.assert_array_equal(fa, fb)
    assert not np.allclose(fa, fc)
    assert np.isfinite(fa).all() and fa.std() > 1e-3 and (fa > 0).mean() > 0.05
    assert a.info == {"architecture": "Res16UNet34C", "backend": "torch", "checkpoint_sha256": "random:5",
                      "voxel_size": 0.02, "feature_layer": "block8", "channels": 96,
                      "input_features": "color"}


def test_points_in_one_voxel_share_a_feature_and_layers_are_selectable():
    pts, cols = room(800)
    pts = np.concatenate([pts, pts + 0.001]).astype(np.float32)  # twins land in the same 2 cm voxel (mostly)
    cols = np.concatenate([cols, cols])
    t = load_teacher(TeacherConfig(backend="torch", layer="block6"), init="random", seed=1)
    f = t.point_features(pts, cols)
    assert t.channels == 128 and f.shape == (len(pts), 128)
    same = (np.floor(pts[:800] / 0.02) == np.floor(pts[800:] / 0.02)).all(axis=1)
    np.testing.assert_array_equal(f[:800][same], f[800:][same])
    with pytest.raises(ValueError, match="unknown feature layer"):
        load_teacher(TeacherConfig(layer="block9"), init="random")


def test_empty_and_nan_inputs_are_guarded():
    t = load_teacher(TeacherConfig(backend="torch"), init="random", seed=0)
    out = t.point_features(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))
    assert out.shape == (0, 96) and out.dtype == np.float32
    pts, cols = room(100)
    pts[[3, 7, 9]] = [np.nan, 0, 0], [0, np.inf, 0], [0, 0, -np.inf]
    with pytest.raises(ValueError, match="3 of 100 points have NaN/Inf"):
        t.point_features(pts, cols)
    with pytest.raises(ValueError, match="colors must be"):
        t.point_features(room(10)[0], np.zeros((9, 3), np.uint8))


def test_checkpoint_round_trip(tmp_path):
    cfg = TeacherConfig(backend="torch")
    net = Res16UNet(3, 20)
    net.reset_parameters(11)
    path = tmp_path / "teacher.pth"
    save_teacher_checkpoint(net.state_dict(), path)
    t = load_teacher(cfg, path)
    assert t.info["checkpoint_sha256"] == checkpoint_sha256(path) and len(t.info["checkpoint_sha256"]) == 64
    ref = load_teacher(cfg, init="random", seed=11)
    pts, cols = room(1500)
    np.testing.assert_array_equal(t.point_features(pts, cols), ref.point_features(pts, cols))
    # {"state_dict": ...} with DataParallel's module. prefix loads too
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, wrapped)
    assert set(read_state_dict(wrapped)) == set(net.state_dict())
    np.testing.assert_array_equal(load_teacher(cfg, wrapped).point_features(pts, cols),
                                  ref.point_features(pts, cols))


def test_mismatched_state_dict_lists_every_difference(tmp_path):
    net = Res16UNet(3, 20)
    sd = net.state_dict()
    del sd["block3.1.conv1.kernel"]
    sd["head.weight"] = torch.zeros(3)
    sd["final.kernel"] = torch.zeros(96, 13)  # trained for another label space
    with pytest.raises(CheckpointMismatchError) as err:
        load_state_dict_strict(Res16UNet(3, 20), sd, source="x.pth")
    msg = str(err.value)
    assert "missing keys (1): block3.1.conv1.kernel" in msg
    assert "unexpected keys (1): head.weight" in msg
    assert "mis-shaped final.kernel: checkpoint [96, 13], network [96, 20]" in msg
    assert err.value.missing == ["block3.1.conv1.kernel"] and err.value.unexpected == ["head.weight"]


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": argparse.Namespace(kernel=1)}, path)  # an arbitrary class: needs unpickling
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(path)
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "missing.pth")


def test_custom_autograd_matches_numerical_gradient():
    rng = np.random.default_rng(0)
    coords = torch.as_tensor(np.unique(rng.integers(0, 5, (40, 3)), axis=0))
    ops = TorchOps()
    feats = torch.randn(len(coords), 2, dtype=torch.float64, requires_grad=True)
    w3 = torch.randn(27, 2, 3, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(8, 3, 2, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(8, 2, 2, dtype=torch.float64, requires_grad=True)

    def fn(f, a, b, c):
        x = ops.from_voxels(coords, f)
        y = ops.conv(x, a, None, 3, 1, 1)
        z = ops.conv(y, b, None, 2, 2, 1)
        return ops.features(ops.conv_transpose(z, c, None, 2, 2))

    assert torch.autograd.gradcheck(fn, (feats, w3, w2, wt))


def test_checkpoint_with_other_class_count_loads_for_features(tmp_path):
    """An S3DIS teacher (13 classes) extracts features although TeacherConfig defaults to 20 classes."""
    from stages.extract.teacher import TeacherConfig, load_teacher, save_teacher_checkpoint
    from stages.extract.teacher.network import Res16UNet

    net = Res16UNet(3, 13, "Res16UNet34C")
    net.reset_parameters(1)
    path = tmp_path / "s3dis.pth"
    save_teacher_checkpoint(net.state_dict(), path)
    teacher = load_teacher(TeacherConfig(backend="torch"), path)
    rng = np.random.default_rng(0)
    feats = teacher.point_features(rng.uniform(0, 1, (500, 3)).astype(np.float32),
                                   rng.integers(0, 255, (500, 3), dtype=np.uint8))
    assert feats.shape == (500, 96) and np.isfinite(feats).all()
