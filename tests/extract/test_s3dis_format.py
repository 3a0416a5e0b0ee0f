"""S3DIS rooms and 2D-3D-S frames: writer → reader round trips, real label tables, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA as DATA

from cache_schema.labels import IGNORE, S3DIS13
from stages.extract.formats.common import fingerprint_files
from stages.extract.formats.errors import FormatError
from stages.extract.formats.records import FrameRecord, SkipCounter
from stages.extract.formats.s3dis import (
    AREA5B_ROTATION,
    AREA5B_TRANSLATION,
    S3DISDataset,
    load_semantic_labels,
    quantize_points,
    read_2d3ds_pose,
    semantic_label_table,
    write_2d3ds_frames,
    write_s3dis_room,
    write_semantic_labels,
)


def random_room(rng: np.random.Generator, n: int):
    points = rng.uniform(-20, 20, size=(n, 3)).astype(np.float32)
    colors = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    labels = rng.integers(0, 13, size=n).astype(np.uint8)
    instances = rng.integers(0, 4, size=n).astype(np.int32)
    return points, colors, labels, instances


def random_pose(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    pose = np.eye(4)
    pose[:3, :3] = q
    pose[:3, 3] = rng.uniform(-10, 10, size=3)
    return pose


def random_frames(rng: np.random.Generator, count: int, h: int = 12, w: int = 16) -> list[FrameRecord]:
    frames = []
    for i in range(count):
        k = np.array([[rng.uniform(5, 30), 0, rng.uniform(0, w)], [0, rng.uniform(5, 30), rng.uniform(0, h)],
                      [0, 0, 1]])
        depth = rng.uniform(0.2, 20, size=(h, w)).astype(np.float32)
        depth[rng.random((h, w)) < 0.2] = 0.0
        labels = rng.integers(0, 13, size=(h, w)).astype(np.uint8)
        labels[rng.random((h, w)) < 0.2] = IGNORE
        frames.append(FrameRecord(frame_id=i, image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8), intrinsics=k,
                                  pose=random_pose(rng), depth=depth, depth_intrinsics=k.copy(), labels=labels))
    return frames


def sorted_rows(*cols: np.ndarray) -> np.ndarray:
    table = np.concatenate([np.asarray(c, np.float64).reshape(len(c), -1) for c in cols], axis=1)
    return table[np.lexsort(table.T[::-1])]


# ------------------------------------------------------------------------------------------ rooms


@pytest.mark.parametrize("seed,n", [(0, 1), (1, 57), (2, 400)])
def test_room_round_trip(tmp_path: Path, seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    points, colors, labels, instances = random_room(rng, n)
    write_s3dis_room(tmp_path, "Area_2", "office_3", points, colors, labels, instances)
    ds = S3DISDataset(tmp_path)
    assert ds.scene_names() == ["Area_2/office_3"]
    scene = ds.load_scene("Area_2/office_3")
    assert scene.points.dtype == np.float32 and scene.colors.dtype == np.uint8 and scene.labels.dtype == np.uint8
    np.testing.assert_array_equal(scene.point_ids, np.arange(n))
    np.testing.assert_array_equal(sorted_rows(scene.points, scene.colors, scene.labels),
                                  sorted_rows(quantize_points(points), colors, labels))
    assert scene.label_space == "s3dis13" and ds.skips.total == 0
    # One annotation file per (class, instance); the room file is their concatenation in reading order.
    ann = sorted(p.name for p in (tmp_path / "Stanford3dDataset_v1.2/Area_2/office_3/Annotations").iterdir())
    assert len(ann) == len({(int(c), int(i)) for c, i in zip(labels, instances, strict=True)})
    room_txt = np.loadtxt(tmp_path / "Stanford3dDataset_v1.2/Area_2/office_3/office_3.txt", ndmin=2)
    np.testing.assert_array_equal(room_txt[:, :3].astype(np.float32), scene.points)
    np.testing.assert_array_equal(room_txt[:, 3:], scene.colors)


def test_room_text_uses_three_decimals(tmp_path: Path) -> None:
    write_s3dis_room(tmp_path, "area_1", "WC_1", np.array([[1.23456, -0.0004, 7.0]]), np.array([[1, 2, 3]]),
                     np.array([2]), np.array([5]))
    text = (tmp_path / "Stanford3dDataset_v1.2/Area_1/WC_1/Annotations/wall_1.txt").read_text()
    assert text == "1.235 -0.000 7.000 1 2 3\n"


def test_stairs_are_clutter_and_unknown_classes_fail(tmp_path: Path) -> None:
    ann = tmp_path / "Stanford3dDataset_v1.2/Area_4/hallway_2/Annotations"
    ann.mkdir(parents=True)
    (ann / "stairs_1.txt").write_text("1.000 2.000 3.000 10 20 30\n")
    (ann / "floor_1.txt").write_text("0.000 0.000 0.000 1 1 1\n")
    scene = S3DISDataset(tmp_path).load_scene("Area_4/hallway_2")
    assert scene.labels.tolist() == [S3DIS13.names.index("floor"), S3DIS13.names.index("clutter")]
    (ann / "spaceship_1.txt").write_text("0.000 0.000 0.000 1 1 1\n")
    with pytest.raises(FormatError, match="spaceship_1.txt"):
        S3DISDataset(tmp_path).load_scene("Area_4/hallway_2")


def test_bad_lines_are_counted_skips(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    points, colors, _, _ = random_room(rng, 20)
    write_s3dis_room(tmp_path, "Area_5", "hallway_6", points, colors, np.full(20, 0), np.zeros(20))
    path = tmp_path / "Stanford3dDataset_v1.2/Area_5/hallway_6/Annotations/ceiling_1.txt"
    lines = path.read_bytes().split(b"\n")
    lines[3] = b"-15.4\x109 12.0 1.0 185 187 182"  # bad byte, as in a real S3DIS room
    lines[7] = b"1.0 2.0 3.0 4 5"  # a field short
    lines[9] = b"1.0 2.0 3.0 4 5 999"  # colour out of range
    path.write_bytes(b"\n".join(lines))
    skips = SkipCounter()
    scene = S3DISDataset(tmp_path).load_scene("Area_5/hallway_6", skips=skips)
    assert skips.counts == {"bad line": 3}
    assert skips.examples["bad line"][0] == f"{path}:4"
    assert len(scene.points) == 17 and scene.meta["bad_lines"] == 3
    keep = [i for i in range(20) if i not in (3, 7, 9)]
    np.testing.assert_array_equal(sorted_rows(scene.points, scene.colors),
                                  sorted_rows(quantize_points(points[keep]), colors[keep]))
    ds = S3DISDataset(tmp_path)  # without a counter the dataset keeps its own
    ds.load_scene("Area_5/hallway_6")
    assert ds.skips.counts == {"bad line": 3}


def test_scene_selection(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for area, room in (("Area_1", "office_1"), ("Area_5", "office_1"), ("Area_5", "WC_2")):
        write_s3dis_room(tmp_path, area, room, *random_room(rng, 5))
    assert S3DISDataset(tmp_path).scene_names() == ["Area_1/office_1", "Area_5/WC_2", "Area_5/office_1"]
    assert S3DISDataset(tmp_path, areas=[5]).scene_names() == ["Area_5/WC_2", "Area_5/office_1"]
    assert S3DISDataset(tmp_path, scenes=["Area_1/office_1"]).scene_names() == ["Area_1/office_1"]
    with pytest.raises(FormatError, match="Area_6/office_9"):
        S3DISDataset(tmp_path, scenes=["Area_6/office_9"]).scene_names()
    with pytest.raises(FormatError, match="Stanford3dDataset_v1.2"):
        S3DISDataset(tmp_path / "nothing").scene_names()
    skips = SkipCounter()  # a room with no 2D-3D-S images is a counted skip, not a silent empty scene
    assert list(S3DISDataset(tmp_path).frames("Area_5/WC_2", skips=skips)) == []
    assert skips.counts == {"scene without frames": 1}


# ------------------------------------------------------------------------------------------ 2D-3D-S frames


@pytest.mark.parametrize("seed,area", [(0, "area_3"), (1, "area_5b"), (2, "area_5a")])
def test_frames_round_trip(tmp_path: Path, seed: int, area: str) -> None:
    rng = np.random.default_rng(seed)
    scene = f"Area_{area[5]}/office_1"
    write_s3dis_room(tmp_path, area, "office_1", *random_room(rng, 30))
    frames = random_frames(rng, 5)
    instances = [rng.integers(1, 3, size=f.labels.shape) for f in frames]
    names = write_2d3ds_frames(tmp_path, area, "office_1", frames, instances_of_frames=instances)
    ds = S3DISDataset(tmp_path)
    got = list(ds.frames(scene))
    assert [g.name for g in got] == names and [g.frame_id for g in got] == list(range(5))
    for want, g in zip(frames, got, strict=True):
        np.testing.assert_array_equal(g.image, want.image)
        np.testing.assert_allclose(g.intrinsics, want.intrinsics, atol=1e-6, rtol=0)
        np.testing.assert_allclose(g.depth_intrinsics, want.intrinsics, atol=1e-6, rtol=0)
        np.testing.assert_allclose(g.pose, want.pose, atol=1e-6, rtol=0)
        quantized = (np.rint(want.depth.astype(np.float64) * 512) / 512).astype(np.float32)
        np.testing.assert_array_equal(g.depth, quantized)
        np.testing.assert_array_equal(g.labels, want.labels)
    assert [g.frame_id for g in ds.frames(scene, frame_skip=2)] == [0, 2, 4]
    # semantic_labels.json holds one entry per (class, instance, room) seen, named as the real ones are.
    entries = load_semantic_labels(tmp_path / "semantic_labels.json")
    assert entries[0] == "<UNK>_0_<UNK>_0_0" and len(entries) == len(set(entries))
    assert all(e.endswith(f"_office_1_{area[5]}") for e in entries[1:])
    # every input file is listed and fingerprintable
    files = ds.scene_input_files(scene)
    assert "semantic_labels.json" in files
    assert any(f.startswith(f"Stanford3dDataset_v1.2/{scene}/Annotations/") for f in files)
    assert len([f for f in files if "/data/" in f]) == 5 * 4
    assert len(fingerprint_files(tmp_path, files)) == 64


def test_semantic_labels_extend_across_rooms(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for room in ("office_1", "office_2"):
        write_s3dis_room(tmp_path, "Area_1", room, *random_room(rng, 10))
        write_2d3ds_frames(tmp_path, "area_1", room, random_frames(rng, 2))
    entries = load_semantic_labels(tmp_path / "semantic_labels.json")
    assert any(e.endswith("office_1_1") for e in entries) and any(e.endswith("office_2_1") for e in entries)
    ds = S3DISDataset(tmp_path)
    assert len(list(ds.frames("Area_1/office_1"))) == 2 and len(list(ds.frames("Area_1/office_2"))) == 2
    assert S3DISDataset(tmp_path, semantic_labels=tmp_path / "semantic_labels.json").semantic_table().shape == (
        len(entries),)


def test_area5b_fix_known_values(tmp_path: Path) -> None:
    """A camera at (1, 0, 0) looking along +x in the area_5b frame sits at A·(1,0,0) + b after the fix."""
    r_c2w = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # optical axis (camera z) = world +x
    loc = np.array([1.0, 0.0, 0.0])
    r_w2c = r_c2w.T
    d = {"camera_k_matrix": np.eye(3).tolist(), "camera_location": loc.tolist(),
         "camera_rt_matrix": np.concatenate([r_w2c, (-r_w2c @ loc)[:, None]], 1).tolist()}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(d))
    _, plain = read_2d3ds_pose(path, area="area_5a")
    np.testing.assert_allclose(plain[:3, 3], loc)
    np.testing.assert_allclose(plain[:3, :3], r_c2w)
    _, fixed = read_2d3ds_pose(path, area="area_5b")
    np.testing.assert_allclose(fixed[:3, 3], [-4.10, 5.25, 0.0])
    np.testing.assert_allclose(fixed[:3, 3], AREA5B_ROTATION @ loc + AREA5B_TRANSLATION)
    np.testing.assert_allclose(fixed[:3, 2], [0.0, -1.0, 0.0], atol=1e-12)  # the view direction turned by the yaw


def test_area5b_writer_stores_unfixed_pose(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    frame = random_frames(rng, 1)[0]
    write_s3dis_room(tmp_path, "Area_5", "office_2", *random_room(rng, 5))
    [name] = write_2d3ds_frames(tmp_path, "area_5b", "office_2", [frame])
    stored = json.loads((tmp_path / "area_5b/data/pose" / (name.split("/")[1] + "_domain_pose.json")).read_text())
    want = np.linalg.solve(AREA5B_ROTATION, frame.pose[:3, 3] - AREA5B_TRANSLATION)
    np.testing.assert_allclose(stored["camera_location"], want, atol=1e-9)
    [got] = S3DISDataset(tmp_path).frames("Area_5/office_2")
    np.testing.assert_allclose(got.pose, frame.pose, atol=1e-9)


def test_pose_json_errors_name_file_and_key(tmp_path: Path) -> None:
    good = {"camera_k_matrix": np.eye(3).tolist(), "camera_rt_matrix": np.eye(3, 4).tolist(),
            "camera_location": [0.0, 0.0, 0.0]}
    for key in good:
        path = tmp_path / f"no_{key}.json"
        path.write_text(json.dumps({k: v for k, v in good.items() if k != key}))
        with pytest.raises(FormatError) as err:
            read_2d3ds_pose(path, area="area_1")
        assert str(path) in str(err.value) and key in str(err.value)
    off = dict(good, camera_location=[0.0, 0.0, 0.05])  # 5 cm from what camera_rt_matrix says
    (tmp_path / "off.json").write_text(json.dumps(off))
    with pytest.raises(FormatError, match="off.json.*disagrees"):
        read_2d3ds_pose(tmp_path / "off.json", area="area_1")
    (tmp_path / "ok.json").write_text(json.dumps(dict(good, camera_location=[0.0, 0.0, 0.005])))
    read_2d3ds_pose(tmp_path / "ok.json", area="area_1")  # within 1 cm
    with pytest.raises(FormatError, match="missing file.*absent.json"):
        read_2d3ds_pose(tmp_path / "absent.json", area="area_1")


def test_missing_modality_file_is_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    write_s3dis_room(tmp_path, "Area_6", "lounge_1", *random_room(rng, 5))
    [name] = write_2d3ds_frames(tmp_path, "area_6", "lounge_1", random_frames(rng, 1))
    depth = tmp_path / "area_6/data/depth" / (name.split("/")[1] + "_domain_depth.png")
    depth.unlink()
    with pytest.raises(FormatError, match=f"missing file: .*{depth.name}"):
        list(S3DISDataset(tmp_path).frames("Area_6/lounge_1"))
    write_2d3ds_frames(tmp_path, "area_6", "lounge_1", random_frames(rng, 1))
    (tmp_path / "semantic_labels.json").unlink()
    with pytest.raises(FormatError, match="semantic_labels.json"):
        list(S3DISDataset(tmp_path).frames("Area_6/lounge_1"))


def test_depth_and_semantic_encoding(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    frame = random_frames(rng, 1, h=4, w=5)[0]
    frame.depth[0, 0] = 0.0
    frame.depth[0, 1] = 1.0
    frame.labels[1, 1] = IGNORE
    write_s3dis_room(tmp_path, "Area_1", "office_1", *random_room(rng, 5))
    [name] = write_2d3ds_frames(tmp_path, "area_1", "office_1", [frame])
    stem = name.split("/")[1]
    raw_depth = cv2.imread(str(tmp_path / f"area_1/data/depth/{stem}_domain_depth.png"), cv2.IMREAD_UNCHANGED)
    assert raw_depth.dtype == np.uint16 and raw_depth[0, 0] == 65535 and raw_depth[0, 1] == 512
    sem_path = tmp_path / f"area_1/data/semantic/{stem}_domain_semantic.png"
    sem = cv2.imread(str(sem_path), cv2.IMREAD_UNCHANGED)[..., ::-1]  # RGB
    assert sem[1, 1].tolist() == [13, 13, 13]
    entries = load_semantic_labels(tmp_path / "semantic_labels.json")
    index = (sem[..., 0].astype(int) << 16) | (sem[..., 1].astype(int) << 8) | sem[..., 2]
    assert entries[index[0, 0]].split("_")[0] == S3DIS13.names[frame.labels[0, 0]]
    # an index past the label list is an error naming the file, not a silent label
    sem[2, 2] = [0, 255, 0]
    cv2.imwrite(str(sem_path), sem[..., ::-1].copy())
    with pytest.raises(FormatError, match="semantic.png.*past"):
        list(S3DISDataset(tmp_path).frames("Area_1/office_1"))


# ------------------------------------------------------------------------------------------ real tables


def test_real_s3dis_class_names() -> None:
    names = (DATA / "s3dis_class_names.txt").read_text().split()
    assert tuple(names) == S3DIS13.names


def test_real_2d3ds_semantic_labels(tmp_path: Path) -> None:
    entries = load_semantic_labels(DATA / "2d3ds_semantic_labels.json")
    assert len(entries) == 9816 and entries[0] == "<UNK>_0_<UNK>_0_0"
    table = semantic_label_table(entries)
    assert table[0] == IGNORE and (table[1:] != IGNORE).all()
    assert entries[1] == "beam_10_hallway_6_1" and table[1] == S3DIS13.names.index("beam")
    # our writer extends the real table: indices stay valid and new entries go after the real ones
    write_semantic_labels(tmp_path, entries)
    rng = np.random.default_rng(11)
    write_s3dis_room(tmp_path, "Area_3", "office_11", *random_room(rng, 5))
    frames = random_frames(rng, 2)
    write_2d3ds_frames(tmp_path, "area_3", "office_11", frames)
    extended = load_semantic_labels(tmp_path / "semantic_labels.json")
    assert extended[:9816] == entries and len(extended) > 9816
    got = list(S3DISDataset(tmp_path).frames("Area_3/office_11"))
    for want, g in zip(frames, got, strict=True):
        np.testing.assert_array_equal(g.labels, want.labels)
