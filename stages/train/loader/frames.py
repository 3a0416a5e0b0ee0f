"""The frame table and each epoch's order: blocks of consecutive frames, shuffled, then sharded by rank.

A block is `block_frames` consecutive frames of one scene, read with one store call per array. Training order per
epoch (seeded by (seed, epoch), identical on every rank): shuffle the blocks, group them into windows of
`shuffle_buffer_blocks` blocks, shuffle the frames within each window. Rank r takes the r-th contiguous slice of that
order (equal lengths, the remainder dropped), so the ranks are disjoint and each reads mostly its own blocks.
Evaluation order is the frame table itself, split into contiguous slices that together cover every frame once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SceneInfo:
    name: str
    num_frames: int
    height: int
    width: int
    offset: int  # global index of the scene's first frame in the frame table


class FrameTable:
    """Global frame index ↔ (scene, frame index), over the selected complete scenes in cache order."""

    def __init__(self, scenes: list[SceneInfo]):
        self.scenes = scenes
        self.starts = np.asarray([s.offset for s in scenes] + [sum(s.num_frames for s in scenes)], np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scene number, frame within the scene) of global frame indices."""
        index = np.asarray(index, np.int64)
        s = np.searchsorted(self.starts, index, side="right") - 1
        return s, index - self.starts[s]

    def as_list(self) -> list[tuple[str, int]]:
        return [(s.name, i) for s in self.scenes for i in range(s.num_frames)]

    def blocks(self, block_frames: int) -> np.ndarray:
        """(nblocks, 2) global [start, stop) of every block; blocks never straddle scenes."""
        out = []
        for s in self.scenes:
            starts = np.arange(0, s.num_frames, block_frames)
            stops = np.minimum(starts + block_frames, s.num_frames)
            out.append(np.stack([starts + s.offset, stops + s.offset], 1))
        return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def train_order(table: FrameTable, *, block_frames: int, buffer_blocks: int, seed: int, epoch: int) -> np.ndarray:
    """The whole epoch's frame order, before sharding (the same on every rank)."""
    rng = np.random.default_rng([seed, epoch])
    blocks = table.blocks(block_frames)[rng.permutation(len(table.blocks(block_frames)))]
    parts = []
    for w in range(0, len(blocks), max(1, buffer_blocks)):
        frames = np.concatenate([np.arange(a, b) for a, b in blocks[w:w + buffer_blocks]])
        parts.append(frames[rng.permutation(len(frames))])
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def shard(order: np.ndarray, rank: int, world_size: int, *, equal: bool) -> np.ndarray:
    """Rank's contiguous slice. `equal` (training): every rank the same length, the remainder dropped;
    otherwise (evaluation) slices of ceil(N/world) that cover every frame exactly once."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    n = len(order)
    per = n // world_size if equal else -(-n // world_size)
    return order[rank * per: min(n, (rank + 1) * per)]


def batch_slices(n: int, batch_size: int, drop_last: bool) -> list[tuple[int, int]]:
    nb = n // batch_size if drop_last else -(-n // batch_size)
    return [(b * batch_size, min(n, (b + 1) * batch_size)) for b in range(nb)]
