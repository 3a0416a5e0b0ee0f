"""Block reading and prefetch threads.

`BlockCache` reads each block of frames once and frees it when the epoch's last frame from it has been used.
`BlockReader` reads a block's arrays by fetching and decoding their chunks directly (`ChunkedRange`): one
zarr-python call costs ~0.5–1 ms of Python overhead, more than a JPEG decode and far more than decompressing a
4-frame label chunk (~0.05 ms), so the seven calls of `SceneReader.read_block` cost as much as the frames' decode.
It gives exactly what `SceneReader.read_block` gives (tested), and falls back to it for any array whose layout it
does not handle (sharding, transposes, checksums, big-endian). `Prefetcher` runs worker threads that
fill batches into a fixed set of reusable slots, in batch order; a worker's exception is handed to the consumer
(which re-raises it) and stops the others, so a corrupt frame never hangs the loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Generic, TypeVar

import numcodecs
import numpy as np
import zarr
import zarr.codecs as zc
from zarr.core.chunk_grids import RegularChunkGrid
from zarr.storage import LocalStore

from cache_schema import CacheError, FrameBlock, SceneReader

S = TypeVar("S")
R = TypeVar("R")


class BlockCache:
    """Blocks of one epoch run: read once on first use (other threads wait), dropped after their last use."""

    def __init__(self, read: Callable[[int], FrameBlock], uses: dict[int, int]):
        self._read = read
        self._uses = dict(uses)
        self._blocks: dict[int, Future] = {}
        self._lock = threading.Lock()

    def get(self, block: int) -> FrameBlock:
        with self._lock:
            fut = self._blocks.get(block)
            owner = fut is None
            if owner:
                fut = self._blocks[block] = Future()
        if owner:
            try:
                fut.set_result(self._read(block))
            except BaseException as e:  # waiting threads get the same error
                fut.set_exception(e)
        return fut.result()

    def release(self, block: int, n: int = 1) -> None:
        with self._lock:
            self._uses[block] -= n
            if self._uses[block] <= 0:
                self._blocks.pop(block, None)

    def __len__(self) -> int:
        return len(self._blocks)


class ChunkedRange:
    """Rows [a, b) of a zarr v3 array chunked along axis 0 only, read as raw chunk bytes + one numcodecs decode each.

    `supported` is False for layouts this does not handle; callers then use the zarr array itself."""

    def __init__(self, arr: zarr.Array):
        self.arr = arr
        md = arr.metadata
        self.supported = False
        self.codec: numcodecs.abc.Codec | None = None
        if getattr(md, "zarr_format", None) != 3 or not isinstance(md.chunk_grid, RegularChunkGrid):
            return
        chunks = tuple(md.chunk_grid.chunk_shape)
        if chunks[1:] != tuple(arr.shape[1:]) or not chunks or arr.dtype.byteorder == ">":
            return
        codecs = list(md.codecs)
        if not codecs or not isinstance(codecs[0], zc.BytesCodec):
            return
        if codecs[0].endian is not None and codecs[0].endian.value != "little" and arr.dtype.itemsize > 1:
            return
        rest = codecs[1:]
        if len(rest) > 1:
            return
        if rest:
            if isinstance(rest[0], zc.BloscCodec):
                self.codec = numcodecs.Blosc()  # blosc frames describe themselves: any cname/shuffle decodes
            elif isinstance(rest[0], zc.ZstdCodec) and not rest[0].checksum:
                self.codec = numcodecs.Zstd()
            elif isinstance(rest[0], zc.GzipCodec):
                self.codec = numcodecs.GZip()
            else:
                return
        self.rows = chunks[0]
        self.chunk_shape = chunks
        self.nbytes = int(np.prod(chunks)) * arr.dtype.itemsize
        store = arr.store_path.store
        local = isinstance(store, LocalStore)
        self.local_dir = Path(store.root) / arr.store_path.path if local else None  # plain files: read them
        self.supported = True

    def keys(self, a: int, b: int) -> list[tuple[int, str]]:
        """(chunk number, store key relative to the array) of the chunks holding rows [a, b)."""
        if b <= a:
            return []
        md = self.arr.metadata
        zeros = (0,) * (len(self.chunk_shape) - 1)
        return [(c, md.encode_chunk_key((c, *zeros))) for c in range(a // self.rows, (b - 1) // self.rows + 1)]

    def assemble(self, a: int, b: int, raw: dict[int, bytes | None]) -> np.ndarray:
        """Decode the fetched chunks and copy rows [a, b) out of them."""
        arr = self.arr
        out = np.empty((b - a, *arr.shape[1:]), arr.dtype)
        for c, data in sorted(raw.items()):
            lo, hi = max(a, c * self.rows), min(b, (c + 1) * self.rows)
            if data is None:  # never written: the fill value, as zarr reads it
                out[lo - a:hi - a] = arr.metadata.fill_value
                continue
            if self.codec is not None and (lo, hi) == (c * self.rows, (c + 1) * self.rows):
                # a whole chunk inside the range: decode straight into place (saves a pass over the block)
                dst = out[lo - a:hi - a]
                self.codec.decode(data, out=dst.view(np.uint8).reshape(-1))
                continue
            chunk = np.frombuffer(data, np.uint8) if self.codec is None else self.codec.decode(data)
            chunk = np.frombuffer(chunk, np.uint8)
            if chunk.size != self.nbytes:
                raise CacheError(f"{arr.store_path}: chunk {c} decodes to {chunk.size} bytes, expected {self.nbytes}")
            rows = chunk.view(arr.dtype).reshape(self.chunk_shape)
            out[lo - a:hi - a] = rows[lo - c * self.rows: hi - c * self.rows]
        return out


def _fetch(ranges: list[tuple[ChunkedRange, str]]) -> list[bytes | None]:
    """Raw bytes of chunk keys (None where absent): files read directly on a local store, else the store's own
    async `get`, all keys of a block gathered in one event-loop round trip."""
    out: list[bytes | None] = [None] * len(ranges)
    remote = []
    for n, (r, key) in enumerate(ranges):
        if r.local_dir is not None:
            try:
                out[n] = (r.local_dir / key).read_bytes()
            except FileNotFoundError:
                out[n] = None
        else:
            remote.append(n)
    if remote:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        proto = default_buffer_prototype()

        async def get_all():
            return await asyncio.gather(*(ranges[n][0].arr.store_path.store.get(
                f"{ranges[n][0].arr.store_path.path}/{ranges[n][1]}", proto) for n in remote))

        for n, buf in zip(remote, sync(get_all()), strict=True):
            out[n] = None if buf is None else buf.to_bytes()
    return out


_BLOCK_ARRAYS = ("image_data", "labels", "cells", "features", "point_index", "point_labels", "depth")


class BlockReader:
    """`SceneReader.read_block` by direct chunk reads (see the module docstring); same result, far less overhead."""

    def __init__(self, scene: SceneReader, direct: bool = True):
        self.scene = scene
        arrays = scene.arrays
        self.ranges = {k: ChunkedRange(arrays[k]) for k in _BLOCK_ARRAYS} if direct else {}
        self.direct = direct and all(r.supported for r in self.ranges.values())

    def read_block(self, start: int, stop: int) -> FrameBlock:
        s = self.scene
        if not self.direct:
            return s.read_block(start, stop)
        if not 0 <= start < stop <= s.num_frames:
            raise IndexError(f"scene {s.name}: frames [{start}, {stop}) out of range 0..{s.num_frames}")
        i0, i1 = int(s.image_offsets[start]), int(s.image_offsets[stop])
        c0, c1 = int(s.cell_offsets[start]), int(s.cell_offsets[stop])
        span = {"image_data": (i0, i1), "labels": (start, stop)}
        spans = {k: span.get(k, (c0, c1)) for k in _BLOCK_ARRAYS}
        wanted = [(k, c, key) for k in _BLOCK_ARRAYS for c, key in self.ranges[k].keys(*spans[k])]
        try:
            raw = _fetch([(self.ranges[k], key) for k, _, key in wanted])
            data = {k: {} for k in _BLOCK_ARRAYS}
            for (k, c, _), b in zip(wanted, raw, strict=True):
                data[k][c] = b
            got = {k: self.ranges[k].assemble(*spans[k], data[k]) for k in _BLOCK_ARRAYS}
        except CacheError as e:
            raise CacheError(f"scene {s.name}, frames [{start}, {stop}): {e}") from e
        except Exception as e:  # a corrupt chunk: name where it is
            raise CacheError(f"scene {s.name}, frames [{start}, {stop}): cannot read a chunk: {e}") from e
        return FrameBlock(
            scene=s.name, start=start, stop=stop, frame_id=s.frame_id[start:stop],
            image_size=s.image_size[start:stop], intrinsics=s.intrinsics[start:stop], pose=s.pose[start:stop],
            image_offsets=s.image_offsets[start:stop + 1] - i0, image_data=got["image_data"],
            labels=got["labels"], cell_offsets=s.cell_offsets[start:stop + 1] - c0, cells=got["cells"],
            features=s.decode_features(got["features"]), point_index=got["point_index"],
            point_labels=got["point_labels"],
            depth=got["depth"])


class SceneReaders:
    """SceneReader per scene number, opened once (their metadata is read at open)."""

    def __init__(self, open_scene: Callable[[int], SceneReader | BlockReader], count: int):
        self._open = open_scene
        self._readers: list[SceneReader | BlockReader | None] = [None] * count
        self._lock = threading.Lock()

    def __getitem__(self, i: int) -> SceneReader | BlockReader:
        r = self._readers[i]
        if r is None:
            with self._lock:
                r = self._readers[i]
                if r is None:
                    r = self._readers[i] = self._open(i)
        return r


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Generic[S, R]):
    """Tasks 0..n−1 run by `workers` threads, each into a free slot; results are taken in task order."""

    def __init__(self, n: int, work: Callable[[int, S], R], slots: list[S], workers: int, first: int = 0):
        self._work = work
        self._n = n
        self._next = first
        self._free = list(range(len(slots)))
        self._slots = slots
        self._results: dict[int, tuple[int, R] | _Failed] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._threads = [threading.Thread(target=self._run, name=f"cache-loader-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and self._next < self._n and not self._free:
                    self._cond.wait()
                if self._stop or self._next >= self._n:
                    return
                task, slot = self._next, self._free.pop(0)
                self._next += 1
            try:
                out: tuple[int, R] | _Failed = (slot, self._work(task, self._slots[slot]))
            except BaseException as e:
                out = _Failed(e)
            with self._cond:
                self._results[task] = out
                if isinstance(out, _Failed):
                    self._stop = True  # no new tasks: the consumer will raise
                self._cond.notify_all()

    def get(self, task: int) -> tuple[int, R]:
        """(slot, result) of a task, waiting for it; re-raises the worker's exception."""
        with self._cond:
            while task not in self._results:
                failed = [r for r in self._results.values() if isinstance(r, _Failed)]
                if failed:
                    raise failed[0].error
                if not any(t.is_alive() for t in self._threads):
                    raise RuntimeError(f"loader threads exited before batch {task} was made")
                self._cond.wait(timeout=1.0)
            out = self._results.pop(task)
        if isinstance(out, _Failed):
            raise out.error
        return out

    def release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=30)


def block_uses(block_of_frame: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(block_of_frame, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}
