"""Label spaces a cache can be written in.

A cache stores labels in the *source* label space (NYU40 ids for ScanNet and NYU-v2, S3DIS class indices for
S3DIS) so that the official metrics can be computed from it; the manifest names the space and lists the
evaluated classes. The training id of a class is its position in ``classes``; everything else maps to ``IGNORE``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = 255


@dataclass(frozen=True)
class LabelSpace:
    """A label space: the stored ids of the evaluated classes, in training-id order, and their names."""

    name: str
    ids: tuple[int, ...]
    names: tuple[str, ...]
    unlabelled: int  # the stored value meaning "no annotation"

    @property
    def num_classes(self) -> int:
        return len(self.ids)

    def to_train_ids(self, labels: np.ndarray) -> np.ndarray:
        """Map stored ids (uint8/int) to training ids 0..num_classes-1, everything else to ``IGNORE``."""
        lut = self.lookup_table()
        return lut[np.asarray(labels).astype(np.int64).clip(0, 255)]

    def lookup_table(self) -> np.ndarray:
        lut = np.full(256, IGNORE, dtype=np.uint8)
        for train_id, stored in enumerate(self.ids):
            lut[stored] = train_id
        return lut

    def stored_ids_table(self) -> np.ndarray:
        """The inverse lookup: training id → stored id (uint8, 256 entries; anything else → ``unlabelled``), for
        writing predictions with the same id conventions as the dataset's own label images."""
        lut = np.full(256, self.unlabelled, dtype=np.uint8)
        lut[: self.num_classes] = self.ids
        return lut

    def to_json(self) -> dict:
        return {"name": self.name, "ids": list(self.ids), "names": list(self.names),
                "unlabelled": self.unlabelled, "ignore": IGNORE}

    @classmethod
    def from_json(cls, d: dict) -> LabelSpace:
        return cls(name=str(d["name"]), ids=tuple(int(i) for i in d["ids"]),
                   names=tuple(str(n) for n in d["names"]), unlabelled=int(d["unlabelled"]))


# The ScanNet benchmark's 20 classes as NYU40 ids (FORMATS.md); stored values are NYU40 ids 0..40, 0 = unlabelled.
SCANNET20 = LabelSpace(
    name="nyu40-scannet20",
    ids=(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39),
    names=("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
           "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
           "bathtub", "otherfurniture"),
    unlabelled=0,
)

# S3DIS's 13 classes in the order of s3dis_class_names.txt; stored values are those indices, 255 = unlabelled.
S3DIS13 = LabelSpace(
    name="s3dis13",
    ids=tuple(range(13)),
    names=("ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa",
           "bookcase", "board", "clutter"),
    unlabelled=IGNORE,
)

LABEL_SPACES: dict[str, LabelSpace] = {s.name: s for s in (SCANNET20, S3DIS13)}

NYU40_NAMES: tuple[str, ...] = (
    "unlabelled", "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)


def sqrt_inverse_weights(counts: np.ndarray) -> np.ndarray:
    """Per-class loss weights 1/sqrt(frequency) from per-training-id counts (points or pixels), scaled so the
    average labelled sample weighs 1; classes never seen keep 1. (mIoU counts a rare class as much as the wall;
    the plain loss does not.) The teacher's and the student's `class_weights: sqrt-inverse` both use it."""
    counts = np.asarray(counts, np.float64)
    freq = counts / max(counts.sum(), 1.0)
    w = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
    w = w / max(float((w * freq).sum()), 1e-12)
    return np.where(freq > 0, w, 1.0)
