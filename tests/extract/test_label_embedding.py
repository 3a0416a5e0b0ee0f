"""The label-embedding control teacher: a fixed random embedding of each point's class, nothing of the geometry."""

from __future__ import annotations

import numpy as np
import pytest

from cache_schema import S3DIS13, SCANNET20, DatasetInfo, Manifest, ProjectionParams, TeacherInfo
from stages.extract.label_embedding import LabelEmbeddingTeacher, label_embedding_matrix


def test_embedding_is_fixed_by_the_seed_and_non_negative():
    t = LabelEmbeddingTeacher(SCANNET20, channels=96, seed=0)
    assert t.embedding.shape == (20, 96) and t.embedding.dtype == np.float32 and t.channels == 96
    assert (t.embedding > 0).all()  # non-negative, and no class row is the zero vector of ignored points
    np.testing.assert_array_equal(t.embedding, LabelEmbeddingTeacher(SCANNET20, channels=96, seed=0).embedding)
    assert not np.array_equal(t.embedding, label_embedding_matrix(20, 96, 1))
    assert len({row.tobytes() for row in t.embedding}) == 20  # one distinct row per class


def test_label_features_are_the_class_row_and_zero_where_ignored():
    t = LabelEmbeddingTeacher(SCANNET20, channels=8, seed=3)
    # NYU40 ids: 1 wall (training id 0), 39 otherfurniture (19), 0 unlabelled, 22 ceiling (not a ScanNet-20 class)
    f = t.label_features(np.array([1, 39, 1, 0, 22], np.uint8))
    np.testing.assert_array_equal(f[0], t.embedding[0])
    np.testing.assert_array_equal(f[1], t.embedding[19])
    np.testing.assert_array_equal(f[2], f[0])
    assert not f[3].any() and not f[4].any()
    s = LabelEmbeddingTeacher(S3DIS13, channels=8, seed=3)  # S3DIS: stored ids are the classes, 255 unlabelled
    np.testing.assert_array_equal(s.label_features(np.array([12, 255])), np.stack([s.embedding[12], np.zeros(8)]))


@pytest.mark.parametrize(("channels", "seed", "match"), [(0, 0, "channels"), (8, -1, "seed")])
def test_bad_parameters_are_refused(channels, seed, match):
    with pytest.raises(ValueError, match=match):
        LabelEmbeddingTeacher(SCANNET20, channels=channels, seed=seed)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        LabelEmbeddingTeacher(SCANNET20, channels=4).label_features(np.zeros((2, 2), np.uint8))


def _manifest(teacher: TeacherInfo) -> Manifest:
    return Manifest(dataset=DatasetInfo("scannet", SCANNET20.to_json(), ["scene0000_00"], input_fingerprint="x"),
                    projection=ProjectionParams(), teacher=teacher)


def test_manifest_records_the_control_and_its_fingerprint_differs_from_a_networks():
    info = LabelEmbeddingTeacher(SCANNET20, channels=96, seed=0).info
    assert info == {"architecture": "label-embedding", "backend": "none", "checkpoint_sha256": "label-embedding:0",
                    "voxel_size": 0.0, "feature_layer": "point-label", "channels": 96}
    control = _manifest(TeacherInfo(**info))
    assert Manifest.from_json(control.to_json()).teacher == control.teacher  # any reader takes it as it is
    network = _manifest(TeacherInfo("Res16UNet34C", "torch", "ab" * 32, 0.02, "block8", 96))
    other_seed = _manifest(TeacherInfo.label_embedding(96, 1))
    fingerprints = {m.params_fingerprint() for m in (control, network, other_seed)}
    assert len(fingerprints) == 3 and control.fingerprint() != network.fingerprint()
