"""What the loader hands over: labels and features mapped correctly, both execution paths agreeing, scene
subsets and incomplete scenes respected, 2D-only caches, and corrupt frames reported by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_manifest, random_frame

from cache_schema import SCANNET20, CacheError, CacheWriter, IncompleteSceneError, open_cache
from cache_schema.image_codec import encode_image
from stages.train.loader import CacheLoader, LoaderConfig
from stages.train.loader.pinned import BufferArena


def test_eval_batch_matches_the_cache(make_cache) -> None:
    cache = open_cache(make_cache(scenes=1, frames=6, h=40, w=48))
    scene = cache.scene("scene0000_00")
    with CacheLoader(cache, LoaderConfig(batch_size=6, train=False)) as loader:
        batch = next(iter(loader))
        for k in range(6):
            f = scene.read_frame(k)
            assert torch.equal(batch.labels[k], torch.from_numpy(SCANNET20.to_train_ids(f.labels)).long())
            gw = -(-48 // 8)
            i, j = np.divmod(f.cells.astype(int), gw)
            m = batch.feature_mask[k].numpy()
            assert m.sum() == f.cells.size and m[i, j].all()
            np.testing.assert_array_equal(batch.features[k].numpy()[:, i, j].T, f.features.astype(np.float32))
            np.testing.assert_array_equal(batch.feature_labels[k].numpy()[i, j], SCANNET20.to_train_ids(f.point_labels))
            assert (batch.feature_labels[k].numpy()[~m] == 255).all() and (batch.depth[k].numpy()[~m] == 0).all()
            from cache_schema.image_codec import decode_image

            rgb = decode_image(f.image, (40, 48)).astype(np.float32) / 255
            want = (rgb - np.array(loader.cfg.mean)) / np.array(loader.cfg.std)
            np.testing.assert_allclose(batch.image[k].numpy().transpose(1, 2, 0), want, atol=1e-4)


def test_worker_and_device_paths_agree(make_cache) -> None:
    cache = open_cache(make_cache(scenes=2, frames=6, h=48, w=64))
    cfg = dict(batch_size=3, crop=41, block_frames=4, seed=2)
    a = CacheLoader(cache, LoaderConfig(augment_on="workers", **cfg))
    b = CacheLoader(cache, LoaderConfig(augment_on="device", **cfg))
    n = 0
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.index, y.index)
        for k in ("features", "feature_mask", "feature_labels", "depth"):
            assert torch.equal(getattr(x, k), getattr(y, k)), k
        assert (x.labels == y.labels).float().mean() > 0.97  # nearest sampling may round a tie differently
        assert (x.image - y.image).abs().mean() < 0.05
        n += 1
    assert n == len(a) == 4


def test_scene_subset_and_incomplete_scenes(make_cache) -> None:
    cache = open_cache(make_cache(scenes=3, frames=4, h=32, w=40, leave_incomplete=("scene0001_00",)))
    loader = CacheLoader(cache, LoaderConfig(batch_size=2, train=False))
    assert {s for s, _ in loader.frame_table} == {"scene0000_00", "scene0002_00"}
    sub = CacheLoader(cache, LoaderConfig(batch_size=2, train=False), scenes=["scene0002_00"])
    assert len(sub.frame_table) == 4 and len(sub) == 2
    with pytest.raises(IncompleteSceneError):
        CacheLoader(cache, LoaderConfig(), scenes=["scene0001_00"])


def test_cache_without_features(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = CacheWriter.create(tmp_path / "c2d", make_manifest(["scene0000_00"], 0))
    sw = w.begin_scene("scene0000_00", height=32, width=40)
    for i in range(4):
        sw.add(random_frame(rng, i, 32, 40, 0, 8, coverage=0.0))
    sw.commit()
    cache = open_cache(tmp_path / "c2d")
    for mode in ("workers", "device"):
        with CacheLoader(cache, LoaderConfig(batch_size=2, crop=33, augment_on=mode)) as loader:
            assert loader.channels == 0 and loader.num_classes == 20
            batch = next(iter(loader))
            assert batch.features.shape == (2, 0, 5, 5) and not batch.feature_mask.any()


def _corrupt_cache(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = CacheWriter.create(path, make_manifest(["scene0000_00"], 4))
    sw = w.begin_scene("scene0000_00", height=32, width=40)
    for i in range(12):
        f = random_frame(rng, 100 + i, 32, 40, 4, 8)
        if i == 9:
            f.image = b"\xff\xd8 definitely not a jpeg" * 3
        sw.add(f)
    sw.commit()
    return path


@pytest.mark.parametrize("mode", ["workers", "device"])
def test_corrupt_jpeg_names_scene_and_frame(tmp_path: Path, mode: str) -> None:
    cache = open_cache(_corrupt_cache(tmp_path / "bad"))
    loader = CacheLoader(cache, LoaderConfig(batch_size=2, crop=17, block_frames=4, augment_on=mode, workers=2))
    with pytest.raises(CacheError, match=r"scene scene0000_00, frame 9 \(frame id 109\).*corrupt JPEG"):
        for _ in loader:
            pass
    # the loader is usable again afterwards (no thread left holding it)
    with pytest.raises(CacheError):
        list(CacheLoader(cache, LoaderConfig(batch_size=4, train=False, augment_on=mode)))


def test_arena_reuses_its_buffers() -> None:
    arena = BufferArena(pin=False)
    x = arena.get("a", (4, 5), torch.float32)
    y = arena.get("a", (2, 3), torch.float32)
    assert x.data_ptr() == y.data_ptr()
    z = arena.get("a", (10, 10), torch.float32)
    assert z.shape == (10, 10) and arena.get("a", (3,), torch.float32).data_ptr() == z.data_ptr()


def test_half_size_jpeg_decode_when_shrinking(tmp_path: Path) -> None:
    """At scale <= 1/2 the CPU path decodes JPEGs at half size (libjpeg DCT scaling) and adjusts the transform; the
    image must match the device path, which warps the full-size decode."""
    import cv2

    rng = np.random.default_rng(1)
    h, w = 96, 128
    writer = CacheWriter.create(tmp_path / "smooth", make_manifest(["scene0000_00"], 4))
    sw = writer.begin_scene("scene0000_00", height=h, width=w)
    for i in range(4):
        f = random_frame(rng, i, h, w, 4, 8)
        smooth = cv2.resize((rng.random((4, 5, 3)) * 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
        f.image = encode_image(smooth, "jpeg", 95)
        sw.add(f)
    sw.commit()
    cache = open_cache(tmp_path / "smooth")
    cfg = dict(batch_size=4, crop=41, scale=(0.3, 0.5), rotate=5.0, seed=3)
    a = CacheLoader(cache, LoaderConfig(augment_on="workers", **cfg))
    b = CacheLoader(cache, LoaderConfig(augment_on="device", **cfg))
    x, y = next(iter(a)), next(iter(b))
    scales = np.sqrt(np.abs(np.linalg.det(a.transforms(0, 0, x.index.numpy())[:, :, :2])))
    assert (scales <= 0.5).all()
    inside = y.labels != 255
    assert inside.float().mean() > 0.1
    diff = (x.image - y.image).abs().permute(1, 0, 2, 3)[:, inside]
    assert diff.mean() < 0.03, float(diff.mean())
    assert (x.labels == y.labels).float().mean() > 0.97  # nearest sampling may round a tie differently


def test_host_batches_are_what_the_device_receives(make_cache) -> None:
    """`host_batches` in device mode: decoded RGB images and training-id labels of the same frames as iteration,
    and the loader's position moves on as with iteration."""
    cache = open_cache(make_cache(scenes=1, frames=6, h=40, w=48))
    scene = cache.scene("scene0000_00")
    loader = CacheLoader(cache, LoaderConfig(batch_size=3, train=False, augment_on="device"))
    seen = 0
    for host in loader.host_batches():
        for k, g in enumerate(host["index"].tolist()):
            f = scene.read_frame(int(g))
            from cache_schema.image_codec import decode_image

            np.testing.assert_array_equal(host["image_u8"][k].numpy(), decode_image(f.image, (40, 48)))
            np.testing.assert_array_equal(host["labels_u8"][k].numpy(), SCANNET20.to_train_ids(f.labels))
            seen += 1
    assert seen == 6 and loader.epoch == 1 and loader.position == 0
    loader.close()


