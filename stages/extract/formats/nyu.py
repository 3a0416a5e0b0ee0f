"""NYU-Depth-v2 (labeled set): reader and writer side by side.

On-disk layout (FORMATS.md, "NYU-Depth-v2"):

- ``nyu_depth_v2_labeled.mat``: MATLAB v7.3, i.e. HDF5 behind a 512-byte MATLAB header. h5py sees MATLAB's
  column-major axes reversed: ``images`` (N,3,W,H) uint8, ``depths`` (N,W,H) float32 metres, ``labels``
  (N,W,H) raw class ids 1..894 with 0 = unlabelled. Frames are read one at a time (the real file is 2.8 GB).
- ``splits.mat`` (MATLAB v5): ``trainNdxs`` / ``testNdxs``, 1-based image indices (795 / 654).
- ``classMapping40.mat`` (MATLAB v5): ``mapClass`` 1x894, raw id → NYU40 id; NYU40 = concat([0], mapClass)[raw].

Labels stay NYU40 ids (label space ``nyu40-scannet20``: only the 20 ScanNet ids are evaluated). The labeled
set has no camera poses: every frame gets the identity pose and the standard NYU colour intrinsics.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import scipy.io

from cache_schema.labels import NYU40_NAMES

from .errors import FormatError
from .records import FrameRecord, SceneRecord, SkipCounter

MAT_FILE = "nyu_depth_v2_labeled.mat"
SPLITS_FILE = "splits.mat"
MAPPING_FILE = "classMapping40.mat"
SPLITS = ("train", "test", "all")
NUM_RAW_CLASSES = 894
NUM_NYU40 = 40
# Standard NYU-Depth-v2 colour intrinsics for 640x480 (the labeled depths are registered to colour).
NYU_WIDTH, NYU_HEIGHT = 640, 480
NYU_FX, NYU_FY, NYU_CX, NYU_CY = 518.8579, 519.4696, 325.5824, 253.7362
MATLAB_USERBLOCK = 512
# Fixed date keeps written files byte-identical run to run (input fingerprints depend on it).
_MATLAB_HEADER_TEXT = "MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 2015 HDF5 schema 1.00 ."


def nyu_intrinsics(width: int = NYU_WIDTH, height: int = NYU_HEIGHT) -> np.ndarray:
    """The standard NYU colour intrinsics, scaled to an image of ``width`` x ``height``."""
    sx, sy = width / NYU_WIDTH, height / NYU_HEIGHT
    return np.array([[NYU_FX * sx, 0.0, NYU_CX * sx], [0.0, NYU_FY * sy, NYU_CY * sy], [0.0, 0.0, 1.0]])


# --------------------------------------------------------------------------------------------- tables


def _loadmat(path: Path) -> dict:
    if not path.is_file():
        raise FormatError(f"missing file: {path}")
    try:
        return scipy.io.loadmat(str(path))
    except (ValueError, TypeError, NotImplementedError, OSError) as e:
        raise FormatError(f"{path}: not a readable MATLAB v5 file ({e})") from e


def _mat_key(d: dict, key: str, path: Path) -> np.ndarray:
    if key not in d:
        raise FormatError(f"{path}: missing variable {key!r}")
    return np.asarray(d[key])


def read_class_mapping(path: Path) -> np.ndarray:
    """(895,) uint8 lookup raw id → NYU40 id: ``concat([0], mapClass)``."""
    path = Path(path)
    m = _mat_key(_loadmat(path), "mapClass", path).reshape(-1)
    if m.size != NUM_RAW_CLASSES or not np.issubdtype(m.dtype, np.number):
        raise FormatError(f"{path}: mapClass must hold {NUM_RAW_CLASSES} numbers, got {m.size} of {m.dtype}")
    if m.min() < 0 or m.max() > NUM_NYU40:
        raise FormatError(f"{path}: mapClass values must be NYU40 ids 0..40, got {m.min()}..{m.max()}")
    return np.concatenate([[0], m]).astype(np.uint8)


def read_splits(path: Path) -> dict[str, np.ndarray]:
    """0-based image indices per split: ``{"train": ..., "test": ...}`` from 1-based trainNdxs / testNdxs."""
    path = Path(path)
    d = _loadmat(path)
    out = {}
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        v = _mat_key(d, key, path).reshape(-1)
        if v.size and (not np.issubdtype(v.dtype, np.number) or v.min() < 1):
            raise FormatError(f"{path}: {key} must hold 1-based image indices")
        out[split] = v.astype(np.int64) - 1
    return out


def synthetic_map_class() -> np.ndarray:
    """A deterministic 894-entry mapClass: raw id r → NYU40 id ((r-1) mod 40) + 1, so each class has 22+ raw ids."""
    return (np.arange(NUM_RAW_CLASSES) % NUM_NYU40 + 1).astype(np.uint8)


def synthetic_raw_labels(nyu40: np.ndarray, frame_index: int) -> np.ndarray:
    """Raw ids (uint16) that ``synthetic_map_class`` maps back to ``nyu40``, varied over pixels and frames."""
    c = np.asarray(nyu40).astype(np.int64)
    if c.size and (c.min() < 0 or c.max() > NUM_NYU40):
        raise ValueError(f"NYU40 labels must be 0..40, got {c.min()}..{c.max()}")
    choices = (NUM_RAW_CLASSES - c) // NUM_NYU40 + 1  # raw ids c, c+40, ... up to 894
    yy, xx = np.indices(c.shape)
    k = (yy + 3 * xx + 7 * frame_index) % np.maximum(choices, 1)
    return np.where(c == 0, 0, c + NUM_NYU40 * k).astype(np.uint16)


# --------------------------------------------------------------------------------------------- dataset


class NYUDataset:
    """NYU-Depth-v2 labeled frames as a 2D-only ``DatasetReader``: one scene per split (``nyu_train``, ``nyu_test``).

    ``frame_id`` is the 0-based image index in the .mat file (``name`` says the 1-based MATLAB index).
    """

    name = "nyu"
    label_space = "nyu40-scannet20"
    has_3d = False

    def __init__(self, root, *, split: str = "train", mat: str | os.PathLike | None = None,
                 splits: str | os.PathLike | None = None, mapping: str | os.PathLike | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.mat_path = Path(mat) if mat else self.root / MAT_FILE
        self.splits_path = Path(splits) if splits else self.root / SPLITS_FILE
        self.mapping_path = Path(mapping) if mapping else self.root / MAPPING_FILE
        self._splits: dict[str, np.ndarray] | None = None
        self._lut: np.ndarray | None = None

    def scene_names(self) -> list[str]:
        return ["nyu_train", "nyu_test"] if self.split == "all" else [f"nyu_{self.split}"]

    def load_scene(self, name: str) -> SceneRecord:
        raise FormatError(f"NYU-Depth-v2 is a 2D-only dataset (has_3d=False): scene {name!r} has no "
                                  "point cloud; use frames()")

    def indices(self, name: str) -> np.ndarray:
        """0-based .mat image indices of a scene's frames, in split order."""
        if name not in self.scene_names():
            raise FormatError(f"unknown NYU scene {name!r}; this reader (split={self.split!r}) has "
                              f"{self.scene_names()}")
        if self._splits is None:
            self._splits = read_splits(self.splits_path)
        return self._splits[name.removeprefix("nyu_")]

    def label_lookup(self) -> np.ndarray:
        if self._lut is None:
            self._lut = read_class_mapping(self.mapping_path)
        return self._lut

    def frames(self, name: str, frame_skip: int = 1, skips: SkipCounter | None = None) -> Iterator[FrameRecord]:
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        indices = self.indices(name)[::frame_skip]
        lut = self.label_lookup()
        with _open_labeled(self.mat_path) as f:
            n, w, h = _check_layout(f, self.mat_path)
            bad = indices[(indices < 0) | (indices >= n)]
            if bad.size:
                raise FormatError(f"{self.splits_path}: index {int(bad[0]) + 1} is past the {n} images of "
                                  f"{self.mat_path}")
            k = nyu_intrinsics(w, h)
            for idx in indices:
                yield _read_frame(f, int(idx), lut, k, self.mat_path)

    def scene_input_files(self, name: str) -> list[str]:
        self.indices(name)  # validates the name
        return [os.path.relpath(p, self.root) for p in (self.mat_path, self.splits_path, self.mapping_path)]


