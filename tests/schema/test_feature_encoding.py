"""The opt-in uint8 feature encoding: round trip within the quantization bound, old/default caches unchanged,
fingerprints, constant channels, writer errors, and SPEC §8's plain zarr + numpy example."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import make_manifest, random_frame

from cache_schema import CacheError, CacheWriter, FingerprintMismatchError, Manifest, ManifestError, open_cache
from cache_schema.feature_codec import FeatureQuantizer

SPEC = Path(__file__).resolve().parents[2] / "cache_schema" / "SPEC.md"
S0 = "scene0000_00"


def _write(path: Path, frames: list, features: str, channels: int = 8) -> None:
    w = CacheWriter.create(path, make_manifest([S0], channels, features=features))
    allf = np.concatenate([f.features for f in frames])
    sw = w.begin_scene(S0, height=48, width=64,
                       feature_range=(allf.min(0), allf.max(0)) if features == "uint8" else None)
    for f in frames:
        sw.add(f)
    sw.commit()
    w.finalize_stats()


def _bound(scale: np.ndarray, values: np.ndarray) -> np.ndarray:
    """scale/2 plus the float16 rounding of the dequantized value (half an ulp <= 2^-11 |v|), per channel."""
    return scale.astype(np.float64) / 2 + np.abs(values.astype(np.float64)).max(0) * 2.0**-11 + 2.0**-24


def test_uint8_round_trip_within_half_a_step_per_channel(tmp_path):
    rng = np.random.default_rng(3)
    frames = [random_frame(rng, i * 10, 48, 64, 8, 8) for i in range(7)]
    _write(tmp_path / "c8", frames, "uint8")
    cache = open_cache(tmp_path / "c8")
    scene = cache.scene(S0)
    allf = np.concatenate([f.features for f in frames]).astype(np.float64)
    scale = np.asarray(scene.attrs["feature_scale"], np.float32)
    offset = np.asarray(scene.attrs["feature_offset"], np.float32)
    np.testing.assert_array_equal(offset, allf.min(0).astype(np.float32))
    np.testing.assert_allclose(scale, (allf.max(0) - allf.min(0)) / 255, rtol=1e-6)
    assert np.dtype(scene.arrays["features"].dtype) == np.uint8
    got = []
    for i, f in enumerate(frames):
        g = scene.read_frame(i)
        assert g.features.dtype == np.float16 and g.features.shape == f.features.shape
        np.testing.assert_array_equal(g.cells, f.cells)
        got.append(g.features)
    deq = np.concatenate(got).astype(np.float64)
    err = np.abs(deq - allf).max(0)
    assert (err <= _bound(scale, deq)).all(), err / scale
    assert (err > scale / 4).all()  # lossy indeed: the codes are not the float16 values
    block = scene.read_block(2, 6)
    np.testing.assert_array_equal(block.frame(1).features, got[3])
    # statistics are those of the unquantized features: equal to the float16 cache's of the same frames
    _write(tmp_path / "c16", frames, "float16")
    s8, s16 = cache.manifest.stats, open_cache(tmp_path / "c16").manifest.stats
    assert s8.count == s16.count and s8.mean == s16.mean and s8.var == s16.var
    np.testing.assert_allclose(s8.mean, allf.mean(0), rtol=1e-12, atol=1e-12)


def test_default_cache_is_float16_bit_exact_with_the_old_manifest_and_fingerprint(tmp_path):
    rng = np.random.default_rng(1)
    frames = [random_frame(rng, i, 48, 64, 8, 8) for i in range(4)]
    _write(tmp_path / "c", frames, "float16")
    root = json.loads((tmp_path / "c" / "zarr.json").read_text())["attributes"]
    assert root["encoding"] == {"format": "jpeg", "quality": 90}  # as written before the field existed
    scene_attrs = json.loads((tmp_path / "c" / "scenes" / S0 / "zarr.json").read_text())["attributes"]
    assert "feature_scale" not in scene_attrs and "feature_offset" not in scene_attrs
    cache = open_cache(tmp_path / "c")
    assert cache.manifest.encoding.features == "float16"
    scene = cache.scene(S0)
    assert scene.quantizer is None and np.dtype(scene.arrays["features"].dtype) == np.float16
    for i, f in enumerate(frames):
        g = scene.read_frame(i).features
        assert g.dtype == np.float16 and np.array_equal(g.view(np.uint16), f.features.view(np.uint16))
    # the fingerprints of the code before `encoding.features` existed (same manifest): old caches still open
    m = make_manifest(["s1", "s2"])
    assert m.fingerprint() == "5cb6cede9f7fcb26f7c8152007defc255ba14c6544f645439c4fcbef9832e0f4"
    assert m.params_fingerprint() == "7d0446fe0dc42c295576926069eb790c88dc25050e19a1f32e9d78f1cecf7ddb"


def test_fingerprint_differs_between_encodings_and_resume_is_refused(tmp_path):
    a, b = make_manifest(["s1"]), make_manifest(["s1"], features="uint8")
    assert a.fingerprint() != b.fingerprint() and a.params_fingerprint() != b.params_fingerprint()
    assert Manifest.from_json(b.to_json()).encoding.features == "uint8"
    assert b.to_json()["encoding"]["features"] == "uint8"
    rng = np.random.default_rng(0)
    _write(tmp_path / "c", [random_frame(rng, 0, 48, 64, 8, 8)], "float16")
    with pytest.raises(FingerprintMismatchError, match="encoding.features: 'float16' != 'uint8'"):
        CacheWriter.create(tmp_path / "c", make_manifest([S0], features="uint8"))


def test_unknown_feature_dtype_is_refused(make_cache):
    path = make_cache(scenes=1, frames=2)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["encoding"]["features"] = "int4"
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ManifestError, match="unknown feature dtype 'int4'"):
        open_cache(path)


def test_constant_channel_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(5)
    frames = [random_frame(rng, i, 48, 64, 8, 8) for i in range(3)]
    for f in frames:
        f.features[:, 2] = np.float16(-1.375)
        f.features[:, 5] = np.float16(0.0)
    _write(tmp_path / "c", frames, "uint8")
    scene = open_cache(tmp_path / "c").scene(S0)
    assert scene.attrs["feature_scale"][2] == 1.0 and scene.attrs["feature_offset"][2] == -1.375
    for i, f in enumerate(frames):
        g = scene.read_frame(i).features
        np.testing.assert_array_equal(g[:, [2, 5]], f.features[:, [2, 5]])


def test_quantizer_codes_and_bounds():
    x = np.array([[0.0, 5.0, 2.0], [1.0, 5.0, -2.0], [0.25, 5.0, 1.0]], np.float16)
    q = FeatureQuantizer.from_features(x)
    codes = q.quantize(x)
    assert codes.dtype == np.uint8 and codes[:, 0].tolist() == [0, 255, 64] and codes[:, 1].tolist() == [0, 0, 0]
    assert codes[:, 2].tolist() == [255, 0, 191]  # 63.75 -> 64, 191.25 -> 191 (nearest)
    assert (np.abs(q.dequantize(codes).astype(np.float64) - x) <= q.error_bound()).all()
    with pytest.raises(CacheError, match="outside the scene's feature range in channels \\[0\\]"):
        q.quantize(np.array([[1.1, 5.0, 0.0]], np.float16))
    with pytest.raises(CacheError, match="NaN/Inf"):
        FeatureQuantizer.from_range(np.array([0.0, np.nan]), np.array([1.0, 1.0]))


def test_writer_errors_name_the_scene(tmp_path):
    rng = np.random.default_rng(0)
    w = CacheWriter.create(tmp_path / "c", make_manifest([S0], features="uint8"))
    with pytest.raises(CacheError, match=f"scene {S0}: .*feature_range"):
        w.begin_scene(S0, height=48, width=64)
    f = random_frame(rng, 3, 48, 64, 8, 8)
    sw = w.begin_scene(S0, height=48, width=64, feature_range=(f.features.min(0), f.features.max(0)))
    bad = random_frame(rng, 4, 48, 64, 8, 8)
    bad.features[0, 0] = np.nan
    with pytest.raises(CacheError, match=f"scene {S0}, frame 4.*NaN"):  # still refused, before quantizing
        sw.add(bad)
    wide = random_frame(rng, 5, 48, 64, 8, 8)
    wide.features = f.features.copy()
    wide.cells = f.cells
    wide.features[1, 3] = f.features[:, 3].max() + 1
    with pytest.raises(CacheError, match=f"scene {S0}, frame 5: features outside .* channels \\[3\\]"):
        sw.add(wide)


def test_missing_dequantization_attributes_name_the_scene(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path / "c", [random_frame(rng, i, 48, 64, 8, 8) for i in range(2)], "uint8")
    meta_path = tmp_path / "c" / "scenes" / S0 / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["feature_scale"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CacheError, match=f"scene {S0}: uint8 features but no feature_scale"):
        open_cache(tmp_path / "c").scene(S0)


def _spec_example() -> str:
    text = SPEC.read_text()
    section = text[text.index("## 8. Reading with plain zarr + numpy"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("features", ["float16", "uint8"])
def test_spec_plain_zarr_example_runs_on_both_encodings(make_cache, features):
    path = make_cache(scenes=1, frames=5, features=features)
    ns: dict = {}
    exec(compile(_spec_example().replace("path/to/cache", str(path)), str(SPEC), "exec"), ns)  # noqa: S102
    f = open_cache(path).scene(S0).read_frame(ns["f"])
    assert ns["feats"].dtype == np.float16
    np.testing.assert_array_equal(ns["feats"], f.features)
    np.testing.assert_array_equal(ns["cells"], f.cells)
    assert ns["rgb"].shape == (48, 64, 3) and ns["labels"].shape == (48, 64)
    assert zarr.open_group(str(path), mode="r").attrs["encoding"].get("features", "float16") == features


def test_inspect_dump_hands_out_dequantized_features(make_cache):
    from pipeline.inspect_cache import dump_frame, format_summary, summarize

    cache = open_cache(make_cache(scenes=1, frames=3, features="uint8"))
    d = dump_frame(cache, S0, 1)
    assert d["features"].dtype == np.float16
    np.testing.assert_array_equal(d["features"], cache.scene(S0).read_frame(1).features)
    s = summarize(cache)
    assert s["encoding"]["features"] == "uint8" and "features uint8 (lossy" in format_summary(s)
