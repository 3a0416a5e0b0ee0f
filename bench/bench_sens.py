"""Streaming read speed of a ScanNet ``.sens`` against ``cv2.imdecode`` alone on the same JPEGs.

Writes a synthetic ``.sens`` per colour size (depth 640x480 as in ScanNet) to a temporary folder, then times:
``stream``: ``SensFile.iter_frames`` (read + JPEG decode + RGB convert + zlib depth decode, one frame at a time);
``stream_skip10``: the same with ``frame_skip=10`` (header reads and seeks past nine of ten frames), in frames
yielded per second; ``imdecode``: ``cv2.imdecode`` alone on the JPEG bytes held in memory; ``depth_decode``:
zlib + uint16 → metres alone on the depth bytes held in memory. Medians after a warm-up (the file is then in the
page cache: this measures parsing and decoding, not the disk), per wall second and per CPU second of this
process. Prints one JSON line.

    .venv/bin/python -m bench.bench_sens [--frames 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import emit
from stages.extract.formats.records import FrameRecord
from stages.extract.formats.scannet_sens import SensFile, write_sens

DEPTH_SIZE = (640, 480)


def synthetic_frames(n: int, w: int, h: int, seed: int = 0):
    """Smooth colour with a little noise (JPEG sizes near real ScanNet frames) and smooth depth."""
    rng = np.random.default_rng(seed)
    k = np.array([[w * 0.9, 0, w / 2], [0, w * 0.9, h / 2], [0, 0, 1]])
    dw, dh = DEPTH_SIZE
    for i in range(n):
        base = cv2.resize(rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8), (w, h),
                          interpolation=cv2.INTER_CUBIC)
        image = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        depth = cv2.resize(rng.uniform(0.5, 6, (dh // 32, dw // 32)).astype(np.float32), (dw, dh))
        yield FrameRecord(frame_id=i, image=image, intrinsics=k, pose=np.eye(4), depth=depth,
                          depth_intrinsics=k / 2)


def rate(fn, n_items: int, repeats: int) -> dict:
    """Items per second of wall time and of this process's CPU time (medians after one warm-up).

    CPU time is the steadier figure on a shared machine: other processes stretch the wall clock, not our CPU time.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    mid = repeats // 2
    return {"wall": round(n_items / sorted(wall)[mid], 1), "cpu": round(n_items / sorted(cpu)[mid], 1)}


def bench_size(folder: Path, w: int, h: int, n: int, repeats: int) -> dict:
    path = folder / f"bench_{w}x{h}.sens"
    write_sens(path, synthetic_frames(n, w, h), color_intrinsics=np.eye(3), depth_intrinsics=np.eye(3),
               color_size=(w, h), depth_size=DEPTH_SIZE)
    sens = SensFile(path)
    raws = list(sens.raw_frames())
    jpegs = [np.frombuffer(r.color_bytes, np.uint8) for r in raws]
    stream = rate(lambda: sum(1 for _ in sens.iter_frames()), n, repeats)
    skip10 = rate(lambda: sum(1 for _ in sens.iter_frames(frame_skip=10)), len(range(0, n, 10)), repeats)
    decode = rate(lambda: [cv2.imdecode(j, cv2.IMREAD_COLOR) for j in jpegs], n, repeats)
    depth = rate(lambda: [sens.decode_depth(r) for r in raws], n, repeats)
    return {"size": f"{w}x{h}", "frames": n, "jpeg_kb": round(float(np.mean([len(j) for j in jpegs])) / 1024, 1),
            "file_mb": round(path.stat().st_size / 2**20, 1), "stream_fps": stream,
            "stream_skip10_fps": skip10, "imdecode_fps": decode, "depth_decode_fps": depth,
            "stream_over_imdecode_cpu": round(stream["cpu"] / decode["cpu"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=50, help="frames per .sens file")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes; the median counts")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # per-core figures, comparable with MEASURED.md
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_size(Path(tmp), w, h, args.frames, args.repeats) for w, h in ((640, 480), (1296, 968))]
    emit({"bench": "sens_stream", "cv2": cv2.__version__, "cv2_threads": 1, "results": results})


if __name__ == "__main__":
    main()