def _open_labeled(path: Path) -> h5py.File:
    if not path.is_file():
        raise FormatError(f"missing file: {path}")
    if not h5py.is_hdf5(str(path)):
        raise FormatError(f"{path}: not a MATLAB v7.3 (HDF5) file")
    return h5py.File(path, "r")


def _check_layout(f: h5py.File, path: Path) -> tuple[int, int, int]:
    for key in ("images", "depths", "labels"):
        if key not in f:
            raise FormatError(f"{path}: missing dataset {key!r}")
    shape = f["images"].shape
    if len(shape) != 4 or shape[1] != 3:
        raise FormatError(f"{path}: images must be (N,3,W,H) as h5py sees MATLAB's axes, got {shape}")
    n, _, w, h = shape
    for key in ("depths", "labels"):
        if f[key].shape != (n, w, h):
            raise FormatError(f"{path}: {key} must be {(n, w, h)} to match images, got {f[key].shape}")
    return n, w, h


def _read_frame(f: h5py.File, idx: int, lut: np.ndarray, k: np.ndarray, path: Path) -> FrameRecord:
    # Per-frame slices of MATLAB's column-major arrays: (3,W,H) → (H,W,3) and (W,H) → (H,W).
    image = np.ascontiguousarray(np.asarray(f["images"][idx]).transpose(2, 1, 0)).astype(np.uint8, copy=False)
    depth = np.ascontiguousarray(np.asarray(f["depths"][idx], dtype=np.float32).T)
    raw = np.asarray(f["labels"][idx]).T
    if raw.size and (raw.min() < 0 or raw.max() >= len(lut)):
        raise FormatError(f"{path}: frame {idx + 1} has label ids {raw.min()}..{raw.max()}, outside 0..{len(lut) - 1}")
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return FrameRecord(frame_id=idx, image=image, intrinsics=k.copy(), pose=np.eye(4), depth=depth,
                       depth_intrinsics=k.copy(), labels=lut[raw.astype(np.int64)], name=f"{path.name}[{idx + 1}]")


