"""Loader throughput against the JPEG decode bound, on a synthetic cache of realistic 640×480 frames.

Builds (in a temp dir) a cache of ~200 smooth 640×480 frames (JPEG q90, realistic sizes), 96 feature channels at
15 % cell coverage; then measures, as medians of >= 5 runs after a warm-up,
(a) cv2.imdecode alone over the same JPEG bytes, one thread: the per-core decode bound;
(b) the CacheLoader to a ready batch (training augmentation by default), divided by the cores the process may use;
and prints one JSON line with both and their ratio.

    .venv/bin/python bench/bench_loader.py [--frames 200] [--workers 2] [--runs 5] [--eval]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cache_schema import (  # noqa: E402
    SCANNET20,
    CachedFrame,
    CacheWriter,
    DatasetInfo,
    ImageEncoding,
    Manifest,
    ProjectionParams,
    TeacherInfo,
    open_cache,
)
from cache_schema.image_codec import encode_image  # noqa: E402
from stages.train.loader import CacheLoader, LoaderConfig  # noqa: E402

H, W, C, K = 480, 640, 96, 8


def _smooth_image(rng: np.random.Generator) -> np.ndarray:
    """Low-frequency colour fields plus mild noise: JPEG sizes close to real indoor photos (~50-80 KB at q90)."""
    small = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
    img = cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += rng.integers(-4, 5, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def build_cache(path: Path, frames: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    scenes = [f"scene{i:04d}_00" for i in range(max(1, frames // 50))]
    manifest = Manifest(
        dataset=DatasetInfo(name="scannet", label_space=SCANNET20.to_json(), scenes=scenes, split="explicit",
                            input_fingerprint="bench"),
        projection=ProjectionParams(stride=K), encoding=ImageEncoding(format="jpeg", quality=90),
        teacher=TeacherInfo(architecture="Res16UNet34C", backend="torch", checkpoint_sha256="random:0",
                            voxel_size=0.02, feature_layer="block8", channels=C),
        producer={"name": "distill-cache", "version": "bench"})
    writer = CacheWriter.create(path, manifest)
    gh, gw = -(-H // K), -(-W // K)
    per = -(-frames // len(scenes))
    ids = np.array(SCANNET20.ids, np.uint8)
    made = 0
    for s in scenes:
        sw = writer.begin_scene(s, height=H, width=W)
        for f in range(min(per, frames - made)):
            n = int(0.15 * gh * gw)
            cells = np.sort(rng.choice(gh * gw, n, replace=False)).astype(np.int32)
            labels = cv2.resize(rng.choice(ids, (6, 8)), (W, H), interpolation=cv2.INTER_NEAREST)
            sw.add(CachedFrame(frame_id=f, image=encode_image(_smooth_image(rng), "jpeg", 90), image_size=(H, W),
                               labels=labels, intrinsics=np.eye(3), pose=np.eye(4), cells=cells,
                               features=rng.normal(size=(n, C)).astype(np.float16),
                               point_index=np.arange(n, dtype=np.int32), point_labels=rng.choice(ids, n),
                               depth=rng.uniform(0.5, 5, n).astype(np.float16)))
            made += 1
        sw.commit()
    writer.finalize_stats()
    return path


def decode_rate(cache_path: Path, runs: int) -> tuple[float, float]:
    """Frames/s of cv2.imdecode alone (one thread) over the cache's JPEGs, and the mean JPEG size."""
    cache = open_cache(cache_path)
    jpegs = []
    for s in cache.complete_scenes():
        sc = cache.scene(s)
        blk = sc.read_block(0, sc.num_frames)
        jpegs += [np.frombuffer(blk.image_bytes(k), np.uint8) for k in range(len(blk))]
    cv2.setNumThreads(1)

    def once() -> float:
        t0 = time.perf_counter()
        for j in jpegs:
            cv2.imdecode(j, cv2.IMREAD_COLOR)
        return len(jpegs) / (time.perf_counter() - t0)

    once()
    return statistics.median(once() for _ in range(runs)), float(np.mean([j.size for j in jpegs]))


def loader_rate(cache_path: Path, cfg: LoaderConfig, runs: int) -> float:
    """Frames/s of whole epochs through the loader: each batch is ready (all tensors filled) when yielded."""
    loader = CacheLoader(open_cache(cache_path), cfg)

    def once() -> float:
        n = 0
        t0 = time.perf_counter()
        for b in loader:
            n += int(b.index.shape[0])
        return n / (time.perf_counter() - t0)

    once()
    rates = [once() for _ in range(runs)]
    loader.close()
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=200, help="frames in the synthetic cache")
    p.add_argument("--workers", type=int, default=2, help="loader worker threads")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--runs", type=int, default=5, help="timed runs (median) after one warm-up")
    p.add_argument("--eval", action="store_true", help="measure evaluation mode (no augmentation, native size)")
    p.add_argument("--cache", type=Path, default=None, help="reuse/build the cache here instead of a temp dir")
    args = p.parse_args()
    torch_threads = os.environ.get("OMP_NUM_THREADS")
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.cache or Path(tmp) / "bench-cache"
        if not (path / "zarr.json").exists():
            t0 = time.perf_counter()
            build_cache(path, args.frames)
            print(f"built {args.frames} frames in {time.perf_counter() - t0:.1f}s at {path}", file=sys.stderr)
        cfg = LoaderConfig(batch_size=args.batch_size, workers=args.workers, train=not args.eval)
        decode, jpeg_bytes = decode_rate(path, args.runs)
        load = loader_rate(path, cfg, args.runs)
        decode2, _ = decode_rate(path, args.runs)  # again after: the machine's load drifts
    decode_per_core = (decode + decode2) / 2
    per_core = load / min(cores, max(args.workers, 1))
    print(json.dumps({
        "frames": args.frames, "image": [H, W], "channels": C, "mean_jpeg_kb": round(jpeg_bytes / 1024, 1),
        "mode": "eval" if args.eval else "train (scale, rotate, flip, crop 473)", "batch_size": args.batch_size,
        "workers": args.workers, "cores": cores, "omp_num_threads": torch_threads,
        "decode_fps_per_core": round(decode_per_core, 1), "loader_fps": round(load, 1),
        "loader_fps_per_core": round(per_core, 1), "ratio": round(per_core / decode_per_core, 3)}))


if __name__ == "__main__":
    main()
