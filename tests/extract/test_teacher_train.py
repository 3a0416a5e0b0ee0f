"""Training the teacher on toy scenes, and the teacher-related CLI commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cache_schema.labels import SCANNET20
from pipeline.cli import main
from stages.extract.formats.records import SceneRecord
from stages.extract.teacher import TeacherConfig, load_teacher
from stages.extract.teacher.train import (
    Augmentation,
    ColorAugmentation,
    TeacherTrainConfig,
    class_weights,
    miou_from_confusion,
    pack_crops,
    train_teacher,
    voxel_targets,
)
from stages.extract.teacher.voxelize import voxelize


def toy_scene(name: str, seed: int, n: int = 2400) -> SceneRecord:
    """Floor (NYU40 2), wall (1) and a table-top box (7), colours loosely tied to the class."""
    rng = np.random.default_rng(seed)
    k = n // 3
    floor = np.c_[rng.uniform(0, 2, k), rng.uniform(0, 2, k), np.zeros(k)]
    wall = np.c_[rng.uniform(0, 2, k), np.zeros(k), rng.uniform(0, 1.5, k)]
    box = rng.uniform([0.6, 0.6, 0.4], [1.2, 1.2, 0.7], size=(n - 2 * k, 3))
    pts = np.concatenate([floor, wall, box]).astype(np.float32)
    labels = np.repeat(np.array([2, 1, 7], np.uint8), [k, k, n - 2 * k])
    base = np.array([[90, 70, 50], [200, 200, 190], [140, 40, 40]], np.float64)[np.repeat([0, 1, 2], [k, k, n - 2 * k])]
    cols = np.clip(base + rng.normal(0, 25, size=base.shape), 0, 255).astype(np.uint8)
    labels[rng.random(n) < 0.05] = 0  # some unlabelled points: ignored by the loss and the metric
    return SceneRecord(name=name, points=pts, colors=cols, labels=labels, point_ids=np.arange(n),
                       label_space=SCANNET20.name)


def synth_rooms(root, scenes: int = 3) -> None:
    """`synth --frames 0`: a few coarse 3D-only rooms in ScanNet's layout, all listed for training."""
    r = CliRunner().invoke(main, ["synth", "scannet", str(root), "--scenes", str(scenes), "--frames", "0",
                                  "--vertex-spacing", "0.1", "--seed", "3", "--quiet"])
    assert r.exit_code == 0, r.output


def test_miou_counts_only_present_classes():
    conf = np.array([[5, 1, 0], [1, 3, 0], [0, 0, 0]])
    miou, ious = miou_from_confusion(conf)
    assert ious[2] is None and abs(ious[0] - 5 / 7) < 1e-9 and abs(miou - (5 / 7 + 3 / 5) / 2) < 1e-9


def test_training_lowers_the_loss_and_beats_chance(tmp_path):
    cfg = TeacherConfig(architecture="Res16UNet14A", voxel_size=0.05, backend="torch")
    out = tmp_path / "teacher.pth"
    recipe = TeacherTrainConfig(steps=30, crops_per_step=2, max_points=2000, lr=0.01, warmup_steps=3,
                                eval_every=10, seed=0, geometry=Augmentation.off(),
                                color=ColorAugmentation(enabled=False))
    report = train_teacher([toy_scene("a", 0), toy_scene("b", 1)], [toy_scene("v", 2)], SCANNET20, cfg, recipe,
                           out=out, progress=False)
    curve = report["curve"]
    assert [c["step"] for c in curve] == [10, 20, 30] and report["steps"] == 30
    assert curve[-1]["loss"] < 0.6 * curve[0]["loss"]
    assert curve[0]["seconds"] <= curve[-1]["seconds"] and report["recipe"]["lr"] == 0.01
    # chance over 3 classes is about 1/3 (BN running statistics need a few epochs to settle)
    assert report["val"]["miou"] > 0.6
    side = json.loads((tmp_path / "teacher.pth.json").read_text())
    assert side["checkpoint_sha256"] == report["checkpoint_sha256"] and side["label_space"]["name"] == SCANNET20.name
    # the saved checkpoint is the canonical layout and loads strictly into the extraction teacher
    t = load_teacher(TeacherConfig(architecture="Res16UNet14A", voxel_size=0.05, backend="torch", layer="final"),
                     out)
    sc = toy_scene("v", 2)
    pred = t.point_features(sc.points, sc.colors).argmax(axis=1)
    train_ids = SCANNET20.to_train_ids(sc.labels)
    keep = train_ids != 255
    assert (pred[keep] == train_ids[keep]).mean() > 0.8


