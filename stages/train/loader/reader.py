"""Block reading and prefetch threads.

`BlockCache` reads each block of frames once (7 store calls for the whole block: one zarr call costs more than a
JPEG decode) and frees it when the epoch's last frame from it has been used. `Prefetcher` runs worker threads that
fill batches into a fixed set of reusable slots, in batch order; a worker's exception is handed to the consumer
(which re-raises it) and stops the others, so a corrupt frame never hangs the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

import numpy as np

from cache_schema import FrameBlock, SceneReader

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


class SceneReaders:
    """SceneReader per scene number, opened once (their metadata is read at open)."""

    def __init__(self, open_scene: Callable[[int], SceneReader], count: int):
        self._open = open_scene
        self._readers: list[SceneReader | None] = [None] * count
        self._lock = threading.Lock()

    def __getitem__(self, i: int) -> SceneReader:
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
