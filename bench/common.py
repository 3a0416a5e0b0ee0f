"""Timing helpers for the benchmarks: medians after a warm-up, ratios measured in the same run."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# A realistic stage-one frame for benchmarks: 640x480 JPEG q90, 96-channel float16 features at 15 % coverage
BENCH_H, BENCH_W, BENCH_C, BENCH_K, BENCH_COVERAGE = 480, 640, 96, 8, 0.15


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def machine() -> dict:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def emit(result: dict) -> None:
    print(json.dumps(result))


def smooth_image(rng: np.random.Generator, h: int = BENCH_H, w: int = BENCH_W) -> np.ndarray:
    """Low-frequency colour fields plus mild noise: JPEG sizes close to real indoor photos (~50-80 KB at q90)."""
    import cv2

    small = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += rng.integers(-4, 5, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def build_bench_cache(path: Path, frames: int, *, frames_per_scene: int = 50, seed: int = 0) -> Path:
    """A cache of `frames` realistic frames (see BENCH_*), split into scenes of `frames_per_scene`."""
    import cv2

    from cache_schema import (
        SCANNET20,
        CachedFrame,
        CacheWriter,
        DatasetInfo,
        ImageEncoding,
        Manifest,
        ProjectionParams,
        TeacherInfo,
    )
    from cache_schema.image_codec import encode_image
    from cache_schema.layout import grid_shape

    h, w, c, k = BENCH_H, BENCH_W, BENCH_C, BENCH_K
    rng = np.random.default_rng(seed)
    scenes = [f"scene{i:04d}_00" for i in range(max(1, -(-frames // frames_per_scene)))]
    manifest = Manifest(
        dataset=DatasetInfo(name="scannet", label_space=SCANNET20.to_json(), scenes=scenes, split="explicit",
                            input_fingerprint="bench"),
        projection=ProjectionParams(stride=k), encoding=ImageEncoding(format="jpeg", quality=90),
        teacher=TeacherInfo(architecture="Res16UNet34C", backend="torch", checkpoint_sha256="random:0",
                            voxel_size=0.02, feature_layer="block8", channels=c),
        producer={"name": "distill-cache", "version": "bench"})
    writer = CacheWriter.create(path, manifest)
    gh, gw = grid_shape(h, w, k)
    ids = np.array(SCANNET20.ids, np.uint8)
    made = 0
    for s in scenes:
        sw = writer.begin_scene(s, height=h, width=w)
        for f in range(min(frames_per_scene, frames - made)):
            n = int(BENCH_COVERAGE * gh * gw)
            cells = np.sort(rng.choice(gh * gw, n, replace=False)).astype(np.int32)
            labels = cv2.resize(rng.choice(ids, (6, 8)), (w, h), interpolation=cv2.INTER_NEAREST)
            sw.add(CachedFrame(frame_id=f, image=encode_image(smooth_image(rng), "jpeg", 90), image_size=(h, w),
                               labels=labels, intrinsics=np.eye(3), pose=np.eye(4), cells=cells,
                               features=rng.normal(size=(n, c)).astype(np.float16),
                               point_index=np.arange(n, dtype=np.int32), point_labels=rng.choice(ids, n),
                               depth=rng.uniform(0.5, 5, n).astype(np.float16)))
            made += 1
        sw.commit()
    writer.finalize_stats()
    return path
