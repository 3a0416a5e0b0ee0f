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
from stages.extract.teacher.train import miou_from_confusion, train_teacher


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


def test_miou_counts_only_present_classes():
    conf = np.array([[5, 1, 0], [1, 3, 0], [0, 0, 0]])
    miou, ious = miou_from_confusion(conf)
    assert ious[2] is None and abs(ious[0] - 5 / 7) < 1e-9 and abs(miou - (5 / 7 + 3 / 5) / 2) < 1e-9


def test_training_lowers_the_loss_and_beats_chance(tmp_path):
    cfg = TeacherConfig(architecture="Res16UNet14A", voxel_size=0.05, backend="torch")
    out = tmp_path / "teacher.pth"
    report = train_teacher([toy_scene("a", 0), toy_scene("b", 1)], [toy_scene("v", 2)], SCANNET20, cfg,
                           epochs=10, lr=0.01, seed=0, out=out, progress=False, optimizer="adam", max_points=2000)
    losses = [h["loss"] for h in report["history"]]
    assert losses[-1] < 0.6 * losses[0]
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
    train_teacher([toy_scene("a", 0)], [], SCANNET20, cfg, epochs=1, lr=0.01, seed=0, out=out, progress=False,
                  max_points=500)
    arch, vs, src = teacher_geometry(out, None, None)
    assert (arch, vs, src) == ("Res16UNet14A", 0.05, str(tmp_path / "teacher.pth.json"))
    assert teacher_geometry(out, "Res16UNet34C", 0.02)[:2] == ("Res16UNet34C", 0.02)
    assert teacher_geometry(None, None, None) == ("Res16UNet34C", 0.02, None)
    out.write_bytes(out.read_bytes() + b"\0")  # other weights than the sidecar describes
    with pytest.raises(ValueError, match="sha256 differs"):
        teacher_geometry(out, None, None)
