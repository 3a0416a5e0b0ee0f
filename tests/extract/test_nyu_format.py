"""NYU-Depth-v2 labeled set: writer → reader round trips, the real split/mapping tables, bad input."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from conftest import SHARED_DATA as DATA

from stages.extract.formats.errors import FormatError
from stages.extract.formats.nyu import (
    NUM_RAW_CLASSES,
    NYUDataset,
    nyu_intrinsics,
    read_class_mapping,
    read_splits,
    synthetic_map_class,
    synthetic_raw_labels,
    write_nyu,
)
from stages.extract.formats.records import FrameRecord


def random_frames(rng: np.random.Generator, count: int, h: int, w: int) -> list[FrameRecord]:
    return [FrameRecord(frame_id=i, image=rng.integers(0, 256, (h, w, 3), dtype=np.uint8), intrinsics=np.eye(3),
                        pose=np.eye(4), depth=rng.uniform(0, 10, (h, w)).astype(np.float32),
                        labels=rng.integers(0, 41, (h, w)).astype(np.uint8))
            for i in range(count)]


@pytest.mark.parametrize("seed,count,h,w", [(0, 1, 3, 4), (1, 7, 6, 8), (2, 12, 24, 32)])
def test_round_trip(tmp_path: Path, seed: int, count: int, h: int, w: int) -> None:
    rng = np.random.default_rng(seed)
    frames = random_frames(rng, count, h, w)
    order = rng.permutation(count)
    train, test = sorted(order[: count // 2 + 1].tolist()), order[count // 2 + 1:].tolist()
    write_nyu(tmp_path, frames, train_idx=train, test_idx=test)
    ds = NYUDataset(tmp_path, split="all")
    assert ds.scene_names() == ["nyu_train", "nyu_test"]
    for scene, idx in (("nyu_train", train), ("nyu_test", test)):
        got = list(ds.frames(scene))
        assert [g.frame_id for g in got] == idx
        for i, g in zip(idx, got, strict=True):
            np.testing.assert_array_equal(g.image, frames[i].image)
            np.testing.assert_array_equal(g.depth, frames[i].depth)
            np.testing.assert_array_equal(g.labels, frames[i].labels)
            assert g.labels.dtype == np.uint8 and g.image.shape == (h, w, 3) and g.depth.dtype == np.float32
            np.testing.assert_allclose(g.intrinsics, nyu_intrinsics(w, h), atol=1e-6)
            np.testing.assert_array_equal(g.pose, np.eye(4))
    assert [g.frame_id for g in NYUDataset(tmp_path, split="train").frames("nyu_train", frame_skip=2)] == train[::2]


def test_written_file_is_matlab_v73_shaped(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    frames = random_frames(rng, 3, 5, 7)
    write_nyu(tmp_path, frames, train_idx=[0, 2], test_idx=[1])
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    head = path.read_bytes()[:128]
    assert head.startswith(b"MATLAB 7.3 MAT-file") and head[126:128] == b"IM"
    with pytest.raises((NotImplementedError, ValueError)):
        scipy.io.loadmat(str(path))  # like the real file, only HDF5 readers open it
    with h5py.File(path, "r") as f:
        assert f["images"].shape == (3, 3, 7, 5) and f["images"].dtype == np.uint8
        assert f["depths"].shape == (3, 7, 5) and f["labels"].shape == (3, 7, 5)
        full = f["images"][:].transpose(0, 3, 2, 1)  # the documented whole-array transposition
        np.testing.assert_array_equal(full[1], frames[1].image)
        raw = f["labels"][:].transpose(0, 2, 1)
        assert raw.max() <= NUM_RAW_CLASSES and f["labels"].attrs["MATLAB_class"] == b"uint16"
    lut = np.concatenate([[0], synthetic_map_class()])
    np.testing.assert_array_equal(lut[raw[2]], frames[2].labels)
    assert len(np.unique(raw[raw > 0])) > len(np.unique(frames[0].labels))  # many raw ids per class
    splits = scipy.io.loadmat(str(tmp_path / "splits.mat"))
    assert splits["trainNdxs"].ravel().tolist() == [1, 3] and splits["testNdxs"].shape == (1, 1)


def test_synthetic_raw_labels_invert() -> None:
    nyu40 = np.tile(np.arange(41), (5, 3))
    lut = np.concatenate([[0], synthetic_map_class()])
    for frame in range(3):
        raw = synthetic_raw_labels(nyu40, frame)
        assert raw.max() <= NUM_RAW_CLASSES and (raw[nyu40 == 0] == 0).all()
        np.testing.assert_array_equal(lut[raw], nyu40)
    with pytest.raises(ValueError):
        synthetic_raw_labels(np.array([[41]]), 0)


def test_intrinsics_scale() -> None:
    k = nyu_intrinsics()
    assert k[0, 0] == pytest.approx(518.8579) and k[1, 1] == pytest.approx(519.4696)
    assert k[0, 2] == pytest.approx(325.5824) and k[1, 2] == pytest.approx(253.7362)
    half = nyu_intrinsics(320, 240)
    np.testing.assert_allclose(half[:2], k[:2] / 2)


def test_real_tables_parse() -> None:
    splits = read_splits(DATA / "nyuv2_splits.mat")
    assert len(splits["train"]) == 795 and len(splits["test"]) == 654
    both = np.concatenate([splits["train"], splits["test"]])
    assert sorted(both.tolist()) == list(range(1449))  # 0-based, disjoint, covering the labeled set
    lut = read_class_mapping(DATA / "nyuv2_classMapping40.mat")
    assert lut.shape == (NUM_RAW_CLASSES + 1,) and lut[0] == 0
    assert lut[1:].min() == 1 and lut[1:].max() == 40 and len(np.unique(lut[1:])) == 40
    assert lut[3] == 3  # raw class 3 'cabinet' → NYU40 cabinet
    # our mapping file has the real one's variables
    real = scipy.io.loadmat(str(DATA / "nyuv2_classMapping40.mat"))
    assert real["className"].shape == (1, 40) and str(real["className"][0, 0][0]) == "wall"


def test_real_tables_drive_the_reader(tmp_path: Path) -> None:
    """The reader applies whatever mapping file it is given: here the real one, over raw ids written by hand."""
    rng = np.random.default_rng(4)
    frames = random_frames(rng, 2, 4, 6)
    write_nyu(tmp_path, frames, train_idx=[0], test_idx=[1])
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "r+") as f:
        raw = rng.integers(0, NUM_RAW_CLASSES + 1, size=(6, 4)).astype(np.uint16)
        f["labels"][0] = raw
    ds = NYUDataset(tmp_path, mapping=DATA / "nyuv2_classMapping40.mat")
    [g] = ds.frames("nyu_train")
    real_map = scipy.io.loadmat(str(DATA / "nyuv2_classMapping40.mat"))["mapClass"].ravel()
    np.testing.assert_array_equal(g.labels, np.concatenate([[0], real_map])[raw.T])


def test_bad_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    write_nyu(tmp_path, random_frames(rng, 2, 4, 6), train_idx=[0], test_idx=[1])
    with pytest.raises(FormatError, match="2D-only"):
        NYUDataset(tmp_path).load_scene("nyu_train")
    with pytest.raises(FormatError, match="nyu_val"):
        list(NYUDataset(tmp_path).frames("nyu_val"))
    with pytest.raises(ValueError):
        NYUDataset(tmp_path, split="val")
    # label ids past the mapping name the file and frame
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "r+") as f:
        f["labels"][1, 0, 0] = 900
    with pytest.raises(FormatError, match=r"nyu_depth_v2_labeled.mat: frame 2 .*900"):
        list(NYUDataset(tmp_path, split="test").frames("nyu_test"))
    # split indices past the images
    scipy.io.savemat(str(tmp_path / "splits.mat"), {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2]])})
    with pytest.raises(FormatError, match="index 3 is past the 2 images"):
        list(NYUDataset(tmp_path).frames("nyu_train"))
    scipy.io.savemat(str(tmp_path / "splits.mat"), {"trainNdxs": np.array([[1]])})
    with pytest.raises(FormatError, match="splits.mat: missing variable 'testNdxs'"):
        list(NYUDataset(tmp_path).frames("nyu_train"))
    # a v5 file where the v7.3 one should be, and missing files, are named
    scipy.io.savemat(str(tmp_path / "v5.mat"), {"images": np.zeros((1, 2))})
    with pytest.raises(FormatError, match="v5.mat: not a MATLAB v7.3"):
        list(NYUDataset(tmp_path, mat=tmp_path / "v5.mat", splits=DATA / "nyuv2_splits.mat").frames("nyu_train"))
    (tmp_path / "classMapping40.mat").unlink()
    with pytest.raises(FormatError, match="missing file: .*classMapping40.mat"):
        list(NYUDataset(tmp_path, splits=DATA / "nyuv2_splits.mat").frames("nyu_train"))


def test_scene_input_files(tmp_path: Path) -> None:
    write_nyu(tmp_path, random_frames(np.random.default_rng(6), 2, 4, 6), train_idx=[0], test_idx=[1])
    files = NYUDataset(tmp_path).scene_input_files("nyu_train")
    assert files == ["nyu_depth_v2_labeled.mat", "splits.mat", "classMapping40.mat"]
