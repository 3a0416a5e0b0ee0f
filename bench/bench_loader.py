"""Loader throughput against the JPEG decode bound, on a synthetic cache of realistic 640×480 frames.

Builds (in a temp dir, or --cache) a cache of ~200 smooth 640×480 frames (JPEG q90, ~50 KB), 96 float16 feature
channels at 15 % cell coverage, then measures in the same process, as medians of >= 5 timed runs after a warm-up:

(a) decode bound: `cv2.imdecode` alone over the same JPEG bytes (already in memory), split over the same number of
    threads as the loader has workers (cv2 releases the GIL), in frames/s;
(b) loader: whole epochs of `CacheLoader` (workers mode, the CPU path) from the store on disk to *ready batches*
    (every tensor of `Batch` filled: float32 normalized image, int64 labels, dense features, mask, feature labels,
    depth), in frames/s; training mode (scale, rotate, flip, 473 crop) and evaluation mode (native size) separately;
(c) the host side of the GPU path ("device" mode, `CacheLoader.host_batches`): CPU JPEG decode, training-id labels
    and the raw cells packed into the (pinned on CUDA) batch buffers, with the warp, normalization and scatter left
    to the device — the CPU work per frame a GPU machine pays with CPU decode.

Per core = frames/s ÷ min(cores, threads) for both; ratio = loader ÷ decode bound (the threads and the cores being
the same, it equals the ratio of the per-core figures). The decode bound is measured before and after the loader
runs and averaged (the machine's load drifts). One JSON line per mode.

With `--device cuda` the train line carries two more measurements: (d) batches/s delivered to the GPU (device mode:
nvJPEG when torchvision is installed, warp/normalize/scatter on the GPU, copies on a side stream), each batch
synchronized as used; (e) the trainer's data-wait fraction: `distill-cache train --mode paired` (PSPNet-`--depth`,
batch `--train-batch` 16, crop `--train-crop` 473, `--amp`) on the same cache for `--train-iters` iterations, read
from its log.csv (the mean of data_wait_frac over the logged intervals after the first). `--gpu-path` takes both on
any device: on the CPU, with small settings, it only checks that this code still runs (`bench.run --smoke`).

    .venv/bin/python bench/bench_loader.py [--frames 200] [--workers 2] [--runs 5] [--mode train|eval|both]
    .venv/bin/python bench/bench_loader.py --device cuda --workers 8
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH_C as C  # noqa: E402
from bench.common import BENCH_H as H  # noqa: E402
from bench.common import BENCH_W as W  # noqa: E402
from bench.common import build_bench_cache  # noqa: E402
from cache_schema import (  # noqa: E402
    open_cache,
)
from stages.train.loader import CacheLoader, LoaderConfig  # noqa: E402


def _jpegs(cache_path: Path) -> list[np.ndarray]:
    cache = open_cache(cache_path)
    out = []
    for s in cache.complete_scenes():
        sc = cache.scene(s)
        blk = sc.read_block(0, sc.num_frames)
        out += [np.frombuffer(blk.image_bytes(k), np.uint8) for k in range(len(blk))]
    return out


def decode_rate(jpegs: list[np.ndarray], threads: int, runs: int) -> float:
    """Frames/s of cv2.imdecode alone over in-memory JPEGs, split evenly over `threads` threads."""
    cv2.setNumThreads(1)
    parts = [jpegs[i::threads] for i in range(threads)]

    def part(js: list[np.ndarray]) -> None:
        for j in js:
            cv2.imdecode(j, cv2.IMREAD_COLOR)

    def once(pool: ThreadPoolExecutor) -> float:
        t0 = time.perf_counter()
        list(pool.map(part, parts))
        return len(jpegs) / (time.perf_counter() - t0)

    with ThreadPoolExecutor(threads) as pool:
        once(pool)
        return statistics.median(once(pool) for _ in range(runs))


def loader_rate(cache_path: Path, cfg: LoaderConfig, runs: int, *, host: bool = False) -> float:
    """Frames/s of whole epochs through the loader: each batch is ready (all tensors filled) when yielded. With
    `host`, the host side of the GPU path instead ("device" mode: what the workers hand to the device — decoded
    uint8 images, labels, raw cells — with the warp, normalization and scatter left to the device)."""
    loader = CacheLoader(open_cache(cache_path), cfg)

    def once() -> float:
        n = 0
        t0 = time.perf_counter()
        for b in (loader.host_batches() if host else loader):
            n += int(b["index"].shape[0] if host else b.index.shape[0])
        return n / (time.perf_counter() - t0)

    once()
    rates = [once() for _ in range(runs)]
    loader.close()
    return statistics.median(rates)


def stage_profile(cache_path: Path, cfg: LoaderConfig) -> dict[str, float]:
    """Where a training-mode frame's time goes on one thread: ms per frame for each stage of the workers path, run
    stage by stage over every frame of the cache (the same functions the loader calls, in the same order; reads are
    whole blocks, divided by their frames). Explains the loader row; their sum is ~ the single-thread loader cost.
    Also the size of one ready frame (MB) and the time to merely overwrite its buffers ("write-only floor")."""
    from cache_schema import IGNORE
    from stages.train.loader.augment import warp_image_cv2, warp_labels_cv2
    from stages.train.loader.scatter import output_grid, scatter_frame

    cv2.setNumThreads(1)
    loader = CacheLoader(open_cache(cache_path), cfg)
    a_all = np.concatenate([loader.transforms(0, b, idx) for b, idx in enumerate(loader.batch_indices(0))])
    ho = wo = cfg.crop
    gh, gw = output_grid((ho, wo))
    c = loader.channels
    img, lab = np.empty((3, ho, wo), np.float32), np.empty((ho, wo), np.int64)
    feat, mask = np.empty((c, gh, gw), np.float32), np.empty((gh, gw), bool)
    flab, dep = np.empty((gh, gw), np.int64), np.empty((gh, gw), np.float32)
    scratch: dict = {}
    t = dict.fromkeys(("read", "decode", "warp+normalize", "labels", "scatter"), 0.0)
    n = 0
    for b in range(len(loader._blocks)):  # the loader's own block reads and per-frame steps (bench-only access)
        t0 = time.perf_counter()
        fb = loader._read_block(b)
        t["read"] += time.perf_counter() - t0
        si = loader.table.scenes[int(loader.table.locate(np.asarray([loader._blocks[b, 0]]))[0][0])]
        for k in range(len(fb)):
            a = a_all[n % len(a_all)]
            t0 = time.perf_counter()
            bgr = loader._decode_bgr(fb, k, si.height, si.width)
            t1 = time.perf_counter()
            warp_image_cv2(bgr, a, img, loader._alpha, loader._beta, scratch)
            t2 = time.perf_counter()
            warp_labels_cv2(fb.labels[k], a, lab, loader._lut, scratch)
            t3 = time.perf_counter()
            feat.fill(0)
            mask.fill(False)
            flab.fill(IGNORE)
            dep.fill(0)
            c0, c1 = int(fb.cell_offsets[k]), int(fb.cell_offsets[k + 1])
            scatter_frame(fb.cells[c0:c1], fb.features[c0:c1], fb.depth[c0:c1], loader._lut[fb.point_labels[c0:c1]],
                          grid_w=-(-si.width // loader.stride), stride=loader.stride, a=a, out_feat=feat,
                          out_mask=mask, out_labels=flab, out_depth=dep)
            t4 = time.perf_counter()
            t["decode"] += t1 - t0
            t["warp+normalize"] += t2 - t1
            t["labels"] += t3 - t2
            t["scatter"] += t4 - t3
            n += 1
    loader.close()
    out = {k: round(1e3 * v / max(n, 1), 3) for k, v in t.items()}
    # the floor under every stage but decode: only writing a ready frame's arrays (float32 image, int64 labels, the
    # dense float32 features, ...), as memsets of the same buffers; the sum of the stages can't go below it
    bufs = (img, lab, feat, mask, flab, dep)
    for buf in bufs:
        buf.fill(1)
    reps = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(max(n, 20)):
            for buf in bufs:
                buf.fill(0)
        reps.append((time.perf_counter() - t0) / max(n, 20))
    out["write-only floor"] = round(1e3 * statistics.median(reps), 3)
    out["ready-frame MB"] = round(sum(b.nbytes for b in bufs) / 1e6, 2)
    return out


def gpu_rate(cache_path: Path, cfg: LoaderConfig, runs: int, device: str) -> dict:
    """Batches/s and frames/s delivered to the GPU: every batch's tensors ready on `device` (synchronized). Runs on
    any device (a test drives it on the CPU with the device-mode loader); the figures mean something on CUDA."""
    import torch

    cfg = dataclasses.replace(cfg, augment_on="device")  # what the trainer's loader does on CUDA, here on any device
    loader = CacheLoader(open_cache(cache_path), cfg, device=device)
    cuda = torch.device(device).type == "cuda"

    def once() -> tuple[float, int]:
        n = nb = 0
        t0 = time.perf_counter()
        for b in loader:
            if cuda:
                torch.cuda.synchronize(device)
            n += int(b.index.shape[0])
            nb += 1
        dt = time.perf_counter() - t0
        return nb / dt, n / dt

    once()
    rates = [once() for _ in range(runs)]
    loader.close()
    return {"gpu_batches_per_s": round(statistics.median(r[0] for r in rates), 2),
            "gpu_frames_per_s": round(statistics.median(r[1] for r in rates), 1),
            "gpu_mode": loader.mode, "gpu_nvjpeg": loader.gpu_decode}


def trainer_wait(cache_path: Path, device: str, depth: int, iters: int, workers: int, *, batch_size: int = 16,
                 crop: int = 473, amp: str = "auto") -> dict:
    """The trainer's data-wait fraction on `device` from its own log (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pipeline.cli", "train", "--cache", str(cache_path), "--out", f"{tmp}/run",
               "--mode", "paired", "--iters", str(iters), "--batch-size", str(batch_size), "--crop", str(crop),
               "--depth", str(depth), "--amp", amp, "--device", device, "--workers", str(workers),
               "--checkpoint-every", str(iters), "--set", f"log.every={min(10, iters)}", "--quiet"]
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
        with open(f"{tmp}/run/log.csv") as f:
            rows = list(csv.DictReader(f))
    later = rows[1:] or rows
    return {"train_iters": iters, "train_depth": depth, "train_batch": batch_size, "train_crop": crop,
            "train_amp": amp,
            "data_wait_frac": round(statistics.mean(float(r["data_wait_frac"]) for r in later), 4),
            "step_time_s": round(statistics.median(float(r["step_time"]) for r in later), 4),
            "frames_per_s_training": round(statistics.median(float(r["frames_per_s"]) for r in later), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=200, help="frames in the synthetic cache")
    p.add_argument("--workers", type=int, default=2, help="loader worker threads (and decode-bound threads)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--runs", type=int, default=5, help="timed runs (median) after one warm-up")
    p.add_argument("--mode", choices=("train", "eval", "both"), default="both",
                   help="training augmentation (473 crop), evaluation (native size), or both")
    p.add_argument("--cache", type=Path, default=None, help="reuse/build the cache here instead of a temp dir")
    p.add_argument("--device", default="cpu", help="cpu, or cuda[:N]: adds batches/s to the GPU and the trainer's "
                   "data-wait fraction")
    p.add_argument("--gpu-path", action="store_true", help="take the --device cuda measurements (batches/s delivered, "
                   "the trainer's data wait) on --device whatever it is (default: only on cuda)")
    p.add_argument("--depth", type=int, default=50, help="--device cuda: the student trained for the data-wait figure")
    p.add_argument("--train-iters", type=int, default=60, help="--device cuda: training iterations for data wait")
    p.add_argument("--train-batch", type=int, default=16, help="--device cuda: batch of the data-wait training")
    p.add_argument("--train-crop", type=int, default=473, help="--device cuda: crop of the data-wait training")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                   help="--device cuda: mixed precision of the data-wait training")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    threads = max(args.workers, 1)
    modes = ["train", "eval"] if args.mode == "both" else [args.mode]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.cache or Path(tmp) / "bench-cache"
        if not (path / "zarr.json").exists():
            t0 = time.perf_counter()
            build_bench_cache(path, args.frames)
            print(f"built {args.frames} frames in {time.perf_counter() - t0:.1f}s at {path}", file=sys.stderr)
        jpegs = _jpegs(path)
        before = decode_rate(jpegs, threads, args.runs)
        single = decode_rate(jpegs, 1, args.runs)
        load = {m: loader_rate(path, LoaderConfig(batch_size=args.batch_size, workers=args.workers,
                                                  train=m == "train"), args.runs) for m in modes}
        if "train" in modes:  # the CPU share of the GPU path: CPU JPEG decode to the pinned batch
            load["host"] = loader_rate(path, LoaderConfig(batch_size=args.batch_size, workers=args.workers,
                                                          augment_on="device"), args.runs, host=True)
        profile = stage_profile(path, LoaderConfig(batch_size=args.batch_size, workers=1)) if "train" in modes \
            else None
        gpu = None
        if args.device.startswith("cuda") or args.gpu_path:
            gpu = gpu_rate(path, LoaderConfig(batch_size=args.batch_size, workers=args.workers), args.runs,
                           args.device)
            gpu |= trainer_wait(path, args.device, args.depth, args.train_iters, args.workers,
                                batch_size=args.train_batch, crop=args.train_crop, amp=args.amp)
        after = decode_rate(jpegs, threads, args.runs)  # again after: the machine's load drifts
    decode = (before + after) / 2
    per = min(cores, threads)
    labels = {"train": "train (scale, rotate, flip, crop 473)", "eval": "eval",
              "host": "GPU path, host side (CPU decode + labels + cells to the pinned batch; warp on device)"}
    for m in load:
        print(json.dumps({
            "frames": len(jpegs), "image": [H, W], "channels": C,
            "mean_jpeg_kb": round(float(np.mean([j.size for j in jpegs])) / 1024, 1),
            "mode": labels[m], "key": m, "batch_size": args.batch_size,
            "workers": args.workers, "cores": cores, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "decode_1thread_fps": round(single, 1), "decode_fps": round(decode, 1),
            "decode_fps_per_core": round(decode / per, 1), "loader_fps": round(load[m], 1),
            "loader_fps_per_core": round(load[m] / per, 1), "ratio": round(load[m] / decode, 3)}
            | ({"stage_ms_per_frame_1thread": profile} if profile and m == "train" else {})
            | ({"device": args.device} | gpu if gpu and m == "train" else {})))


if __name__ == "__main__":
    main()
