"""Exact per-channel mean and variance, mergeable across scenes (Chan, Golub & LeVeque's parallel update).

Every scene writer records the partial moments (count, mean, M2) of the feature vectors it wrote; the global
statistics are their merge, so a distributed or resumed extraction gives the same numbers as one pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass
class Moments:
    count: int
    mean: np.ndarray  # (C,) float64
    m2: np.ndarray  # (C,) float64: sum of squared deviations from the mean

    @classmethod
    def empty(cls, channels: int) -> Moments:
        return cls(0, np.zeros(channels, np.float64), np.zeros(channels, np.float64))

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        """Moments of the rows of x (N, C), accumulated in float64 whatever x's dtype."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[0] == 0:
            return cls.empty(x.shape[1])
        mean = x.mean(axis=0)
        return cls(int(x.shape[0]), mean, ((x - mean) ** 2).sum(axis=0))

    def merge(self, other: Moments) -> Moments:
        if other.count == 0:
            return Moments(self.count, self.mean.copy(), self.m2.copy())
        if self.count == 0:
            return Moments(other.count, other.mean.copy(), other.m2.copy())
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return Moments(n, mean, m2)

    @property
    def var(self) -> np.ndarray:
        """Population variance (ddof = 0), what normalization layers use."""
        return self.m2 / self.count if self.count else np.zeros_like(self.m2)

    def to_json(self) -> dict:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> Moments:
        return cls(int(d["count"]), np.asarray(d["mean"], np.float64), np.asarray(d["m2"], np.float64))


def merge_all(parts: Iterable[Moments], channels: int) -> Moments:
    total = Moments.empty(channels)
    for p in parts:
        total = total.merge(p)
    return total
