"""The teacher's voxel inputs: RGB (MinkowskiNet's) or RGB plus the sub-voxel mean position of the voxel's points."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_teacher_train import synth_rooms, toy_scene

from cache_schema.labels import SCANNET20
from pipeline.cli import main
from stages.extract.teacher import TeacherConfig, load_teacher
from stages.extract.teacher.checkpoint import read_state_dict, save_teacher_checkpoint
from stages.extract.teacher.teacher import INPUT_FEATURES, MAX_STRIDE, prepare_colors, voxel_inputs
from stages.extract.teacher.train import TeacherTrainConfig, train_teacher
from stages.extract.teacher.voxelize import voxelize


def _cloud(seed: int = 0, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 1.5, (n, 3)).astype(np.float32), rng.integers(0, 256, (n, 3)).astype(np.uint8))


def test_color_input_is_the_first_points_rgb():
    pts, cols = _cloud()
    vox = voxelize(pts, 0.1, align=MAX_STRIDE)
    feats = voxel_inputs(pts, cols, vox, 0.1, "color")
    assert feats.shape == (len(vox.coords), 3)
    np.testing.assert_array_equal(feats, prepare_colors(cols[vox.representative]))


def test_offset_input_is_the_mean_position_inside_the_voxel():
    # two voxels of 0.1 m: one holds points at 0.01 and 0.05 along x (mean 0.03 -> -0.2 of a voxel from its
    # centre), the other one point at its centre
    pts = np.array([[0.01, 0.05, 0.05], [0.05, 0.05, 0.05], [0.25, 0.15, 0.15]], np.float32)
    cols = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    vox = voxelize(pts, 0.1, align=MAX_STRIDE)
    feats = voxel_inputs(pts, cols, vox, 0.1, "color+offset")
    assert feats.shape == (2, 6) and feats.dtype == np.float32
    first = vox.point_voxel[0]
    np.testing.assert_allclose(feats[first, 3:], [-0.2, 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(feats[vox.point_voxel[2], 3:], [0.0, 0.0, 0.0], atol=1e-5)
    np.testing.assert_array_equal(feats[first, :3], prepare_colors(cols[:1])[0])  # colour: the first point's


def test_offsets_lie_inside_the_voxel_and_follow_the_points_not_the_grid_shift():
    pts, cols = _cloud(1)
    a = voxel_inputs(pts, cols, voxelize(pts, 0.08, align=MAX_STRIDE), 0.08, "color+offset")
    assert np.abs(a[:, 3:]).max() <= 0.5
    # a whole number of voxels further on: the same voxels, the same features
    moved = (pts.astype(np.float64) + 0.08 * np.array([7, -3, 12])).astype(np.float32)
    b = voxel_inputs(moved, cols, voxelize(moved, 0.08, align=MAX_STRIDE), 0.08, "color+offset")
    assert a.shape == b.shape
    np.testing.assert_allclose(np.sort(a[:, 3:], axis=0), np.sort(b[:, 3:], axis=0), atol=2e-3)
    # half a voxel further on: other offsets (the geometry the input describes is the points' own)
    half = (pts + np.float32(0.04)).astype(np.float32)
    c = voxel_inputs(half, cols, voxelize(half, 0.08, align=MAX_STRIDE), 0.08, "color+offset")
    assert not np.allclose(np.sort(a[:, 3:], axis=0)[: len(c)], np.sort(c[:, 3:], axis=0)[: len(a)], atol=1e-2)


def test_unknown_input_kind_is_refused():
    pts, cols = _cloud()
    with pytest.raises(ValueError, match="input_features"):
        voxel_inputs(pts, cols, voxelize(pts, 0.1), 0.1, "normals")
    with pytest.raises(ValueError, match="input_features"):
        TeacherConfig(input_features="normals")
    assert INPUT_FEATURES == {"color": 3, "color+offset": 6}
    assert TeacherConfig().in_channels == 3 and TeacherConfig(input_features="color+offset").in_channels == 6


def test_an_offset_teacher_trains_and_extraction_reads_its_input_from_the_weights(tmp_path):
    """train_teacher builds a 6-channel first convolution; load_teacher infers the input from that kernel, so
    extraction feeds the checkpoint what it was trained on whatever the caller's config says."""
    cfg = TeacherConfig(architecture="Res16UNet14A", voxel_size=0.05, backend="torch", input_features="color+offset")
    out = tmp_path / "teacher.pth"
    report = train_teacher([toy_scene("a", 0)], [toy_scene("v", 2)], SCANNET20, cfg,
                           TeacherTrainConfig(steps=3, max_points=1500, warmup_steps=1), out=out, progress=False)
    assert report["config"]["input_features"] == "color+offset"
    assert json.loads((tmp_path / "teacher.pth.json").read_text())["config"]["input_features"] == "color+offset"
    state = read_state_dict(out)
    assert state["conv0p1s1.kernel"].shape[-2] == 6
    t = load_teacher(TeacherConfig(architecture="Res16UNet14A", voxel_size=0.05, backend="torch"), out)
    assert t.cfg.input_features == "color+offset" and t.info["input_features"] == "color+offset"
    sc = toy_scene("v", 2)
    f = t.point_features(sc.points, sc.colors)
    assert f.shape == (len(sc.points), t.channels) and np.isfinite(f).all()
    # the offsets reach the network: the same colours at other sub-voxel positions give other features
    shifted = t.point_features(sc.points + np.float32(0.02), sc.colors)
    assert not np.allclose(f, shifted, atol=1e-4)


def test_a_checkpoint_with_an_unknown_input_width_is_refused(tmp_path):
    cfg = TeacherConfig(architecture="Res16UNet14A", voxel_size=0.05, backend="torch")
    t = load_teacher(cfg, init="random", seed=0)
    state = {k: v.clone() for k, v in t.net.state_dict().items()}
    k = state["conv0p1s1.kernel"]
    state["conv0p1s1.kernel"] = torch.zeros(k.shape[0], 5, k.shape[2])
    path = tmp_path / "odd.pth"
    save_teacher_checkpoint(state, path)
    with pytest.raises(ValueError, match="5 input channels"):
        load_teacher(cfg, path)


def test_train_teacher_cli_takes_the_input_features(tmp_path):
    root = tmp_path / "world"
    synth_rooms(root)
    ck = tmp_path / "t.pth"
    r = CliRunner().invoke(main, ["train-teacher", "--dataset", "scannet", "--root", str(root), "--out", str(ck),
                                  "--split-file", str(root / "scannetv2_train.txt"),
                                  "--architecture", "Res16UNet14S", "--voxel-size", "0.1", "--steps", "2",
                                  "--max-points", "2000", "--backend", "torch", "--input-features", "color+offset",
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads(ck.with_name("t.pth.json").read_text())["config"]["input_features"] == "color+offset"
    r = CliRunner().invoke(main, ["train-teacher", "--dataset", "scannet", "--root", str(root), "--out", str(ck),
                                  "--input-features", "normals"])
    assert r.exit_code != 0 and "normals" in r.output
