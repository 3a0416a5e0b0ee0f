"""What one cached frame holds: the record the writer takes and the reader gives back."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CachedFrame:
    frame_id: int  # source frame id (ScanNet: index in the .sens)
    image: bytes  # encoded as the manifest's `encoding` says (JPEG bytes, or raw H*W*3 RGB)
    image_size: tuple[int, int]  # (H, W) of the stored image
    labels: np.ndarray  # (H, W) uint8, the dataset's label space
    intrinsics: np.ndarray  # (3, 3) float64 of the stored image
    pose: np.ndarray  # (4, 4) float64 camera-to-world
    cells: np.ndarray  # (n,) int32 linear index i*grid_w + j of covered cells, strictly increasing
    features: np.ndarray  # (n, C) float16
    point_index: np.ndarray  # (n,) int32 index of the source point in the scene's point array
    point_labels: np.ndarray  # (n,) uint8 label of that point
    depth: np.ndarray  # (n,) float16 camera depth of that point, metres

    @property
    def num_cells(self) -> int:
        return int(self.cells.shape[0])


@dataclass
class FrameBlock:
    """Frames [start, stop) of one scene, as read with one contiguous slice per array."""

    scene: str
    start: int
    stop: int
    frame_id: np.ndarray  # (F,)
    image_size: np.ndarray  # (F, 2) int32 (H, W)
    intrinsics: np.ndarray  # (F, 3, 3)
    pose: np.ndarray  # (F, 4, 4)
    image_offsets: np.ndarray  # (F+1,) int64, relative to image_data[0]
    image_data: np.ndarray  # uint8 bytes of the F images, concatenated
    labels: np.ndarray  # (F, H, W) uint8
    cell_offsets: np.ndarray  # (F+1,) int64, relative to the cell arrays below
    cells: np.ndarray
    features: np.ndarray
    point_index: np.ndarray
    point_labels: np.ndarray
    depth: np.ndarray

    def __len__(self) -> int:
        return self.stop - self.start

    def image_bytes(self, k: int) -> bytes:
        return self.image_data[self.image_offsets[k]: self.image_offsets[k + 1]].tobytes()

    def frame(self, k: int) -> CachedFrame:
        a, b = int(self.cell_offsets[k]), int(self.cell_offsets[k + 1])
        return CachedFrame(
            frame_id=int(self.frame_id[k]), image=self.image_bytes(k),
            image_size=(int(self.image_size[k, 0]), int(self.image_size[k, 1])), labels=self.labels[k],
            intrinsics=self.intrinsics[k], pose=self.pose[k], cells=self.cells[a:b], features=self.features[a:b],
            point_index=self.point_index[a:b], point_labels=self.point_labels[a:b], depth=self.depth[a:b])
