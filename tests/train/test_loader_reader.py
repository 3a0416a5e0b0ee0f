"""Direct chunk reads (reader.BlockReader / ChunkedRange) give exactly what zarr-python gives: every codec the cache
uses, ranges across chunk boundaries, never-written chunks, stores that are not plain files, and a fallback to zarr
for layouts the direct path does not handle."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec
from zarr.storage import LocalStore, MemoryStore

from cache_schema import CacheError, open_cache
from stages.train.loader.reader import BlockReader, ChunkedRange, _fetch


def _read(r: ChunkedRange, a: int, b: int) -> np.ndarray:
    keys = r.keys(a, b)
    raw = _fetch([(r, k) for _, k in keys])
    return r.assemble(a, b, {c: data for (c, _), data in zip(keys, raw, strict=True)})


@pytest.mark.parametrize("compressor", [None, ZstdCodec(level=1), BloscCodec(cname="lz4", shuffle="shuffle"),
                                        GzipCodec()])
@pytest.mark.parametrize("where", ["local", "memory"])
def test_chunked_range_matches_zarr(tmp_path: Path, compressor, where: str) -> None:
    store = LocalStore(tmp_path / "s") if where == "local" else MemoryStore()
    data = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float16)
    arr = zarr.create_array(store, name="g/x", shape=data.shape, dtype=data.dtype, chunks=(64, 5),
                            compressors=[compressor] if compressor else None, fill_value=7)
    arr[:] = data
    arr[128:192] = 7  # a chunk equal to the fill value is not written: it must read back as the fill value
    if where == "local":
        assert not (tmp_path / "s" / "g" / "x" / "c" / "2" / "0").exists()
    r = ChunkedRange(arr)
    assert r.supported and (r.local_dir is not None) == (where == "local")
    for a, b in [(0, 300), (0, 1), (63, 65), (100, 250), (299, 300), (128, 192), (64, 64)]:
        got = _read(r, a, b)
        assert got.dtype == arr.dtype and np.array_equal(got, arr[a:b]), (a, b)


def test_unsupported_layouts_fall_back(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    sharded = zarr.create_array(store, name="sh", shape=(100,), dtype="int32", chunks=(10,), shards=(50,))
    across = zarr.create_array(store, name="two", shape=(10, 10), dtype="int32", chunks=(5, 5))
    assert not ChunkedRange(sharded).supported and not ChunkedRange(across).supported


@pytest.mark.parametrize("features", ["float16", "uint8"])
def test_block_reader_equals_scene_reader(make_cache, features: str) -> None:
    cache = open_cache(make_cache(scenes=1, frames=13, h=48, w=64, features=features))
    scene = cache.scene("scene0000_00")
    fast, slow = BlockReader(scene), BlockReader(scene, direct=False)
    assert fast.direct and not slow.direct
    assert scene.read_block(0, 2).features.dtype == np.float16  # uint8 codes come out dequantized
    for a, b in [(0, 13), (0, 4), (3, 9), (12, 13)]:  # labels are chunked by 4 frames: ranges cross chunks
        want, got, fallback = scene.read_block(a, b), fast.read_block(a, b), slow.read_block(a, b)
        for name in want.__dataclass_fields__:
            w, g, f = getattr(want, name), getattr(got, name), getattr(fallback, name)
            if isinstance(w, np.ndarray):
                assert g.dtype == w.dtype and np.array_equal(g, w) and np.array_equal(f, w), name
            else:
                assert g == w == f, name
    with pytest.raises(IndexError):
        fast.read_block(5, 14)


def test_corrupt_chunk_is_named(make_cache) -> None:
    path = make_cache(scenes=1, frames=6, h=32, w=40)
    chunk = path / "scenes" / "scene0000_00" / "features" / "c" / "0" / "0"
    chunk.write_bytes(b"not zstd at all" * 10)
    reader = BlockReader(open_cache(path).scene("scene0000_00"))
    with pytest.raises(CacheError, match=r"scene scene0000_00, frames \[0, 3\)"):
        reader.read_block(0, 3)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_block_reader_over_http_equals_local(make_cache) -> None:
    """A remote cache: chunks come through the store's own async `get`, gathered per block."""
    path = make_cache(scenes=1, frames=9, h=32, w=40)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(path)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        remote = open_cache(f"http://127.0.0.1:{httpd.server_address[1]}")
        reader = BlockReader(remote.scene("scene0000_00"))
        assert reader.direct and all(r.local_dir is None for r in reader.ranges.values())
        want, got = open_cache(path).scene("scene0000_00").read_block(2, 9), reader.read_block(2, 9)
        for name in want.__dataclass_fields__:
            w, g = getattr(want, name), getattr(got, name)
            assert np.array_equal(w, g) if isinstance(w, np.ndarray) else w == g, name
    finally:
        httpd.shutdown()
        httpd.server_close()
