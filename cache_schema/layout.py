"""The arrays of a scene group: names, dtypes, chunking and codecs (schema v1; SPEC.md is the prose version)."""

from __future__ import annotations

from dataclasses import dataclass

from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

SCENES_GROUP = "scenes"
IMAGE_CHUNK_BYTES = 1 << 20  # ~16 JPEG frames of 640x480 per chunk: a block of frames is 1-2 store reads
CELL_CHUNK = 8192  # ~11 frames of cells at 15 % coverage of a 60x80 grid; 1.5 MB of 96-ch float16 per chunk
FRAME_CHUNK = 4096  # upper bound; per-frame arrays are written once, as one chunk of exactly F (or F+1) rows
LABEL_CHUNK_FRAMES = 4


@dataclass(frozen=True)
class ArraySpec:
    name: str
    dtype: str
    row_shape: tuple[int, ...]  # shape after the first (growing) axis
    rows_per_chunk: int
    codec: str  # none | lz4 | zstd

    def compressors(self):
        if self.codec == "lz4":
            return BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle)
        if self.codec == "lz4-raw":  # already-compressed bytes: no shuffle; only squeezes the last chunk's padding
            return BloscCodec(cname="lz4", clevel=1, shuffle=BloscShuffle.noshuffle, typesize=1)
        if self.codec == "zstd":
            return ZstdCodec(level=1)
        return None


def frame_arrays() -> list[ArraySpec]:
    """Arrays with one row per frame (first axis F), or F+1 for offsets."""
    return [
        ArraySpec("frame_id", "int64", (), FRAME_CHUNK, "lz4"),
        ArraySpec("pose", "float64", (4, 4), FRAME_CHUNK, "none"),
        ArraySpec("intrinsics", "float64", (3, 3), FRAME_CHUNK, "none"),
        ArraySpec("image_size", "int32", (2,), FRAME_CHUNK, "lz4"),
        ArraySpec("image_offsets", "int64", (), FRAME_CHUNK, "lz4"),
        ArraySpec("cell_offsets", "int64", (), FRAME_CHUNK, "lz4"),
    ]


def stream_arrays(height: int, width: int, channels: int, feature_dtype: str = "float16") -> list[ArraySpec]:
    """Arrays streamed while frames are written: images (ragged bytes), label maps, and covered cells.

    `feature_dtype` is the manifest's `encoding.features`: float16, or uint8 (codes of the scene's affine map)."""
    return [
        ArraySpec("image_data", "uint8", (), IMAGE_CHUNK_BYTES, "lz4-raw"),  # JPEG is already compressed
        ArraySpec("labels", "uint8", (height, width), LABEL_CHUNK_FRAMES, "lz4"),
        ArraySpec("cells", "int32", (), CELL_CHUNK, "lz4"),
        ArraySpec("features", feature_dtype, (channels,), CELL_CHUNK, "zstd"),
        ArraySpec("point_index", "int32", (), CELL_CHUNK, "lz4"),
        ArraySpec("point_labels", "uint8", (), CELL_CHUNK, "lz4"),
        ArraySpec("depth", "float16", (), CELL_CHUNK, "lz4"),
    ]


CELL_ARRAYS = ("cells", "features", "point_index", "point_labels", "depth")
ALL_ARRAYS = tuple(s.name for s in frame_arrays()) + tuple(s.name for s in stream_arrays(1, 1, 1))


def grid_shape(height: int, width: int, stride: int) -> tuple[int, int]:
    """Cell (i, j) of the K-stride grid is pixel (K*i, K*j): ceil(H/K) x ceil(W/K) cells."""
    return (-(-height // stride), -(-width // stride))
