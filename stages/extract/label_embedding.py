"""The label-embedding control teacher: each point's feature is a fixed random embedding of its label.

It carries exactly the class information the 2D labels already give (the evaluated class, or none) and nothing of
the scene's geometry, so a student distilled from it separates what distillation gains from geometry from what it
gains from labels alone. No network runs: the features go through the same projection, writing and statistics as
a real teacher's, and the cache has the same format (SPEC §1 says how the manifest records it).

Definition: with the label space's evaluated classes in training-id order (0..n-1),
E = |N(0, 1)| of shape (n, C), drawn as ``numpy.random.default_rng(seed).standard_normal((n, C))`` in float32,
and a point with training id t gets E[t]. A point whose label is not an evaluated class (unlabelled, or a class the
space ignores) maps to the 2D labels' ignore value, and gets the zero vector: a value no class row takes (their
entries are > 0 almost surely), so the map stays one-to-one on what the 2D labels can say.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from cache_schema import IGNORE, LabelSpace, TeacherInfo

DEFAULT_CHANNELS = 96  # the reproduction's teacher width (Res16UNet block8), so DN1 and the student keep their shapes


def label_embedding_matrix(num_classes: int, channels: int, seed: int) -> np.ndarray:
    """E: (num_classes, channels) float32, non-negative, fixed by the seed."""
    if num_classes < 1:
        raise ValueError(f"the label embedding needs at least one class, got {num_classes}")
    if channels < 1:
        raise ValueError(f"--embedding-channels must be >= 1, got {channels}")
    if seed < 0:
        raise ValueError(f"--embedding-seed must be >= 0, got {seed}")
    return np.abs(np.random.default_rng(seed).standard_normal((num_classes, channels), dtype=np.float32))


class LabelEmbeddingTeacher:
    """Stands in for the 3D teacher in the scene job: per-point features from labels, not from points and colours."""

    def __init__(self, label_space: LabelSpace, channels: int = DEFAULT_CHANNELS, seed: int = 0):
        self.label_space = label_space
        self.channels = channels
        self.seed = seed
        self.embedding = label_embedding_matrix(label_space.num_classes, channels, seed)
        # one row per stored uint8 value: an evaluated class's id -> its row of E, anything else -> zeros
        self._table = np.zeros((256, channels), np.float32)
        lut = label_space.lookup_table()
        known = lut != IGNORE
        self._table[known] = self.embedding[lut[known]]
        self.info: dict = asdict(TeacherInfo.label_embedding(channels, seed))

    def label_features(self, labels: np.ndarray) -> np.ndarray:
        """(N,) stored label ids of the label space -> (N, C) float32: E[training id], zeros where ignored."""
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"point labels must be (N,), got {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"point labels must be stored ids 0..255 of {self.label_space.name}, got "
                             f"{labels.min()}..{labels.max()}")
        return self._table[labels.astype(np.intp)]
