"""The loader's CUDA path against its CPU paths on the same batches: pinned buffers, side-stream copies and the
device-side warp, normalization and scatter must hand the trainer what the CPU hands it; nvJPEG must decode what
cv2 decodes, within what two JPEG decoders may differ by. Run by `make gpu-check`; skipped without CUDA (see
conftest.CUDA_STANDIN)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import make_manifest, random_frame, require_real_cuda

from cache_schema import CacheWriter, open_cache
from cache_schema.image_codec import encode_image
from stages.train.loader import CacheLoader, LoaderConfig

pytestmark = pytest.mark.cuda

FIELDS = ("image", "labels", "features", "feature_mask", "feature_labels", "depth", "index")
# JPEG decoders may differ (IDCT precision, chroma upsampling): torchvision's own nvJPEG test allows a mean
# absolute difference below 2 grey levels against libjpeg; a grossly wrong decode (channels swapped, rows shifted)
# is far above that on these images.
JPEG_MEAN_TOL = 2.0


def _smooth_cache(path: Path, frames: int = 12, h: int = 96, w: int = 128) -> Path:
    """Two scenes of smooth photographs-like JPEGs (q95), 8 feature channels at 30 % coverage."""
    rng = np.random.default_rng(5)
    names = ["scene0000_00", "scene0001_00"]
    writer = CacheWriter.create(path, make_manifest(names, 8))
    for s in names:
        sw = writer.begin_scene(s, height=h, width=w)
        for i in range(frames // 2):
            f = random_frame(rng, i, h, w, 8, 8)
            small = (rng.random((4, 5, 3)) * 255).astype(np.uint8)
            f.image = encode_image(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), "jpeg", 95)
            sw.add(f)
        sw.commit()
    writer.finalize_stats()
    return path


def _epoch(cache, device: torch.device | str, **cfg) -> list[dict[str, torch.Tensor]]:
    """One epoch's batches, copied to the host (the CPU path reuses its buffers from batch to batch)."""
    with CacheLoader(cache, LoaderConfig(**cfg), device=device) as loader:
        out = []
        for b in loader:
            assert b.image.device.type == torch.device(device).type
            out.append({k: getattr(b, k).detach().to("cpu").clone() for k in FIELDS})
        return out


CFG = dict(batch_size=3, crop=41, block_frames=4, seed=2, workers=2, prefetch_batches=2)


def test_device_path_on_cuda_equals_the_cpu_paths(tmp_path, cuda_device):
    """Every batch of an epoch (prefetched two ahead, so copies overlap use and host buffers are refilled while the
    device still reads them): the CUDA device path against the same torch code on the CPU (equal but for float
    rounding) and against the CPU workers path with cv2 (equal cells; image and labels within interpolation)."""
    cache = open_cache(_smooth_cache(tmp_path / "c"))
    gpu = _epoch(cache, cuda_device, augment_on="device", gpu_decode=False, **CFG)
    cpu = _epoch(cache, "cpu", augment_on="device", **CFG)
    workers = _epoch(cache, "cpu", augment_on="workers", **CFG)
    assert len(gpu) == len(cpu) == len(workers) == 4
    for g, c, w in zip(gpu, cpu, workers, strict=True):
        assert torch.equal(g["index"], c["index"]) and torch.equal(g["index"], w["index"])
        for k in ("features", "feature_mask", "feature_labels", "depth"):  # the scatter: exact, on any device
            assert torch.equal(g[k], c[k]), k
            assert torch.equal(g[k], w[k]), k
        assert g["feature_mask"].any()
        # bilinear weights in float32 agree to rounding; a pixel right on a frame's edge may fall in on one device
        # and out on the other, so a handful of whole-value differences are allowed
        off = ((g["image"] - c["image"]).abs() > 1e-3).float().mean().item()
        assert off < 1e-3, f"device warp on {cuda_device} vs CPU: {off:.2%} of the values differ"
        assert (g["labels"] == c["labels"]).float().mean() > 0.999  # a nearest-neighbour tie may round apart
        assert (g["image"] - w["image"]).abs().mean() < 0.05  # bilinear warps of torch and cv2
        assert (g["labels"] == w["labels"]).float().mean() > 0.97


def _cv2_rgb(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_nvjpeg_decodes_what_cv2_decodes(cuda_device):
    """torchvision's decode_jpeg on the device (nvJPEG on CUDA; libjpeg on the CPU stand-in) against cv2, on smooth
    and on textured images, batched as the loader calls it."""
    io = pytest.importorskip("torchvision.io", reason="torchvision is not installed (the loader then decodes with "
                             "cv2 on the host)")
    rng = np.random.default_rng(0)
    images = []
    for k in range(6):
        h, w = (480, 640) if k % 2 else (97, 131)  # odd sizes: chroma subsampling at the edges
        detail = (6, 8) if k < 4 else (24, 32)  # smooth, then photograph-like detail (edges every ~20 pixels)
        small = (rng.random((*detail, 3)) * 255).astype(np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        images.append(encode_image(img, "jpeg", 90))
    decoded = io.decode_jpeg([torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in images],
                             device=cuda_device)
    for k, (d, got) in enumerate(zip(images, decoded, strict=True)):
        want = _cv2_rgb(d)
        assert got.device.type == cuda_device.type and got.dtype == torch.uint8
        got = got.permute(1, 2, 0).cpu().numpy()
        assert got.shape == want.shape, k
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        assert diff.mean() < JPEG_MEAN_TOL, (k, float(diff.mean()))


def test_loader_with_nvjpeg_equals_the_loader_with_cpu_decode(tmp_path, cuda_device):
    """The whole device-mode batch with nvJPEG against the same batch decoded by cv2 on the host."""
    require_real_cuda("nvJPEG decoding inside the loader")
    pytest.importorskip("torchvision.io", reason="torchvision is not installed: the loader has no nvJPEG path")
    cache = open_cache(_smooth_cache(tmp_path / "c"))
    with CacheLoader(cache, LoaderConfig(augment_on="device", **CFG), device=cuda_device) as loader:
        assert loader.gpu_decode
    nv = _epoch(cache, cuda_device, augment_on="device", gpu_decode=True, **CFG)
    host = _epoch(cache, cuda_device, augment_on="device", gpu_decode=False, **CFG)
    for a, b in zip(nv, host, strict=True):
        for k in ("index", "features", "feature_mask", "feature_labels", "depth", "labels"):
            assert torch.equal(a[k], b[k]), k
        # grey levels -> normalized units: divide by 255 * std (~0.225)
        assert (a["image"] - b["image"]).abs().mean() < JPEG_MEAN_TOL / (255 * 0.224)
