from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from conftest import make_manifest, random_frame
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_schema import (
    CacheError,
    CacheWriter,
    FingerprintMismatchError,
    IncompleteSceneError,
    ManifestError,
    Moments,
    SchemaVersionError,
    open_cache,
)
from cache_schema.image_codec import decode_image


def test_round_trip_every_field(tmp_path):
    rng = np.random.default_rng(1)
    frames = [random_frame(rng, i * 20, 48, 64, 8, 8) for i in range(7)]
    w = CacheWriter.create(tmp_path / "c", make_manifest(["scene0000_00"]))
    sw = w.begin_scene("scene0000_00", height=48, width=64)
    for f in frames:
        sw.add(f)
    sw.commit()
    w.finalize_stats()
    cache = open_cache(tmp_path / "c")
    scene = cache.scene("scene0000_00")
    assert scene.num_frames == 7 and scene.grid_shape == (6, 8)
    for i, f in enumerate(frames):
        g = scene.read_frame(i)
        assert g.frame_id == f.frame_id and g.image == f.image and g.image_size == (48, 64)
        for k in ("labels", "intrinsics", "pose", "cells", "features", "point_index", "point_labels", "depth"):
            np.testing.assert_array_equal(getattr(g, k), getattr(f, k), err_msg=k)
    block = scene.read_block(2, 6)
    assert len(block) == 4
    np.testing.assert_array_equal(block.frame(1).features, frames[3].features)
    assert decode_image(block.image_bytes(0), (48, 64)).shape == (48, 64, 3)


def test_global_stats_equal_numpy_on_concatenation(make_cache):
    path = make_cache(scenes=3, frames=4)
    cache = open_cache(path)
    feats = []
    for s in cache.complete_scenes():
        sc = cache.scene(s)
        feats.append(sc.read_block(0, sc.num_frames).features.astype(np.float64))
    allf = np.concatenate(feats)
    mean, var = cache.global_stats()
    np.testing.assert_allclose(mean, allf.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, allf.var(0), rtol=1e-10, atol=1e-12)
    assert cache.manifest.stats.count == allf.shape[0]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.integers(0, 2**31 - 1))
def test_moments_merge_property(sizes, seed):
    rng = np.random.default_rng(seed)
    parts = [rng.normal(rng.normal(0, 100), rng.uniform(0.01, 10), size=(n, 3)) for n in sizes]
    merged = Moments.empty(3)
    for p in parts:
        merged = merged.merge(Moments.of(p))
    allx = np.concatenate(parts)
    assert merged.count == allx.shape[0]
    if allx.shape[0]:
        np.testing.assert_allclose(merged.mean, allx.mean(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(merged.var, allx.var(0), rtol=1e-7, atol=1e-9)
    # merge order does not matter
    rev = Moments.empty(3)
    for p in reversed(parts):
        rev = rev.merge(Moments.of(p))
    np.testing.assert_allclose(rev.mean, merged.mean, atol=1e-9)


def test_incomplete_scene_is_never_read(make_cache):
    path = make_cache(scenes=2, leave_incomplete=("scene0001_00",))
    cache = open_cache(path)
    assert cache.complete_scenes() == ["scene0000_00"]
    assert cache.incomplete_scenes() == ["scene0001_00"]
    with pytest.raises(IncompleteSceneError, match="scene0001_00"):
        cache.scene("scene0001_00")
    # statistics only count complete scenes
    assert cache.manifest.stats.count == cache.scene("scene0000_00").num_cells


def test_rerun_rewrites_incomplete_scene(make_cache, tmp_path):
    path = make_cache(scenes=2, leave_incomplete=("scene0001_00",))
    w = CacheWriter.create(path, make_manifest(["scene0000_00", "scene0001_00"]))
    assert w.scene_status("scene0001_00") == "incomplete"
    with pytest.raises(CacheError, match="already complete"):
        w.begin_scene("scene0000_00", height=48, width=64)
    sw = w.begin_scene("scene0001_00", height=48, width=64)
    sw.add(random_frame(np.random.default_rng(5), 0, 48, 64, 8, 8))
    sw.commit()
    assert open_cache(path).scene("scene0001_00").num_frames == 1


def test_unknown_schema_version_is_refused(make_cache):
    path = make_cache(scenes=1)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(SchemaVersionError, match="99"):
        open_cache(path)


def test_malformed_and_tampered_manifest(make_cache):
    path = make_cache(scenes=1)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["projection"]["stride"] = 4  # content no longer matches the stored fingerprint
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ManifestError, match="fingerprint"):
        open_cache(path)
    meta["attributes"]["dataset"]["scenes"] = ["../../etc"]
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ManifestError, match="invalid scene name"):
        open_cache(path)


def test_fingerprint_is_deterministic_and_sensitive():
    a, b = make_manifest(["s1", "s2"]), make_manifest(["s2", "s1"])
    assert a.fingerprint() == b.fingerprint()
    b.teacher.backend = "minkowski"  # backends agree to 1e-4: not part of the content fingerprint
    assert a.fingerprint() == b.fingerprint()
    c = make_manifest(["s1", "s2"])
    c.projection.dilation = 1
    assert c.fingerprint() != a.fingerprint()
    d = make_manifest(["s1", "s2"])
    d.dataset.input_fingerprint = "other"
    assert d.fingerprint() != a.fingerprint() and d.params_fingerprint() == a.params_fingerprint()


def test_expected_fingerprint_and_reopen_with_other_parameters(make_cache):
    path = make_cache(scenes=1)
    with pytest.raises(FingerprintMismatchError):
        open_cache(path, expect_fingerprint="0" * 64)
    other = make_manifest(["scene0000_00"])
    other.projection.stride = 4
    with pytest.raises(FingerprintMismatchError, match="projection.stride"):
        CacheWriter.create(path, other)


def test_writer_rejects_bad_frames(tmp_path):
    rng = np.random.default_rng(0)
    w = CacheWriter.create(tmp_path / "c", make_manifest(["s"]))
    sw = w.begin_scene("s", height=48, width=64)
    f = random_frame(rng, 3, 48, 64, 8, 8)
    f.features[0, 0] = np.nan
    with pytest.raises(CacheError, match="frame 3.*NaN"):
        sw.add(f)
    g = random_frame(rng, 4, 48, 64, 8, 8)
    g.cells = g.cells[::-1].copy()
    with pytest.raises(CacheError, match="strictly increasing"):
        sw.add(g)
    with pytest.raises(CacheError, match="no valid frames"):
        sw.commit()


def test_plain_zarr_numpy_reading_as_in_spec(make_cache):
    """The SPEC's 'read it without distill-cache' snippet works."""
    path = make_cache(scenes=1, frames=3)
    root = zarr.open_group(str(path), mode="r")
    scene = root["scenes/scene0000_00"]
    assert scene.attrs["complete"] is True
    off = scene["cell_offsets"][:]
    feats = scene["features"][off[1]:off[2]]
    ref = open_cache(path).scene("scene0000_00").read_frame(1).features
    np.testing.assert_array_equal(feats, ref)
    assert root.attrs["schema_version"] == 1 and len(root.attrs["stats"]["mean"]) == 8


def test_two_d_only_cache_without_features(make_cache):
    """NYU-v2-like caches hold images and labels but no features (channels 0)."""
    path = make_cache(scenes=1, frames=3, channels=0)
    cache = open_cache(path)
    f = cache.scene("scene0000_00").read_frame(1)
    assert cache.manifest.teacher is None and cache.manifest.stats is None
    assert f.features.shape == (f.cells.shape[0], 0)