def test_backends_command_lists_backends():
    res = CliRunner().invoke(main, ["backends", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert set(data["backends"]) == {"torch", "minkowski", "spconv"}
    assert data["auto"] in data["backends"] and data["auto_order"] == ["spconv", "minkowski", "torch"]
    text = CliRunner().invoke(main, ["backends"]).output
    assert "torch" in text and "auto ->" in text


def test_extraction_takes_the_teachers_geometry_from_its_sidecar(tmp_path):
    """A non-default teacher (architecture, voxel size) is extracted as trained, from `train-teacher`'s sidecar;
    explicit flags win; a sidecar of other weights is refused rather than trusted."""
    from pipeline.extraction import teacher_geometry

    cfg = TeacherConfig(architecture="Res16UNet14A", voxel_size=0.05, backend="torch")
    out = tmp_path / "teacher.pth"
    train_teacher([toy_scene("a", 0)], [], SCANNET20, cfg, TeacherTrainConfig(steps=1, max_points=500), out=out,
                  progress=False)
    arch, vs, src = teacher_geometry(out, None, None)
    assert (arch, vs, src) == ("Res16UNet14A", 0.05, str(tmp_path / "teacher.pth.json"))
    assert teacher_geometry(out, "Res16UNet34C", 0.02)[:2] == ("Res16UNet34C", 0.02)
    assert teacher_geometry(None, None, None) == ("Res16UNet34C", 0.02, None)
    out.write_bytes(out.read_bytes() + b"\0")  # other weights than the sidecar describes
    with pytest.raises(ValueError, match="sha256 differs"):
        teacher_geometry(out, None, None)


def test_packed_crops_never_share_a_coarsest_cell():
    """Packed side by side, no cell of the coarsest grid (stride 16) or its neighbours holds two crops."""
    from stages.extract.teacher.teacher import MAX_STRIDE

    rng = np.random.default_rng(0)
    crops = [rng.uniform(-1, 1, (500, 3)).astype(np.float32) + 7, rng.uniform(0, 3, (400, 3)).astype(np.float32)]
    packed = pack_crops(crops, 0.05)
    assert packed.shape == (900, 3) and packed.dtype == np.float32
    cell = np.floor(packed[:, 0] / (MAX_STRIDE * 0.05)).astype(int)
    a, b = cell[:500], cell[500:]
    assert b.min() - a.max() >= 4  # kernels reach one coarse cell: a gap of several cells keeps crops apart
    # each crop keeps its shape (a translation only)
    np.testing.assert_allclose(np.ptp(packed[:500], axis=0), np.ptp(crops[0], axis=0), atol=1e-5)


def test_voxel_targets_first_point_or_ignored_when_mixed():
    pts = np.array([[0.01, 0, 0], [0.02, 0, 0], [0.31, 0, 0], [0.32, 0, 0], [0.61, 0, 0]], np.float32)
    ids = np.array([3, 3, 1, 5, 255], np.uint8)  # voxel 0 agrees, voxel 1 is mixed, voxel 2 unlabelled
    vox = voxelize(pts, 0.1)
    first = voxel_targets(ids, vox, ignore_mixed=False)
    mixed = voxel_targets(ids, vox, ignore_mixed=True)
    by_x = np.argsort(vox.coords[:, 0])
    assert list(first[by_x]) == [3, ids[vox.representative[by_x[1]]], 255]
    assert list(mixed[by_x]) == [3, 255, 255]


def test_sqrt_inverse_class_weights_favour_rare_classes_with_unit_mean():
    ids = [np.array([0] * 90 + [1] * 10 + [255] * 5, np.uint8)]
    assert class_weights(ids, 3, "none") is None
    w = class_weights(ids, 3, "sqrt-inverse")
    freq = np.array([0.9, 0.1, 0.0])
    assert abs(float((w * freq).sum()) - 1.0) < 1e-9  # the average labelled point weighs 1
    assert abs(w[1] / w[0] - 3.0) < 1e-9 and w[2] == 1.0  # sqrt(0.9 / 0.1); an absent class keeps 1


@pytest.mark.parametrize("targets", ["first", "ignore-mixed"])
def test_voxel_label_targets_train_too(tmp_path, targets):
    cfg = TeacherConfig(architecture="Res16UNet14A", voxel_size=0.05, backend="torch")
    recipe = TeacherTrainConfig(steps=2, max_points=800, voxel_targets=targets, class_weights="sqrt-inverse")
    report = train_teacher([toy_scene("a", 0)], [toy_scene("v", 2)], SCANNET20, cfg, recipe,
                           out=tmp_path / "t.pth", progress=False)
    assert np.isfinite(report["final_loss"]) and report["recipe"]["voxel_targets"] == targets


def test_bad_recipes_are_refused():
    with pytest.raises(ValueError):
        TeacherTrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError):
        TeacherTrainConfig(voxel_targets="majority")


def test_train_teacher_cli_learns_from_extra_3d_rooms_in_two_processes(tmp_path):
    """`synth --frames 0` writes 3D-only scans (no .sens), all listed for training; `train-teacher --extra-root`
    adds them to ROOT's training scans; `--processes 2` trains data-parallel and rank 0 writes one sidecar."""
    world, rooms = tmp_path / "world", tmp_path / "rooms"
    for root, extra in ((world, ["--scenes", "3", "--frames", "2"]), (rooms, ["--scenes", "2", "--frames", "0"])):
        r = CliRunner().invoke(main, ["synth", "scannet", str(root), "--seed", "3", "--size", "64x48",
                                      "--vertex-spacing", "0.1", "--quiet", *extra])
        assert r.exit_code == 0, r.output + repr(r.exception)
    assert not list(rooms.rglob("*.sens")) and list(world.rglob("*.sens"))
    assert len((rooms / "scannetv2_train.txt").read_text().split()) == 2
    out = tmp_path / "t.pth"
    args = ["train-teacher", "--dataset", "scannet", "--root", str(world), "--split-file",
            str(world / "scannetv2_train.txt"), "--val-split-file", str(world / "scannetv2_val.txt"),
            "--extra-root", str(rooms), "--architecture", "Res16UNet14S", "--voxel-size", "0.1", "--backend",
            "torch", "--steps", "2", "--crops-per-step", "2", "--max-points", "1500", "--processes", "2",
            "--eval-every", "1", "--quiet", "--out", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output + repr(r.exception)
    side = json.loads((tmp_path / "t.pth.json").read_text())
    n_train = len((world / "scannetv2_train.txt").read_text().split())
    assert side["extra_scenes"] == 2 and len(side["train_scenes"]) == n_train + 2
    assert [c["step"] for c in side["curve"]] == [1, 2] and side["val"]["miou"] >= 0
    bad = CliRunner().invoke(main, args[:-2] + ["--crops-per-step", "3", "--out", str(out)])
    assert bad.exit_code != 0 and "not divisible" in bad.output
