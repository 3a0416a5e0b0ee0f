"""Epoch order: seeded block/window shuffle, disjoint rank shards, exact resume, evaluation order."""

from __future__ import annotations

import numpy as np
import torch

from cache_schema import open_cache
from stages.train.loader import CacheLoader, LoaderConfig
from stages.train.loader.frames import FrameTable, SceneInfo, shard, train_order


def _table() -> FrameTable:
    sizes = [37, 5, 64]
    offs = np.concatenate([[0], np.cumsum(sizes)])
    return FrameTable([SceneInfo(f"s{i}", n, 8, 8, int(o)) for i, (n, o) in enumerate(zip(sizes, offs, strict=False))])


def test_train_order_is_a_seeded_block_window_shuffle() -> None:
    t = _table()
    o = train_order(t, block_frames=8, buffer_blocks=3, seed=1, epoch=0)
    assert sorted(o.tolist()) == list(range(len(t)))
    assert np.array_equal(o, train_order(t, block_frames=8, buffer_blocks=3, seed=1, epoch=0))
    assert not np.array_equal(o, train_order(t, block_frames=8, buffer_blocks=3, seed=1, epoch=1))
    assert not np.array_equal(o, train_order(t, block_frames=8, buffer_blocks=3, seed=2, epoch=0))
    # each window of 3 blocks holds frames of at most 3 blocks (what makes one read per block pay off)
    blocks = t.blocks(8)
    block_of = np.searchsorted(blocks[:, 0], o, side="right") - 1
    sizes = blocks[:, 1] - blocks[:, 0]
    pos = 0
    seen = []
    while pos < len(o):  # walk windows: 3 blocks' worth of frames each
        first = block_of[pos]
        ids = []
        n = 0
        for b in block_of[pos:]:
            if b not in ids:
                if len(ids) == 3:
                    break
                ids.append(b)
            n += 1
        assert sum(sizes[i] for i in ids) == n and first in ids
        seen += ids
        pos += n
    assert sorted(seen) == list(range(len(blocks)))


def test_shards_are_disjoint_and_equal() -> None:
    o = np.random.default_rng(0).permutation(103)
    parts = [shard(o, r, 4, equal=True) for r in range(4)]
    assert {len(p) for p in parts} == {25}
    assert len(set(np.concatenate(parts).tolist())) == 100
    ev = [shard(np.arange(103), r, 4, equal=False) for r in range(4)]
    assert np.array_equal(np.concatenate(ev), np.arange(103))


def test_resume_mid_epoch_continues_exactly(make_cache) -> None:
    cache = open_cache(make_cache(scenes=3, frames=11, h=32, w=40))
    cfg = LoaderConfig(batch_size=3, crop=25, block_frames=4, shuffle_buffer_blocks=2, seed=5, workers=2)
    full = CacheLoader(cache, cfg)
    full.set_epoch(1)
    ref = [(b.index.clone(), b.image.clone(), b.features.clone()) for b in full]
    assert full.state_dict()["epoch"] == 2 and full.state_dict()["position"] == 0  # moved on after the epoch

    first = CacheLoader(cache, cfg)
    first.set_epoch(1)
    it = iter(first)
    for _ in range(4):
        next(it)
    state = first.state_dict()
    it.close()
    first.close()
    assert state == {"epoch": 1, "position": 4, "seed": 5, "rank": 0, "world_size": 1}

    resumed = CacheLoader(cache, cfg)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the trainer's usual call: same epoch keeps the position
    rest = [(b.index.clone(), b.image.clone(), b.features.clone()) for b in resumed]
    assert len(rest) == len(ref) - 4
    for (i0, im0, f0), (i1, im1, f1) in zip(ref[4:], rest, strict=True):
        assert torch.equal(i0, i1) and torch.equal(im0, im1) and torch.equal(f0, f1)


def test_ranks_read_disjoint_frames(make_cache) -> None:
    cache = open_cache(make_cache(scenes=2, frames=13, h=32, w=40))
    cfg = LoaderConfig(batch_size=2, crop=17, block_frames=4, drop_last=True)
    seen = []
    lens = []
    for r in range(3):
        with CacheLoader(cache, cfg, rank=r, world_size=3) as loader:
            idx = [b.index.clone() for b in loader]
            assert [i.tolist() for i in idx] == [i.tolist() for i in loader.batch_indices(0)]
            lens.append(len(idx))
            seen += torch.cat(idx).tolist()
    assert len(set(lens)) == 1 and lens[0] == len(loader)  # equal batch counts: DDP steps stay in lock-step
    assert len(seen) == len(set(seen))


def test_eval_reads_every_frame_once_in_order(make_cache) -> None:
    cache = open_cache(make_cache(scenes=2, frames=7, h=32, w=40))
    loader = CacheLoader(cache, LoaderConfig(batch_size=4, train=False, block_frames=3))
    batches = [(b.index.clone(), tuple(b.image.shape), tuple(b.features.shape)) for b in loader]
    assert torch.cat([i for i, _, _ in batches]).tolist() == list(range(14))
    assert [s[0] for _, s, _ in batches] == [4, 4, 4, 2]  # the last partial batch is kept
    assert batches[0][1] == (4, 3, 32, 40) and batches[0][2] == (4, 8, 4, 5)
    assert loader.frame_table[7] == ("scene0001_00", 0)
