"""Reading speed of a cache over HTTP on loopback vs the local directory: frames/s through SceneReader.read_block.

    .venv/bin/python bench/bench_remote.py [--frames 100] [--block 16] [--repeats 5]

Builds a ~100-frame 640x480 cache (96-channel float16 features at 15 % cell coverage, JPEG q90 images: the
sizes MEASURED.md reports) in a temporary directory, serves it with http.server on 127.0.0.1, and prints one JSON
line with the median of `repeats` full passes per source. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runnable as `python bench/bench_remote.py`

from bench.common import build_bench_cache  # noqa: E402
from cache_schema import (
    open_cache,
)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


def frames_per_second(url: str, block: int, repeats: int) -> tuple[float, int]:
    rates, nbytes = [], 0
    for _ in range(repeats):
        scene = open_cache(url).scene("scene0000_00")  # fresh reader: metadata is fetched again each pass
        t0 = time.perf_counter()
        nbytes = 0
        for s in range(0, scene.num_frames, block):
            b = scene.read_block(s, min(scene.num_frames, s + block))
            nbytes += b.image_data.nbytes + b.labels.nbytes + b.features.nbytes + b.cells.nbytes
        rates.append(scene.num_frames / (time.perf_counter() - t0))
    return statistics.median(rates), nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--block", type=int, default=16, help="frames per read_block call")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cache"
        build_bench_cache(root, args.frames, frames_per_scene=args.frames)
        stored = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        handler = functools.partial(_Quiet, directory=str(root))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            local, decoded = frames_per_second(str(root), args.block, args.repeats)
            remote, _ = frames_per_second(f"http://127.0.0.1:{srv.server_address[1]}", args.block, args.repeats)
        finally:
            srv.shutdown()
            srv.server_close()
    print(json.dumps({"frames": args.frames, "block": args.block, "repeats": args.repeats,
                      "stored_kb_per_frame": round(stored / args.frames / 1024, 1),
                      "decoded_kb_per_frame": round(decoded / args.frames / 1024, 1),
                      "local_frames_per_s": round(local, 1), "http_frames_per_s": round(remote, 1),
                      "http_over_local": round(remote / local, 3)}))


if __name__ == "__main__":
    main()
