"""`CacheLoader`: a cache's frames as shuffled, augmented `Batch`es on the training device.

Data path per batch: worker threads read blocks of frames (BlockCache; chunks fetched and decoded directly by
reader.BlockReader, not through one zarr-python call per array), then either
- "workers" mode (the default without CUDA): decode (cv2), warp, normalize and scatter each frame on the CPU
  straight into the slot's reusable buffers, which become the batch; or
- "device" mode (the default on CUDA): put the decoded uint8 images (or, with torchvision on CUDA, the JPEG bytes
  for nvJPEG), training-id labels and the raw cells into the slot's pinned buffers; the consumer copies them to the
  device on a side stream (the next batch's copy overlaps this batch's use) and warps, normalizes and scatters
  there with torch (augment.warp_batch_torch, scatter.scatter_batch_torch; the same code runs on CPU tensors).

On CPU in "workers" mode the yielded batch's tensors are the loader's reused buffers: valid until the next batch is
requested (clone what must outlive the step). Transforms are drawn per batch from (seed, epoch, rank, batch), so a
resumed run reproduces the same batches whatever the thread timing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from cache_schema import IGNORE, CacheError, CacheReader, FrameBlock, LabelSpace
from stages.train.batch import Batch

from .augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalization_coeffs,
    resize_transform,
    train_transform,
    warp_batch_torch,
    warp_image_cv2,
    warp_labels_cv2,
)
from .frames import FrameTable, SceneInfo, batch_slices, shard, train_order
from .pinned import BufferArena, CopyStream
from .reader import BlockCache, BlockReader, Prefetcher, SceneReaders, block_uses
from .scatter import output_grid, scatter_batch_torch, scatter_frame

_IMREAD_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10


@dataclass
class LoaderConfig:
    batch_size: int = 16
    crop: int = 473
    scale: tuple[float, float] = (0.5, 2.0)
    rotate: float = 10.0  # degrees, ±
    flip: bool = True
    train: bool = True  # False: every frame once, in order, no augmentation, native size (or image_size)
    block_frames: int = 16  # consecutive frames read with one store call per array
    shuffle_buffer_blocks: int = 8  # frames are shuffled within windows of this many (shuffled) blocks
    workers: int = 2  # prefetch threads
    prefetch_batches: int = 4  # batches made ahead of the consumer
    seed: int = 0
    drop_last: bool = True  # training only; evaluation keeps the last partial batch
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    image_size: tuple[int, int] | None = None  # evaluation resize (H, W); None = stored size
    augment_on: str = "auto"  # auto | workers | device: where warp/normalize/scatter run (auto: device on CUDA)
    gpu_decode: bool = True  # nvJPEG via torchvision.io.decode_jpeg when on CUDA in device mode and available

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.block_frames < 1 or self.crop < 1:
            raise ValueError("batch_size, block_frames and crop must be >= 1")
        if self.augment_on not in ("auto", "workers", "device"):
            raise ValueError(f"augment_on must be auto|workers|device, not {self.augment_on!r}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale range {self.scale} must satisfy 0 < lo <= hi")


@dataclass
class _Slot:
    arena: BufferArena
    meta: dict = field(default_factory=dict)


def _nvjpeg_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


class CacheLoader:
    """Batches of a cache's complete scenes (or a subset) for one rank; see the module docstring."""

    def __init__(self, cache: CacheReader, cfg: LoaderConfig, *, device: str | torch.device = "cpu",
                 scenes: list[str] | None = None, rank: int = 0, world_size: int = 1):
        self.cache, self.cfg = cache, cfg
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        m = cache.manifest
        self.label_space = LabelSpace.from_json(m.dataset.label_space)
        self.num_classes = self.label_space.num_classes
        self.channels = m.channels
        self.stride = m.projection.stride
        self.encoding = m.encoding.format
        names = list(cache.complete_scenes()) if scenes is None else list(scenes)
        readers = [cache.scene(s) for s in names]  # refuses unknown and incomplete scenes
        infos, offset = [], 0
        for r in readers:
            infos.append(SceneInfo(r.name, r.num_frames, r.image_height, r.image_width, offset))
            offset += r.num_frames
        self.table = FrameTable(infos)
        if len(self.table) == 0:
            raise CacheError(f"{cache.url}: no frames to load (scenes: {names or 'none complete'})")
        self.frame_table: list[tuple[str, int]] = self.table.as_list()
        self._readers = SceneReaders(lambda i: BlockReader(readers[i]), len(names))
        self._blocks = self.table.blocks(cfg.block_frames)
        if cfg.train:
            self.out_hw = (cfg.crop, cfg.crop)
        elif cfg.image_size is not None:
            self.out_hw = (int(cfg.image_size[0]), int(cfg.image_size[1]))
        else:
            sizes = {(s.height, s.width) for s in infos}
            if len(sizes) > 1:
                raise CacheError(f"{cache.url}: evaluation at native size needs one frame size, found {sorted(sizes)}"
                                 "; set LoaderConfig.image_size")
            self.out_hw = sizes.pop()
        self.out_grid = output_grid(self.out_hw)
        mode = cfg.augment_on
        self.mode = ("device" if self.device.type == "cuda" else "workers") if mode == "auto" else mode
        self.gpu_decode = (self.mode == "device" and cfg.gpu_decode and self.encoding == "jpeg"
                           and _nvjpeg_available(self.device))
        self._lut = self.label_space.lookup_table()
        self._scratch = threading.local()
        self._alpha, self._beta = normalization_coeffs(cfg.mean, cfg.std)
        self._pin = self.device.type == "cuda"
        self._copy = CopyStream(self.device)
        nslots = max(cfg.prefetch_batches, cfg.workers) + (2 if self._copy.cuda else 1)
        self._slots = [_Slot(BufferArena(self._pin)) for _ in range(nslots)]
        self.epoch, self.position = 0, 0
        self._active: Prefetcher | None = None
        self._lock = threading.Lock()

    # ---- order and state ----

    def _order(self, epoch: int) -> np.ndarray:
        if self.cfg.train:
            order = train_order(self.table, block_frames=self.cfg.block_frames,
                                buffer_blocks=self.cfg.shuffle_buffer_blocks, seed=self.cfg.seed, epoch=epoch)
            return shard(order, self.rank, self.world_size, equal=True)
        return shard(np.arange(len(self.table), dtype=np.int64), self.rank, self.world_size, equal=False)

    def _batches(self, n: int) -> list[tuple[int, int]]:
        return batch_slices(n, self.cfg.batch_size, self.cfg.drop_last and self.cfg.train)

    def __len__(self) -> int:
        return len(self._batches(len(self._order(self.epoch))))

    def batch_indices(self, epoch: int | None = None) -> list[np.ndarray]:
        """The global frame indices of each batch of an epoch for this rank (no data read)."""
        order = self._order(self.epoch if epoch is None else epoch)
        return [order[a:b] for a, b in self._batches(len(order))]

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its beginning; the current epoch keeps its position (so a resumed run continues)."""
        if epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.cfg.seed,
                "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, d: dict) -> None:
        if int(d["seed"]) != self.cfg.seed:
            raise ValueError(f"loader state was saved with seed {d['seed']}, this loader has seed {self.cfg.seed}")
        if int(d.get("world_size", self.world_size)) != self.world_size:
            raise ValueError(f"loader state was saved with world_size {d['world_size']}, now {self.world_size}")
        self.epoch, self.position = int(d["epoch"]), int(d["position"])

    # ---- iteration ----

    def _start(self) -> tuple[int, int, Prefetcher]:
        """Begin iterating the rest of the current epoch: (epoch, number of batches, running prefetcher)."""
        epoch, order = self.epoch, self._order(self.epoch)
        slices = self._batches(len(order))
        used = order[: slices[-1][1]] if slices else order[:0]
        block_of = np.searchsorted(self._blocks[:, 0], used, side="right") - 1
        first = self.position
        # frames of batches already consumed (a resumed epoch) are not read again
        start_frame = slices[first][0] if first < len(slices) else len(used)
        cache = BlockCache(self._read_block, block_uses(block_of[start_frame:]))
        batches = [(order[a:b], block_of[a:b]) for a, b in slices]

        def work(task: int, slot: _Slot):
            idx, blocks = batches[task]
            return self._make_batch(idx, blocks, cache, slot, self.transforms(epoch, task, idx))

        with self._lock:
            if self._active is not None:
                raise RuntimeError("CacheLoader: only one iteration at a time")
            pf = self._active = Prefetcher(len(slices), work, self._slots, self.cfg.workers, first=first)
        return epoch, len(slices), pf

    def _stop(self, pf: Prefetcher) -> None:
        pf.close()
        with self._lock:
            self._active = None

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch (from `position`); afterwards the loader moves to the next epoch."""
        epoch, nb, pf = self._start()
        first = self.position
        try:
            staged = self._stage(pf, first) if first < nb else None
            for b in range(first, nb):
                cur = staged
                staged = self._stage(pf, b + 1) if self._copy.cuda and b + 1 < nb else None
                batch = self._finish(cur)
                self.position = b + 1
                yield batch
                self._copy.host_reusable(cur[3])
                pf.release(cur[0])
                if staged is None and b + 1 < nb:
                    staged = self._stage(pf, b + 1)
            self.epoch, self.position = epoch + 1, 0
        finally:
            self._stop(pf)

    def host_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of the current epoch as the workers hand it over, before any host-to-device copy or consumer
        work: in "workers" mode the finished batch's tensors, in "device" mode the decoded uint8 images, labels
        and raw cells that the device then warps and scatters. Each dict is valid until the next is requested.
        For benchmarks (the CPU side of the GPU path, measured without a GPU) and for debugging; advances the
        loader's position like iteration does."""
        epoch, nb, pf = self._start()
        try:
            for b in range(self.position, nb):
                slot, host = pf.get(b)
                self.position = b + 1
                yield host
                pf.release(slot)
            self.epoch, self.position = epoch + 1, 0
        finally:
            self._stop(pf)

    def _stage(self, pf: Prefetcher, b: int):
        slot, host = pf.get(b)
        # JPEG bytes go to nvJPEG from the (pinned) host buffer: copying them to the device too would be wasted
        tensors, event = self._copy.to_device({k: v for k, v in host.items() if k not in ("jpeg", "jpeg_offsets")})
        return slot, host, tensors, event

    def close(self) -> None:
        with self._lock:
            if self._active is not None:
                self._active.close()

    def __enter__(self) -> CacheLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- one batch ----

    def _read_block(self, block: int) -> FrameBlock:
        start, stop = (int(v) for v in self._blocks[block])
        s, f0 = self.table.locate(np.asarray([start]))
        return self._readers[int(s[0])].read_block(int(f0[0]), int(f0[0]) + stop - start)

    def transforms(self, epoch: int, batch: int, idx: np.ndarray | None = None) -> np.ndarray:
        """(n, 2, 3) source→output pixel matrices (augment.py) of a batch's frames: a function of (seed, epoch,
        rank, batch) only, so a resumed run, a test or a debugger can recompute them."""
        if idx is None:
            idx = self.batch_indices(epoch)[batch]
        sizes = [(si.height, si.width) for si in (self.table.scenes[int(s)] for s in self.table.locate(idx)[0])]
        rng = np.random.default_rng([self.cfg.seed, epoch, self.rank, batch])
        c = self.cfg
        if c.train:
            return np.stack([train_transform(rng, h, w, crop=c.crop, scale=c.scale, rotate=c.rotate, flip=c.flip)
                             for h, w in sizes])
        return np.stack([resize_transform(h, w, self.out_hw if c.image_size is not None else None) for h, w in sizes])

    def _frames(self, idx: np.ndarray, blocks: np.ndarray, cache: BlockCache):
        """(scene info, block, position in block) of each frame; the caller releases the blocks."""
        scene_no, _ = self.table.locate(idx)
        for g, blk, s in zip(idx, blocks, scene_no, strict=True):
            fb = cache.get(int(blk))
            yield self.table.scenes[int(s)], fb, int(g - self._blocks[blk, 0])

    def _where(self, fb: FrameBlock, k: int) -> str:
        return f"{self.cache.url}: scene {fb.scene}, frame {fb.start + k} (frame id {int(fb.frame_id[k])})"

    def _decode_bgr(self, fb: FrameBlock, k: int, h: int, w: int, half: bool = False, rgb: bool = False
                    ) -> np.ndarray:
        """BGR (or with `rgb`, RGB) uint8 (h, w, 3); with `half` (JPEG only) libjpeg's DCT-domain ½ scaling,
        (ceil(h/2), ceil(w/2))."""
        data = fb.image_data[fb.image_offsets[k]: fb.image_offsets[k + 1]]
        if self.encoding == "raw":
            if data.size != h * w * 3:
                raise CacheError(f"{self._where(fb, k)}: raw image has {data.size} bytes, expected {h * w * 3}")
            return data.reshape(h, w, 3) if rgb else cv2.cvtColor(data.reshape(h, w, 3), cv2.COLOR_RGB2BGR)
        flags = cv2.IMREAD_REDUCED_COLOR_2 if half else cv2.IMREAD_COLOR
        if rgb and _IMREAD_RGB is not None and not half:
            flags = _IMREAD_RGB  # libjpeg-turbo writes RGB directly: no channel swap pass
        bgr = cv2.imdecode(data, flags) if data.size else None
        want = (-(-h // 2), -(-w // 2)) if half else (h, w)
        if bgr is None or bgr.shape[:2] != want:
            got = None if bgr is None else bgr.shape[:2]
            raise CacheError(f"{self._where(fb, k)}: corrupt JPEG (decoded {got}, expected {want})")
        if rgb and flags != _IMREAD_RGB:
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return bgr

    def _make_batch(self, idx: np.ndarray, blocks: np.ndarray, cache: BlockCache, slot: _Slot,
                    a: np.ndarray) -> dict[str, torch.Tensor]:
        cv2.setNumThreads(1)  # parallelism comes from the worker threads
        n = len(idx)
        sizes = [(si.height, si.width) for si in (self.table.scenes[int(s)] for s in self.table.locate(idx)[0])]
        try:
            if self.mode == "workers":
                return self._make_final(idx, blocks, cache, slot.arena, a, n)
            return self._make_raw(idx, blocks, cache, slot.arena, a, sizes, n)
        finally:
            for blk in blocks:
                cache.release(int(blk))

    def _make_final(self, idx, blocks, cache, arena: BufferArena, a: np.ndarray, n: int) -> dict[str, torch.Tensor]:
        ho, wo = self.out_hw
        gh, gw = self.out_grid
        c = self.channels
        out = {"image": arena.get("image", (n, 3, ho, wo), torch.float32),
               "labels": arena.get("labels", (n, ho, wo), torch.int64),
               "features": arena.get("features", (n, c, gh, gw), torch.float32),
               "feature_mask": arena.get("feature_mask", (n, gh, gw), torch.bool),
               "feature_labels": arena.get("feature_labels", (n, gh, gw), torch.int64),
               "depth": arena.get("depth", (n, gh, gw), torch.float32),
               "index": arena.get("index", (n,), torch.int64)}
        np_ = {k: v.numpy() for k, v in out.items()}
        np_["index"][:] = idx
        scratch = self._scratch.__dict__  # this worker thread's reusable uint8 intermediates
        for k, (si, fb, local) in enumerate(self._frames(idx, blocks, cache)):
            half = self.encoding == "jpeg" and abs(np.linalg.det(a[k][:, :2])) <= 0.25  # scale <= 1/2
            bgr = self._decode_bgr(fb, local, si.height, si.width, half)
            # a half-size decode's pixel (x, y) covers full-size pixels 2x, 2x+1: its centre is (2x + ½, 2y + ½)
            a_img = a[k] @ np.array([[2.0, 0, 0.5], [0, 2.0, 0.5], [0, 0, 1]]) if half else a[k]
            warp_image_cv2(bgr, a_img, np_["image"][k], self._alpha, self._beta, scratch)
            warp_labels_cv2(fb.labels[local], a[k], np_["labels"][k], self._lut, scratch)
            # numpy fills (single-threaded memsets; torch's would start intra-op threads that fight the workers),
            # per frame right before the scatter so that its writes land in cache
            np_["features"][k].fill(0)
            np_["feature_mask"][k].fill(False)
            np_["feature_labels"][k].fill(IGNORE)
            np_["depth"][k].fill(0)
            if c:
                c0, c1 = int(fb.cell_offsets[local]), int(fb.cell_offsets[local + 1])
                gw_src = -(-si.width // self.stride)
                scatter_frame(fb.cells[c0:c1], fb.features[c0:c1], fb.depth[c0:c1],
                              self._lut[fb.point_labels[c0:c1]], grid_w=gw_src, stride=self.stride, a=a[k],
                              out_feat=np_["features"][k], out_mask=np_["feature_mask"][k],
                              out_labels=np_["feature_labels"][k], out_depth=np_["depth"][k])
        return out

    def _make_raw(self, idx, blocks, cache, arena: BufferArena, a: np.ndarray, sizes, n: int
                  ) -> dict[str, torch.Tensor]:
        hmax, wmax = max(h for h, _ in sizes), max(w for _, w in sizes)
        frames = list(self._frames(idx, blocks, cache))
        out: dict[str, torch.Tensor] = {}
        if self.gpu_decode:
            nbytes = [int(fb.image_offsets[k + 1] - fb.image_offsets[k]) for _, fb, k in frames]
            jpeg = arena.get("jpeg", (sum(nbytes),), torch.uint8).numpy()
            pos = 0
            for (_, fb, k), nb in zip(frames, nbytes, strict=True):
                jpeg[pos:pos + nb] = fb.image_data[fb.image_offsets[k]: fb.image_offsets[k + 1]]
                pos += nb
            out["jpeg"] = arena.get("jpeg", (sum(nbytes),), torch.uint8)
            out["jpeg_offsets"] = torch.tensor(np.concatenate([[0], np.cumsum(nbytes)]), dtype=torch.int64)
        else:
            img = arena.get("image_u8", (n, hmax, wmax, 3), torch.uint8)
            img_np = img.numpy()
            for k, (si, fb, local) in enumerate(frames):
                img_np[k, :si.height, :si.width] = self._decode_bgr(fb, local, si.height, si.width, rgb=True)
            out["image_u8"] = img
        lab = arena.get("labels_u8", (n, hmax, wmax), torch.uint8)
        lab_np = lab.numpy()
        if any((h, w) != (hmax, wmax) for h, w in sizes):  # padding of smaller frames is ignored by the loss
            lab_np.fill(IGNORE)
        counts = [int(fb.cell_offsets[k + 1] - fb.cell_offsets[k]) if self.channels else 0 for _, fb, k in frames]
        total = sum(counts)
        cells = arena.get("cells", (total,), torch.int32)
        frame = arena.get("frame", (total,), torch.int32)
        feats = arena.get("cell_features", (total, self.channels), torch.float16)
        depth = arena.get("cell_depth", (total,), torch.float16)
        flab = arena.get("cell_labels", (total,), torch.uint8)
        cn, fn, ftn, dn, ln = (t.numpy() for t in (cells, frame, feats, depth, flab))
        pos = 0
        for k, ((si, fb, local), m) in enumerate(zip(frames, counts, strict=True)):
            if (si.height, si.width) == (hmax, wmax):
                cv2.LUT(fb.labels[local], self._lut, dst=lab_np[k])  # straight into the batch buffer
            else:
                lab_np[k, :si.height, :si.width] = cv2.LUT(fb.labels[local], self._lut)
            if m:
                c0 = int(fb.cell_offsets[local])
                cn[pos:pos + m] = fb.cells[c0:c0 + m]
                fn[pos:pos + m] = k
                ftn[pos:pos + m] = fb.features[c0:c0 + m]
                dn[pos:pos + m] = fb.depth[c0:c0 + m]
                ln[pos:pos + m] = self._lut[fb.point_labels[c0:c0 + m]]
                pos += m
        out.update(labels_u8=lab, cells=cells, frame=frame, cell_features=feats, cell_depth=depth, cell_labels=flab)
        meta = arena.get("meta_a", (n, 2, 3), torch.float64)
        meta.numpy()[:] = a
        out["a"] = meta
        sz = arena.get("sizes", (n, 2), torch.int64)
        sz.numpy()[:] = np.asarray(sizes)
        out["sizes"] = sz
        gws = arena.get("grid_w", (n,), torch.int64)
        gws.numpy()[:] = [-(-w // self.stride) for _, w in sizes]
        out["grid_w"] = gws
        ix = arena.get("index", (n,), torch.int64)
        ix.numpy()[:] = idx
        out["index"] = ix
        return out

    def _finish(self, staged) -> Batch:
        _slot, _host, t, event = staged
        self._copy.wait(t, event)
        if self.mode == "workers":
            return Batch(**t)
        n = int(t["index"].shape[0])
        if "jpeg" in _host:
            from torchvision.io import decode_jpeg

            jpeg, offs = _host["jpeg"], _host["jpeg_offsets"].tolist()
            imgs = decode_jpeg([jpeg[offs[k]:offs[k + 1]] for k in range(n)], device=self.device)
            sizes = t["sizes"].tolist()
            hmax, wmax = max(h for h, _ in sizes), max(w for _, w in sizes)
            canvas = torch.zeros(n, hmax, wmax, 3, dtype=torch.uint8, device=self.device)
            for k, im in enumerate(imgs):
                canvas[k, :im.shape[1], :im.shape[2]] = im.permute(1, 2, 0)
            images = canvas
        else:
            images = t["image_u8"]
        image, labels = warp_batch_torch(images, t["labels_u8"], t["sizes"], t["a"], self.out_hw, self.cfg.mean,
                                         self.cfg.std)
        feats, mask, flab, depth = scatter_batch_torch(
            t["frame"], t["cells"], t["cell_features"], t["cell_depth"], t["cell_labels"], grid_w=t["grid_w"],
            stride=self.stride, a=t["a"], batch=n, out_grid=self.out_grid)
        return Batch(image=image, labels=labels, features=feats, feature_mask=mask, feature_labels=flab, depth=depth,
                     index=t["index"].clone())
