"""ScanNet-v2: writer → reader round trips in the three layouts, the .sens stream, and bad input."""

from __future__ import annotations

import gc
import json
import struct
import weakref
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from cache_schema.labels import SCANNET20
from stages.extract.formats.common import fingerprint_files
from stages.extract.formats.errors import FormatError
from stages.extract.formats.records import FrameRecord, MeshRecord, SkipCounter
from stages.extract.formats.scannet import (
    LabelTable,
    ScanNetDataset,
    SensFile,
    read_aggregation,
    read_labels_ply,
    read_mesh_ply,
    read_scene_meta,
    synthetic_label_table,
    write_labels_ply,
    write_mesh_ply,
    write_scannet_scan,
    write_scene_txt,
    write_sens,
)
from stages.extract.formats.scannet_labels import read_label_table, read_scene_list, write_label_table

SCENE = "scene0007_01"
LABEL_CHOICES = np.array((0,) + SCANNET20.ids + (13, 22, 38, 40), np.uint8)  # incl. non-benchmark NYU40 ids


def f32(x) -> np.ndarray:
    """Values a float32 field stores exactly, so that .sens round trips can be compared bit for bit."""
    return np.asarray(x, np.float32).astype(np.float64)


def random_pose(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    pose = np.eye(4)
    pose[:3, :3] = q * np.sign(np.linalg.det(q))
    pose[:3, 3] = rng.uniform(-5, 5, 3)
    return f32(pose)


def intrinsics(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    fx = rng.uniform(0.8, 1.2) * w
    return f32([[fx, 0, (w - 1) / 2 + rng.uniform(-2, 2)], [0, fx * rng.uniform(0.98, 1.02), (h - 1) / 2], [0, 0, 1]])


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A JPEG-friendly image (noise upsampled): pure noise would make any JPEG tolerance meaningless."""
    small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def random_frames(rng: np.random.Generator, n: int, w: int, h: int, dw: int | None = None,
                  dh: int | None = None) -> list[FrameRecord]:
    dw, dh = dw or w // 2, dh or h // 2
    ck, dk = intrinsics(w, h, rng), intrinsics(dw, dh, rng)
    frames = []
    for i in range(n):
        mm = rng.integers(0, 9000, (dh, dw)).astype(np.uint16)
        mm[rng.random((dh, dw)) < 0.1] = 0  # invalid pixels
        frames.append(FrameRecord(frame_id=i, image=smooth_image(rng, h, w), intrinsics=ck, pose=random_pose(rng),
                                  depth=mm.astype(np.float32) / np.float32(1000.0), depth_intrinsics=dk,
                                  labels=rng.choice(LABEL_CHOICES, size=(h, w))))
    return frames


def random_mesh(rng: np.random.Generator, n: int = 300) -> MeshRecord:
    labels = rng.choice(LABEL_CHOICES, size=n)
    instances = np.where(labels > 0, rng.integers(1, 6, n) + 10 * labels.astype(np.int32), 0).astype(np.int32)
    return MeshRecord(vertices=rng.uniform(-3, 3, (n, 3)).astype(np.float32),
                      colors=rng.integers(0, 256, (n, 3), dtype=np.uint8),
                      faces=rng.integers(0, n, (2 * n, 3)).astype(np.int32), labels=labels, instances=instances)


def assert_frame_equal(got: FrameRecord, want: FrameRecord, exact_pose: bool = True) -> None:
    assert got.image.shape == want.image.shape and got.image.dtype == np.uint8
    err = np.abs(got.image.astype(np.int16) - want.image.astype(np.int16)).mean()
    assert err < 4.0, f"JPEG q90 error {err}"
    np.testing.assert_array_equal(got.intrinsics, want.intrinsics)
    np.testing.assert_array_equal(got.depth_intrinsics, want.depth_intrinsics)
    np.testing.assert_array_equal(got.pose, want.pose)
    assert got.depth.dtype == np.float32
    np.testing.assert_array_equal(got.depth.view(np.uint32), want.depth.view(np.uint32))  # bit-exact
    np.testing.assert_array_equal(got.labels, want.labels)
    assert got.labels.dtype == np.uint8


# ------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("size", [(64, 48), (80, 60)])
def test_round_trip_all_layouts(tmp_path: Path, seed: int, size: tuple[int, int]):
    rng = np.random.default_rng(seed)
    w, h = size
    frames = random_frames(rng, 5 + seed * 2, w, h)
    mesh = random_mesh(rng)
    align = f32(random_pose(rng))
    write_scannet_scan(tmp_path, SCENE, mesh, iter(frames), table_rows=synthetic_label_table(),
                       layouts=("sens", "export", "25k"), axis_alignment=align)
    for layout in ("sens", "export", "25k"):
        ds = ScanNetDataset(tmp_path, layout=layout)
        assert ds.scene_names() == [SCENE]
        skips = SkipCounter()
        got = list(ds.frames(SCENE, 1, skips))
        assert skips.total == 0
        assert [g.frame_id for g in got] == list(range(len(frames)))
        for g, want in zip(got, frames, strict=True):
            assert_frame_equal(g, want)
        assert [g.frame_id for g in ds.frames(SCENE, 3)] == list(range(0, len(frames), 3))

    scene = ScanNetDataset(tmp_path).load_scene(SCENE)
    np.testing.assert_array_equal(scene.points, mesh.vertices)
    np.testing.assert_array_equal(scene.colors, mesh.colors)
    np.testing.assert_array_equal(scene.labels, mesh.labels)
    np.testing.assert_array_equal(scene.point_ids, np.arange(len(mesh.vertices)))
    np.testing.assert_array_equal(np.array(scene.meta["axis_alignment"]), align)
    assert scene.meta["label_source"] == "labels.ply" and scene.label_space == "nyu40-scannet20"


def test_label_zip_holds_raw_ids(tmp_path: Path):
    """The 2D labels on disk are raw ScanNet ids (the reader must map them), not NYU40 ids."""
    rng = np.random.default_rng(5)
    frames = random_frames(rng, 3, 32, 24)
    rows = synthetic_label_table()
    write_scannet_scan(tmp_path, SCENE, random_mesh(rng), frames, table_rows=rows, layouts=("sens", "export"))
    table = LabelTable.from_rows(rows)
    with zipfile.ZipFile(tmp_path / "scans" / SCENE / f"{SCENE}_2d-label-filt.zip") as zf:
        assert sorted(zf.namelist()) == [f"label-filt/{i}.png" for i in range(3)]
        raw = cv2.imdecode(np.frombuffer(zf.read("label-filt/1.png"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.max() > 1000
    np.testing.assert_array_equal(table.map_ids(raw), frames[1].labels)
    exported = cv2.imread(str(tmp_path / "export" / SCENE / "label-filt" / "1.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(exported, raw)


def test_aggregation_is_the_fallback_label_source(tmp_path: Path):
    rng = np.random.default_rng(3)
    mesh = random_mesh(rng)
    write_scannet_scan(tmp_path, SCENE, mesh, random_frames(rng, 2, 32, 24), table_rows=synthetic_label_table())
    scan = tmp_path / "scans" / SCENE
    table = read_label_table(tmp_path / "scannetv2-labels.combined.tsv")
    labels, inst = read_aggregation(scan / f"{SCENE}.aggregation.json",
                                    scan / f"{SCENE}_vh_clean_2.0.010000.segs.json", table, len(mesh.vertices))
    np.testing.assert_array_equal(labels, mesh.labels)
    np.testing.assert_array_equal(inst, mesh.instances)  # instance = objectId + 1
    (scan / f"{SCENE}_vh_clean_2.labels.ply").unlink()
    scene = ScanNetDataset(tmp_path).load_scene(SCENE)
    assert scene.meta["label_source"] == "aggregation"
    np.testing.assert_array_equal(scene.labels, mesh.labels)
    agg = json.loads((scan / f"{SCENE}.aggregation.json").read_text())
    assert {g["label"] for g in agg["segGroups"]} <= {r.raw_category for r in synthetic_label_table()}
    # no annotation at all (test scans): unlabelled, not an error
    (scan / f"{SCENE}.aggregation.json").unlink()
    assert ScanNetDataset(tmp_path).load_scene(SCENE).labels.max() == 0


def test_scene_txt_and_missing_alignment(tmp_path: Path):
    a = np.arange(16, dtype=np.float64).reshape(4, 4) / 7
    ck = np.array([[1170.187988, 0, 647.75], [0, 1170.187988, 483.75], [0, 0, 1]])
    write_scene_txt(tmp_path / "s.txt", axis_alignment=a, color_size=(1296, 968), depth_size=(640, 480),
                    color_intrinsics=ck, depth_intrinsics=ck / 2, num_frames=17)
    meta = read_scene_meta(tmp_path / "s.txt")
    np.testing.assert_array_equal(meta.axis_alignment, a)
    assert meta.values["colorWidth"] == "1296" and meta.values["numColorFrames"] == "17"
    assert float(meta.values["fx_color"]) == 1170.187988
    (tmp_path / "t.txt").write_text("sceneType = Office\n")
    np.testing.assert_array_equal(read_scene_meta(tmp_path / "t.txt").axis_alignment, np.eye(4))
    (tmp_path / "u.txt").write_text("axisAlignment = 1 0 0\n")
    with pytest.raises(FormatError, match="u.txt.*16"):
        read_scene_meta(tmp_path / "u.txt")


def test_sens_header_and_frames_stream_lazily(tmp_path: Path):
    rng = np.random.default_rng(9)
    frames = random_frames(rng, 6, 40, 30, 20, 16)
    alive: list[weakref.ref] = []
    most_alive = 0

    def stream():
        nonlocal most_alive
        for fr in frames:
            copy = FrameRecord(**vars(fr))
            alive.append(weakref.ref(copy))
            gc.collect()
            most_alive = max(most_alive, sum(r() is not None for r in alive))
            yield copy

    path = tmp_path / "x.sens"
    n = write_sens(path, stream(), color_intrinsics=frames[0].intrinsics, depth_intrinsics=frames[0].depth_intrinsics,
                   color_size=(40, 30), depth_size=(20, 16), sensor_name="Synth")
    assert n == 6 and most_alive <= 2  # one frame written, the next one being made
    sens = SensFile(path)
    hd = sens.header
    assert (hd.version, hd.sensor_name, hd.num_frames, hd.color_compression, hd.depth_compression) == (
        4, "Synth", 6, 2, 1)
    assert (hd.color_width, hd.color_height, hd.depth_width, hd.depth_height, hd.depth_shift) == (40, 30, 20, 16, 1000)
    assert hd.header_bytes == 304 + len("Synth")
    np.testing.assert_array_equal(sens.color_k, frames[0].intrinsics)
    np.testing.assert_array_equal(hd.color_extrinsics, np.eye(4))
    got = list(sens.iter_frames(frame_skip=2))
    assert [g.frame_id for g in got] == [0, 2, 4]
    for g in got:
        np.testing.assert_array_equal(g.depth, frames[g.frame_id].depth)
        np.testing.assert_array_equal(g.pose, frames[g.frame_id].pose)
    with pytest.raises(ValueError, match="width, height"):
        write_sens(tmp_path / "y.sens", frames, color_intrinsics=np.eye(3), depth_intrinsics=np.eye(3),
                   color_size=(30, 40), depth_size=(20, 16))


def test_fingerprint_inputs_and_scene_lists(tmp_path: Path):
    rng = np.random.default_rng(4)
    for name in ("scene0001_00", "scene0000_00"):
        write_scannet_scan(tmp_path, name, random_mesh(rng, 50), random_frames(rng, 2, 32, 24),
                           table_rows=synthetic_label_table(), layouts=("sens", "25k"))
    ds = ScanNetDataset(tmp_path)
    assert ds.scene_names() == ["scene0000_00", "scene0001_00"]
    files = ds.scene_input_files("scene0001_00")
    assert "scans/scene0001_00/scene0001_00.sens" in files and "scannetv2-labels.combined.tsv" in files
    assert all((tmp_path / f).is_file() for f in files)
    fp = fingerprint_files(tmp_path, files)
    assert fp != fingerprint_files(tmp_path, ds.scene_input_files("scene0000_00"))
    k25 = ScanNetDataset(tmp_path / "scannet_frames_25k", layout="25k")  # the 25k folder itself as root
    assert k25.scene_names() == ["scene0000_00", "scene0001_00"]
    assert len(list(k25.frames("scene0000_00"))) == 2
    split = tmp_path / "split.txt"
    split.write_text("scene0001_00\n\n")
    assert ScanNetDataset(tmp_path, split_file=split).scene_names() == ["scene0001_00"]
    assert ScanNetDataset(tmp_path, scenes=["b", "a"]).scene_names() == ["a", "b"]
    assert read_scene_list(split) == ["scene0001_00"]


def test_label_table_write_read_and_lut(tmp_path: Path):
    rows = synthetic_label_table()
    write_label_table(tmp_path / "t.tsv", rows)
    raw = (tmp_path / "t.tsv").read_bytes()
    assert raw.count(b"\r\n") == len(rows) + 1 and all(line.count(b"\t") == 16 for line in raw.split(b"\r\n")[:-1])
    t = read_label_table(tmp_path / "t.tsv")
    assert set(t.id_to_nyu40.values()) >= set(range(1, 41))
    assert t.id_to_nyu40[3000] == 39  # the duplicated id: last row wins
    lut = t.lut(4000)
    assert lut.dtype == np.uint8 and lut[1005] == 5 and lut[2008] == 8 and lut[7] == 0
    inv = t.nyu40_to_raw_id()
    assert all(t.id_to_nyu40[int(inv[k])] == k for k in range(1, 41)) and inv[0] == 0


# ------------------------------------------------------------------------------------------- bad input


def _write_small_sens(path: Path, n: int = 5, seed: int = 0, poses: dict[int, np.ndarray] | None = None):
    rng = np.random.default_rng(seed)
    frames = random_frames(rng, n, 32, 24, 16, 12)
    for i, p in (poses or {}).items():
        frames[i].pose = p
    write_sens(path, frames, color_intrinsics=frames[0].intrinsics, depth_intrinsics=frames[0].depth_intrinsics,
               color_size=(32, 24), depth_size=(16, 12))
    return frames


def _frame_offsets(path: Path) -> list[tuple[int, int, int]]:
    """(colour offset, colour bytes, depth bytes) per frame, walked from the spec, independent of the reader."""
    b = path.read_bytes()
    (name_len,) = struct.unpack_from("<Q", b, 4)
    (n,) = struct.unpack_from("<Q", b, 296 + name_len)
    pos, out = 304 + name_len, []
    for _ in range(n):
        c_n, d_n = struct.unpack_from("<2Q", b, pos + 64 + 16)
        out.append((pos + 96, c_n, d_n))
        pos += 96 + c_n + d_n
    return out


def test_truncated_sens_names_file_and_frame(tmp_path: Path):
    path = tmp_path / "t.sens"
    _write_small_sens(path)
    offsets = _frame_offsets(path)
    data = path.read_bytes()
    path.write_bytes(data[: offsets[3][0] + 10])  # cut inside frame 3's colour bytes
    sens = SensFile(path)
    it = sens.iter_frames()
    assert [next(it).frame_id for _ in range(3)] == [0, 1, 2]
    with pytest.raises(FormatError, match=r"t\.sens.*frame 3"):
        next(it)
    with pytest.raises(FormatError, match=r"t\.sens.*frame 3"):  # also when frame 3 would be skipped
        list(sens.iter_frames(frame_skip=2))
    path.write_bytes(data[:100])
    with pytest.raises(FormatError, match=r"t\.sens.*truncated"):
        SensFile(path)


def test_corrupt_jpeg_is_a_counted_skip(tmp_path: Path):
    path = tmp_path / "c.sens"
    _write_small_sens(path)
    off, c_n, _ = _frame_offsets(path)[2]
    data = bytearray(path.read_bytes())
    data[off: off + c_n] = bytes(c_n)  # zeros: not a JPEG any more
    path.write_bytes(bytes(data))
    skips = SkipCounter()
    got = [f.frame_id for f in SensFile(path).iter_frames(skips=skips)]
    assert got == [0, 1, 3, 4]
    assert skips.counts == {"corrupt colour": 1}
    assert "c.sens" in skips.examples["corrupt colour"][0] and "frame 2" in skips.examples["corrupt colour"][0]


def test_non_finite_pose_is_a_counted_skip(tmp_path: Path):
    path = tmp_path / "p.sens"
    _write_small_sens(path, poses={1: np.full((4, 4), -np.inf), 3: np.full((4, 4), -np.inf)})
    skips = SkipCounter()
    assert [f.frame_id for f in SensFile(path).iter_frames(skips=skips)] == [0, 2, 4]
    assert skips.counts == {"non-finite pose": 2}


def test_unsupported_compression(tmp_path: Path):
    path = tmp_path / "o.sens"
    _write_small_sens(path, n=1)
    data = bytearray(path.read_bytes())
    (name_len,) = struct.unpack_from("<Q", data, 4)
    struct.pack_into("<i", data, 272 + name_len, 2)  # occi_ushort
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="occi_ushort"):
        SensFile(path)


def test_missing_files_are_named(tmp_path: Path):
    rng = np.random.default_rng(2)
    write_scannet_scan(tmp_path, SCENE, random_mesh(rng, 40), random_frames(rng, 1, 32, 24),
                       table_rows=synthetic_label_table())
    scan = tmp_path / "scans" / SCENE
    (scan / f"{SCENE}_vh_clean_2.ply").unlink()
    with pytest.raises(FormatError, match=f"{SCENE}_vh_clean_2.ply"):
        ScanNetDataset(tmp_path).load_scene(SCENE)
    with pytest.raises(FormatError, match="nothing.sens"):
        list(ScanNetDataset(tmp_path, scenes=["nothing"]).frames("nothing"))
    with pytest.raises(FormatError, match="intrinsic_color.txt"):
        list(ScanNetDataset(tmp_path, layout="export").frames(SCENE))
    with pytest.raises(FormatError, match="nope.tsv"):
        read_label_table(tmp_path / "nope.tsv")


def test_ply_without_label_property_and_out_of_range_ids(tmp_path: Path):
    rng = np.random.default_rng(1)
    mesh = random_mesh(rng, 30)
    write_mesh_ply(tmp_path / "m.labels.ply", mesh)  # a mesh ply where a labels ply is expected
    with pytest.raises(FormatError, match=r"m\.labels\.ply.*'label'"):
        read_labels_ply(tmp_path / "m.labels.ply")
    mesh.labels[:4] = [50, 149, 40, 1]  # ids a few real files hold outside 1..40
    write_labels_ply(tmp_path / "l.ply", mesh)
    _, labels = read_labels_ply(tmp_path / "l.ply")
    assert labels[:4].tolist() == [0, 0, 40, 1]
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nend_header\n1\n")
    with pytest.raises(FormatError, match="bad.ply"):
        read_mesh_ply(tmp_path / "bad.ply")


def test_corrupt_label_png_is_a_counted_skip(tmp_path: Path):
    rng = np.random.default_rng(6)
    write_scannet_scan(tmp_path, SCENE, random_mesh(rng, 40), random_frames(rng, 3, 32, 24),
                       table_rows=synthetic_label_table(), layouts=("export",))
    (tmp_path / "export" / SCENE / "label-filt" / "1.png").write_bytes(b"not a png")
    skips = SkipCounter()
    assert [f.frame_id for f in ScanNetDataset(tmp_path, layout="export").frames(SCENE, 1, skips)] == [0, 2]
    assert skips.counts == {"corrupt label": 1}


def test_writer_refuses_labels_the_table_cannot_express(tmp_path: Path):
    rng = np.random.default_rng(7)
    rows = [r for r in synthetic_label_table() if r.nyu40id != 5]
    frames = random_frames(rng, 2, 32, 24)
    mesh = random_mesh(rng, 40)
    mesh.labels[:] = 0
    with pytest.raises(ValueError, match=r"frame 0.*\[5\]"):
        write_scannet_scan(tmp_path, SCENE, mesh, frames, table_rows=rows)