# --------------------------------------------------------------------------------------------- writer


def write_nyu(root, frames: Sequence[FrameRecord], *, train_idx: Sequence[int], test_idx: Sequence[int]) -> None:
    """Write ``nyu_depth_v2_labeled.mat`` (v7.3), ``splits.mat`` and ``classMapping40.mat`` under ``root``.

    ``frames`` carry NYU40 ``labels`` (0..40; None = unlabelled), depth in metres (None = 0) and share one size;
    their intrinsics and poses are not stored (the labeled set has neither). ``train_idx`` / ``test_idx`` are
    0-based positions in ``frames``; the splits file stores them 1-based, as the real one does. Raw labels are
    synthetic ids 1..894 that the written mapClass maps back to the given NYU40 ids.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not frames:
        raise ValueError("write_nyu needs at least one frame")
    h, w = frames[0].image.shape[:2]
    n = len(frames)
    for split, idx in (("train", train_idx), ("test", test_idx)):
        bad = [i for i in idx if not 0 <= int(i) < n]
        if bad:
            raise ValueError(f"{split}_idx {bad[0]} is outside the {n} frames (indices are 0-based)")
    path = root / MAT_FILE
    with h5py.File(path, "w", userblock_size=MATLAB_USERBLOCK, libver="earliest") as f:
        images = _matlab_dataset(f, "images", (n, 3, w, h), np.uint8, "uint8")
        depths = _matlab_dataset(f, "depths", (n, w, h), np.float32, "single")
        labels = _matlab_dataset(f, "labels", (n, w, h), np.uint16, "uint16")
        for i, fr in enumerate(frames):
            where = f"frame {i} ({fr.name or fr.frame_id})"
            if fr.image.shape != (h, w, 3) or fr.image.dtype != np.uint8:
                raise ValueError(f"{where}: images must all be ({h},{w},3) uint8, "
                                 f"got {fr.image.shape} {fr.image.dtype}")
            depth = np.zeros((h, w), np.float32) if fr.depth is None else np.asarray(fr.depth, np.float32)
            lab = np.zeros((h, w), np.uint8) if fr.labels is None else np.asarray(fr.labels)
            if depth.shape != (h, w) or lab.shape != (h, w):
                raise ValueError(f"{where}: depth and labels must be at image size {(h, w)}")
            images[i] = fr.image.transpose(2, 1, 0)
            depths[i] = depth.T
            labels[i] = synthetic_raw_labels(lab, i).T
    _write_matlab_header(path)
    index_type = np.uint16 if n < 65536 else np.uint32  # the real file holds uint16 columns
    scipy.io.savemat(str(root / SPLITS_FILE), {
        "trainNdxs": (np.asarray(train_idx, np.int64) + 1).astype(index_type).reshape(-1, 1),
        "testNdxs": (np.asarray(test_idx, np.int64) + 1).astype(index_type).reshape(-1, 1),
    })
    map_class = synthetic_map_class()
    scipy.io.savemat(str(root / MAPPING_FILE), {
        "className": np.array(NYU40_NAMES[1:], dtype=object).reshape(1, -1),
        "mapClass": map_class.reshape(1, -1),
        "allClassName": np.array([f"raw{r + 1}_{NYU40_NAMES[c]}" for r, c in enumerate(map_class)],
                                 dtype=object).reshape(1, -1),
    })


def _matlab_dataset(f: h5py.File, key: str, shape: tuple[int, ...], dtype, matlab_class: str) -> h5py.Dataset:
    # One chunk per frame, so a reader touches only the frame it asks for.
    ds = f.create_dataset(key, shape=shape, dtype=dtype, chunks=(1, *shape[1:]))
    ds.attrs.create("MATLAB_class", np.bytes_(matlab_class))
    return ds


def _write_matlab_header(path: Path) -> None:
    """MATLAB's 128-byte header in the HDF5 user block: text, subsystem offset, version 0x0200, endian 'IM'."""
    text = _MATLAB_HEADER_TEXT.encode("ascii").ljust(116, b" ")
    header = text + b"\x00" * 8 + (0x0200).to_bytes(2, "little") + b"IM"
    with open(path, "r+b") as f:
        f.write(header.ljust(MATLAB_USERBLOCK, b"\x00"))
