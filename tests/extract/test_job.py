"""The scene job and driver on an in-memory dataset and a deterministic stand-in teacher."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from cache_schema import (
    S3DIS13,
    SCANNET20,
    CacheWriter,
    DatasetInfo,
    ImageEncoding,
    Manifest,
    ProjectionParams,
    TeacherInfo,
    open_cache,
)
from cache_schema.image_codec import decode_image
from stages.extract.formats.records import FrameRecord, SceneRecord, SkipCounter
from stages.extract.job import ExtractionError, JobConfig, extract_scene, scale_intrinsics
from stages.extract.label_embedding import LabelEmbeddingTeacher
from stages.extract.projection import ProjectionConfig, project_points

H, W = 48, 64
K = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])


class PositionTeacher:
    """Features = the point's coordinates repeated: lets a test check which point landed where."""

    channels = 6

    def point_features(self, points, colors):
        return np.concatenate([points, points * 0.5], axis=1).astype(np.float32)


class MemoryDataset:
    name = "scannet"
    label_space = "nyu40-scannet20"
    has_3d = True
    root = None

    def __init__(self, n_frames=4, bad_pose_frames=(), nan_points=0, size_mismatch_frame=None):
        rng = np.random.default_rng(0)
        pts = rng.uniform([-2, -1.5, 2], [2, 1.5, 5], size=(3000, 3)).astype(np.float32)
        pts[:nan_points] = np.nan
        self.scene = SceneRecord("scene0000_00", pts, rng.integers(0, 255, (3000, 3), dtype=np.uint8),
                                 rng.choice(np.array(SCANNET20.ids, np.uint8), 3000), np.arange(3000), self.label_space)
        self.n_frames, self.bad, self.mismatch = n_frames, set(bad_pose_frames), size_mismatch_frame

    def scene_names(self):
        return ["scene0000_00"]

    def load_scene(self, name):
        return self.scene

    def scene_input_files(self, name):
        return []

    def frames(self, name, frame_skip=1, skips: SkipCounter | None = None) -> Iterator[FrameRecord]:
        for i in range(0, self.n_frames, frame_skip):
            pose = np.eye(4)
            pose[0, 3] = 0.05 * i
            if i in self.bad:
                pose[:] = -np.inf
            img = np.full((H, W, 3), 10 * i, np.uint8)
            k = K.copy()
            if i == self.mismatch:
                k[0, 2] = 300.0
            yield FrameRecord(frame_id=i, image=img, intrinsics=k, pose=pose,
                              labels=np.full((H, W), 5, np.uint8), depth=None)


def _writer(tmp_path, channels=6, scenes=("scene0000_00",), features="float16", name="c"):
    m = Manifest(dataset=DatasetInfo("scannet", SCANNET20.to_json(), list(scenes)), projection=ProjectionParams(),
                 teacher=TeacherInfo("test", "torch", "random:0", 0.02, "block8", channels),
                 encoding=ImageEncoding(features=features))
    return CacheWriter.create(tmp_path / name, m)


def test_job_writes_what_projection_gives(tmp_path):
    ds = MemoryDataset(n_frames=5)
    w = _writer(tmp_path)
    cfg = JobConfig(projection=ProjectionConfig(depth_check=False))
    r = extract_scene(ds, "scene0000_00", PositionTeacher(), w, cfg)
    assert r.frames == 5 and 0 < r.coverage <= 1 and set(r.seconds) >= {"read", "teacher", "projection"}
    sc = open_cache(tmp_path / "c").scene("scene0000_00")
    for i in range(5):
        f = sc.read_frame(i)
        pose = np.eye(4)
        pose[0, 3] = 0.05 * i
        ref = project_points(ds.scene.points, pose, K, H, W, cfg.projection)
        np.testing.assert_array_equal(f.cells, ref.cells)
        np.testing.assert_array_equal(f.point_index, ref.point_index)
        np.testing.assert_allclose(f.features[:, :3].astype(np.float32), ds.scene.points[ref.point_index], atol=2e-3)
        np.testing.assert_array_equal(f.point_labels, ds.scene.labels[ref.point_index])
        assert decode_image(f.image, f.image_size).mean() == pytest.approx(10 * i, abs=2)


def test_bad_poses_and_nan_points_are_counted(tmp_path):
    ds = MemoryDataset(n_frames=4, bad_pose_frames=(1,), nan_points=10)
    r = extract_scene(ds, "scene0000_00", PositionTeacher(), _writer(tmp_path), JobConfig())
    assert r.frames == 3 and r.skips == {"non-finite points": 10, "non-finite pose": 1}
    sc = open_cache(tmp_path / "c").scene("scene0000_00")
    assert sc.attrs["skips"] == r.skips
    assert not np.isin(np.arange(10), np.concatenate([sc.read_frame(i).point_index for i in range(3)])).any()


