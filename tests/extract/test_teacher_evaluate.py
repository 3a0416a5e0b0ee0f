"""`distill-cache evaluate-teacher`: a teacher's per-class 3D IoU, its voxel ceiling and its confusions."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner
from test_teacher_point_head import VOXEL, _voxel_ceiling, layered_scene
from test_teacher_train import synth_rooms

from cache_schema.labels import SCANNET20
from pipeline.cli import main
from pipeline.commands.evaluate_teacher import confusions
from stages.extract.teacher.train import voxel_ceiling


def test_voxel_ceiling_gives_each_point_its_voxels_majority():
    sc = layered_scene("v", 9)
    ceiling = voxel_ceiling([sc], SCANNET20, VOXEL)
    assert abs(ceiling["accuracy"] - _voxel_ceiling(sc)) < 1e-12
    # the wall shares no voxel with anything: its ceiling is 1; floor and table top lose what the other wins
    assert ceiling["iou"]["wall"] == 1.0 and ceiling["iou"]["floor"] < 1.0 and ceiling["iou"]["table"] < 1.0
    assert ceiling["iou"]["chair"] is None and ceiling["points"] == len(sc.points)


def test_confusions_lists_the_largest_mistakes_as_fractions():
    conf = [[90, 6, 4, 0], [0, 10, 0, 0], [0, 0, 0, 0], [1, 0, 0, 999]]
    got = confusions(conf, ["a", "b", "c", "d"], top=1)
    assert got == {"a": {"b": 0.06}, "b": {}, "d": {}}  # 'c' has no points; d's 0.1 % is below the floor


def test_evaluate_teacher_scores_what_train_teacher_scored(tmp_path):
    root = tmp_path / "world"
    synth_rooms(root, scenes=4)
    ck = tmp_path / "t.pth"
    # 3D-only rooms are all listed for training: hold the last one out
    names = (root / "scannetv2_train.txt").read_text().split()
    val_split, train_split = tmp_path / "val.txt", tmp_path / "train.txt"
    val_split.write_text(names[-1] + "\n")
    train_split.write_text("\n".join(names[:-1]) + "\n")
    r = CliRunner().invoke(main, ["train-teacher", "--dataset", "scannet", "--root", str(root), "--out", str(ck),
                                  "--split-file", str(train_split), "--val-split-file",
                                  str(val_split), "--architecture", "Res16UNet14S", "--voxel-size", "0.1",
                                  "--steps", "3", "--max-points", "2000", "--backend", "torch", "--point-head",
                                  "--input-features", "color+offset", "--quiet"])
    assert r.exit_code == 0, r.output
    side = json.loads(ck.with_name("t.pth.json").read_text())
    args = ["evaluate-teacher", "--checkpoint", str(ck), "--dataset", "scannet", "--root", str(root),
            "--split-file", str(val_split), "--backend", "torch", "--quiet"]
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    # the same weights on the same rooms: the figure train-teacher wrote, read back from the checkpoint alone
    assert rep["miou"] == side["val"]["miou"] and rep["points"] == side["val"]["points"]
    assert rep["point_head"] is True and rep["voxel_size"] == 0.1 and rep["architecture"] == "Res16UNet14S"
    assert sum(rep["class_points"].values()) == rep["points"] == rep["voxel_ceiling"]["points"]
    conf = np.array(rep["confusion"])
    assert conf.shape == (20, 20) and conf.sum() == rep["points"]
    assert 0.0 < rep["voxel_ceiling"]["miou"] <= 1.0
    table = CliRunner().invoke(main, args)
    assert table.exit_code == 0 and "voxel ceiling" in table.output and "mistaken for" in table.output
    assert all(name in table.output for name in ("wall", "floor", "otherfurniture"))
    both = CliRunner().invoke(main, [*args, "--scenes", "scene0000_00"])
    assert both.exit_code != 0 and "not both" in both.output