def test_uint8_cache_batches_carry_dequantized_features(make_cache) -> None:
    """A uint8 cache: the loader hands over the dequantized features (float16 values, as `read_frame` gives them),
    within half a quantization step (+ float16 rounding) of the features that were written."""
    path = make_cache(name="c8", scenes=1, frames=6, h=40, w=48, features="uint8")
    ref = open_cache(make_cache(name="c16", scenes=1, frames=6, h=40, w=48))  # same seed: the same frames
    cache = open_cache(path)
    scene, original = cache.scene("scene0000_00"), ref.scene("scene0000_00")
    scale = np.asarray(scene.attrs["feature_scale"], np.float64)
    with CacheLoader(cache, LoaderConfig(batch_size=6, train=False)) as loader:
        batch = next(iter(loader))
    for k in range(6):
        f, o = scene.read_frame(k), original.read_frame(k)
        i, j = np.divmod(f.cells.astype(int), -(-48 // 8))
        got = batch.features[k].numpy()[:, i, j].T
        np.testing.assert_array_equal(got, f.features.astype(np.float32))
        err = np.abs(got.astype(np.float64) - o.features.astype(np.float64))
        assert (err <= scale / 2 + np.abs(got).max(0) * 2.0**-11 + 1e-7).all()
        assert not np.array_equal(got, o.features.astype(np.float32))  # lossy: not the float16 values