def test_no_valid_frame_leaves_scene_incomplete(tmp_path):
    ds = MemoryDataset(n_frames=2, bad_pose_frames=(0, 1))
    w = _writer(tmp_path)
    with pytest.raises(ExtractionError, match="scene0000_00: no valid frames"):
        extract_scene(ds, "scene0000_00", PositionTeacher(), w, JobConfig())
    assert open_cache(tmp_path / "c").incomplete_scenes() == ["scene0000_00"]


def test_intrinsics_mismatch_names_scene_and_frame(tmp_path):
    ds = MemoryDataset(n_frames=3, size_mismatch_frame=2)
    with pytest.raises(ExtractionError, match="scene0000_00, frame 2: intrinsics"):
        extract_scene(ds, "scene0000_00", PositionTeacher(), _writer(tmp_path), JobConfig())
    assert open_cache(tmp_path / "c").incomplete_scenes() == ["scene0000_00"]


def test_resize_scales_intrinsics(tmp_path):
    ds = MemoryDataset(n_frames=2)
    cfg = JobConfig(image_size=(32, 24), projection=ProjectionConfig(depth_check=False))
    extract_scene(ds, "scene0000_00", PositionTeacher(), _writer(tmp_path), cfg)
    f = open_cache(tmp_path / "c").scene("scene0000_00").read_frame(0)
    assert f.image_size == (24, 32) and f.labels.shape == (24, 32)
    np.testing.assert_allclose(f.intrinsics, scale_intrinsics(K, (64, 48), (32, 24)))
    assert f.intrinsics[0, 0] == 25.0 and f.intrinsics[0, 2] == pytest.approx(15.5)


def test_uint8_job_quantizes_over_the_scenes_finite_point_features(tmp_path):
    """uint8 features: the code spans the teacher's features of the scene's finite points (NaN points, stored as
    zero rows of the feature matrix, do not widen it); reads are within half a step of the float16 job's features,
    and the recorded moments are exactly the float16 job's (unquantized features)."""
    ds = MemoryDataset(n_frames=4, nan_points=10)
    cfg = JobConfig(projection=ProjectionConfig(depth_check=False))
    extract_scene(ds, "scene0000_00", PositionTeacher(), _writer(tmp_path, name="c16"), cfg)
    extract_scene(ds, "scene0000_00", PositionTeacher(), _writer(tmp_path, features="uint8", name="c8"), cfg)
    s16 = open_cache(tmp_path / "c16").scene("scene0000_00")
    s8 = open_cache(tmp_path / "c8").scene("scene0000_00")
    valid = PositionTeacher().point_features(ds.scene.points[10:], None).astype(np.float16)
    np.testing.assert_array_equal(s8.quantizer.offset, valid.min(0).astype(np.float32))
    np.testing.assert_allclose(s8.quantizer.scale, (valid.max(0).astype(np.float64) - valid.min(0)) / 255, rtol=1e-6)
    assert s8.attrs["moments"] == s16.attrs["moments"]
    for i in range(4):
        a, b = s16.read_frame(i), s8.read_frame(i)
        np.testing.assert_array_equal(a.point_index, b.point_index)
        assert b.features.dtype == np.float16
        err = np.abs(a.features.astype(np.float64) - b.features.astype(np.float64))
        assert (err <= s8.quantizer.error_bound()).all()


def test_label_embedding_job_caches_the_embedded_point_labels_on_the_networks_cells(tmp_path):
    """The control goes through the same projection and writing as a network: the same cells and points as a
    network teacher's cache, and every cached feature is E[label of that point] (zeros for unlabelled points)."""
    ds = MemoryDataset(n_frames=3)
    ds.scene.labels[::7] = 0  # some unlabelled points
    control = LabelEmbeddingTeacher(SCANNET20, channels=6, seed=2)
    extract_scene(ds, "scene0000_00", control, _writer(tmp_path, name="le"), JobConfig())
    extract_scene(ds, "scene0000_00", PositionTeacher(), _writer(tmp_path, name="net"), JobConfig())
    le, net = open_cache(tmp_path / "le").scene("scene0000_00"), open_cache(tmp_path / "net").scene("scene0000_00")
    a, b = le.read_block(0, 3), net.read_block(0, 3)
    np.testing.assert_array_equal(a.cells, b.cells)
    np.testing.assert_array_equal(a.point_index, b.point_index)
    labels = ds.scene.labels[a.point_index]
    np.testing.assert_array_equal(a.point_labels, labels)
    expected = np.zeros((labels.size, 6), np.float32)
    known = labels != 0
    expected[known] = control.embedding[SCANNET20.to_train_ids(labels[known])]
    np.testing.assert_array_equal(a.features, expected.astype(np.float16))
    assert (labels == 0).any() and known.any()


def test_label_embedding_of_another_label_space_is_refused(tmp_path):
    with pytest.raises(ExtractionError, match="label embedding is of s3dis13"):
        extract_scene(MemoryDataset(n_frames=1), "scene0000_00", LabelEmbeddingTeacher(S3DIS13, channels=6),
                      _writer(tmp_path), JobConfig())
