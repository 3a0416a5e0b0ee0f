"""Augmentation moves every cached cell with its pixel: features that encode their source position must come out
at the transformed position, the nearest cell winning, and the image there must show the same source position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_manifest

from cache_schema import SCANNET20, CachedFrame, CacheWriter, open_cache
from stages.train.loader import CacheLoader, LoaderConfig
from stages.train.loader.augment import is_identity

H, W, K = 96, 128, 8
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _position_cache(path: Path, frames: int = 8) -> Path:
    """Raw RGB images whose R = 2x and G = 2y; every cell covered, features = (x, y, cell order), random depths."""
    rng = np.random.default_rng(3)
    gh, gw = -(-H // K), -(-W // K)
    ys, xs = np.mgrid[0:H, 0:W]
    rgb = np.stack([2 * xs, 2 * ys, np.zeros_like(xs)], -1).astype(np.uint8)
    cells = np.arange(gh * gw, dtype=np.int32)
    i, j = np.divmod(cells, gw)
    writer = CacheWriter.create(path, make_manifest(["scene0000_00"], channels=3, fmt="raw"))
    sw = writer.begin_scene("scene0000_00", height=H, width=W)
    for f in range(frames):
        depth = (1.0 + 0.01 * rng.permutation(cells.size)).astype(np.float16)
        if f % 2:  # ties in depth: the earlier cell must win
            depth[:] = np.float16(2.0)
        sw.add(CachedFrame(frame_id=f, image=rgb.tobytes(), image_size=(H, W),
                           labels=np.full((H, W), SCANNET20.ids[f % 20], np.uint8), intrinsics=np.eye(3),
                           pose=np.eye(4), cells=cells,
                           features=np.stack([K * j, K * i, np.arange(cells.size) % 2048], 1).astype(np.float16),
                           point_index=cells.copy(), point_labels=np.full(cells.size, SCANNET20.ids[1], np.uint8),
                           depth=depth))
    sw.commit()
    writer.finalize_stats()
    return path


def _expected(a: np.ndarray, depth: np.ndarray, out_grid: tuple[int, int]) -> dict[tuple[int, int], int]:
    """Plain loops, an independent statement of the rule: a cell claims the output cell its pixel lands in and every
    output cell whose centre comes from its K×K footprint; the nearest claim wins, ties to the earlier cell."""
    gh, gw = -(-H // K), -(-W // K)
    n = np.arange(gh * gw)
    i, j = np.divmod(n, gw)
    x = a[0, 0] * K * j + a[0, 1] * K * i + a[0, 2]
    y = a[1, 0] * K * j + a[1, 1] * K * i + a[1, 2]
    u, v = np.floor(x / 8 + 0.5).astype(int), np.floor(y / 8 + 0.5).astype(int)
    claims: dict[tuple[int, int], set[int]] = {}
    for c in n:
        if 0 <= u[c] < out_grid[1] and 0 <= v[c] < out_grid[0]:
            claims.setdefault((int(v[c]), int(u[c])), set()).add(int(c))
    inv = np.linalg.inv(np.vstack([a, [0, 0, 1]]))
    for ov in range(out_grid[0]):
        for ou in range(out_grid[1]):
            sx, sy, _ = inv @ np.array([8.0 * ou, 8.0 * ov, 1.0])
            ci, cj = int(np.floor(sy / K + 0.5)), int(np.floor(sx / K + 0.5))
            if 0 <= ci < gh and 0 <= cj < gw:  # every cell of this cache is covered
                claims.setdefault((ov, ou), set()).add(ci * gw + cj)
    return {t: min(cs, key=lambda c: (depth[c], c)) for t, cs in claims.items()}


@pytest.mark.parametrize("mode", ["workers", "device"])
@pytest.mark.parametrize("train", [True, False])
def test_cells_follow_their_pixels(tmp_path: Path, mode: str, train: bool) -> None:
    cache = open_cache(_position_cache(tmp_path / "pos"))
    cfg = LoaderConfig(batch_size=4, crop=65, train=train, augment_on=mode, block_frames=4, seed=11,
                       image_size=None if train else (49, 65), workers=2)
    loader = CacheLoader(cache, cfg)
    scene = cache.scene("scene0000_00")
    depths = {f: scene.read_frame(f).depth.astype(np.float32) for f in range(scene.num_frames)}
    ho, wo = loader.out_hw
    yy, xx = np.mgrid[0:ho, 0:wo].astype(np.float64)
    nonidentity = 0
    for b, batch in enumerate(loader):
        a_all = loader.transforms(0, b, batch.index.numpy())
        for k in range(batch.index.shape[0]):
            a = a_all[k]
            nonidentity += not is_identity(a)
            frame = loader.frame_table[int(batch.index[k])][1]
            want = _expected(a, depths[frame], loader.out_grid)
            mask = batch.feature_mask[k].numpy()
            got = {(int(v), int(u)) for v, u in zip(*np.nonzero(mask), strict=True)}
            assert got == set(want), f"frame {frame}: covered output cells differ"
            feats = batch.features[k].numpy()
            for (v, u), c in want.items():
                gw = -(-W // K)
                assert feats[0, v, u] == K * (c % gw) and feats[1, v, u] == K * (c // gw)
                assert batch.depth[k, v, u] == pytest.approx(float(depths[frame][c]))
            assert (batch.feature_labels[k].numpy()[mask] == 1).all()  # NYU40 id 2 (floor) → training id 1
            # the image shows, at each output pixel, the source position A⁻¹(pixel) (R = 2x, G = 2y)
            inv = np.linalg.inv(np.vstack([a, [0, 0, 1]]))
            sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
            sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
            inside = (sx > 1) & (sx < W - 2) & (sy > 1) & (sy < H - 2)
            img = batch.image[k].numpy().transpose(1, 2, 0) * STD * 255 + MEAN * 255
            assert inside.sum() > 0.2 * ho * wo
            assert np.abs(img[..., 0][inside] / 2 - sx[inside]).max() < 1.0
            assert np.abs(img[..., 1][inside] / 2 - sy[inside]).max() < 1.0
            # outside the source: padding with the mean (0 after normalization) and ignore labels
            outside = (sx < -1) | (sx > W) | (sy < -1) | (sy > H)
            assert np.abs(batch.image[k].numpy()[:, outside]).max(initial=0) < 0.05
            assert (batch.labels[k].numpy()[outside] == 255).all()
            assert (batch.labels[k].numpy()[inside] == frame % 20).all()
    assert nonidentity > 0 if train else True
