"""How teacher features are stored, as the manifest's `encoding.features` names it (SPEC.md §2).

`float16` (the default): the features as they are. `uint8` (opt-in, lossy): per scene, each channel c is mapped
affinely onto 0..255 from that channel's range over the scene's whole per-point feature matrix,

    q = clip(rint((x - offset[c]) / scale[c]), 0, 255),    value = offset[c] + scale[c] * q,

with offset = min and scale = (max - min) / 255 (scale 1 where max == min, so a constant channel is exact), both
float32, stored in the scene group's attributes `feature_offset` / `feature_scale`. The reconstruction error is at
most scale / 2 per channel, plus the float16 rounding of the dequantized value (readers dequantize in float32 and
hand out float16, as for float16 caches).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CacheError

FEATURE_DTYPES = ("float16", "uint8")
DEFAULT_FEATURE_DTYPE = "float16"
LEVELS = 255  # uint8 codes 0..255
FLOAT16_MAX = 65504.0
_FLOAT16_ROUNDS_FINITE = 65519.0  # float32 values below 65520 cast to a finite float16
# Slack on the range check of values being quantized (in steps beyond half a step): float32 arithmetic only.
_RANGE_SLACK = 1e-3


@dataclass(frozen=True)
class FeatureQuantizer:
    """One scene's per-channel affine uint8 code: value = offset + scale * q."""

    scale: np.ndarray  # (C,) float32, > 0
    offset: np.ndarray  # (C,) float32

    @classmethod
    def from_range(cls, lo: np.ndarray, hi: np.ndarray, where: str = "features") -> FeatureQuantizer:
        """The code for per-channel minima `lo` and maxima `hi` (float16-representable, finite)."""
        lo64, hi64 = np.asarray(lo, np.float64).reshape(-1), np.asarray(hi, np.float64).reshape(-1)
        if lo64.shape != hi64.shape:
            raise CacheError(f"{where}: feature range min/max shapes differ ({lo64.shape} vs {hi64.shape})")
        if not (np.isfinite(lo64).all() and np.isfinite(hi64).all()):
            raise CacheError(f"{where}: feature range has NaN/Inf (refusing to quantize non-finite features)")
        if (hi64 < lo64).any():
            raise CacheError(f"{where}: feature range max < min in channels {np.flatnonzero(hi64 < lo64)[:8].tolist()}")
        if np.abs(np.concatenate([lo64, hi64])).max(initial=0.0) > FLOAT16_MAX:
            raise CacheError(f"{where}: feature range exceeds float16 ({FLOAT16_MAX}): the values cannot be cached")
        offset = lo64.astype(np.float32)
        scale = ((hi64 - offset.astype(np.float64)) / LEVELS).astype(np.float32)
        scale[~(scale > 0)] = 1.0  # max == min: every value is the offset, q = 0, exact
        return cls(scale=scale, offset=offset)

    @classmethod
    def from_features(cls, x: np.ndarray, where: str = "features") -> FeatureQuantizer:
        """The code of the rows of x (N, C): per-channel min/max over all rows."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise CacheError(f"{where}: features must be (N, C), got shape {x.shape}")
        if x.shape[0] == 0:
            return cls.from_range(np.zeros(x.shape[1]), np.zeros(x.shape[1]), where)
        return cls.from_range(x.min(axis=0), x.max(axis=0), where)

    @property
    def channels(self) -> int:
        return int(self.scale.shape[0])

    @property
    def max_error(self) -> np.ndarray:
        """(C,) float64: the largest quantization error per channel, scale / 2 (before float16 rounding on read)."""
        return self.scale.astype(np.float64) / 2

    def error_bound(self) -> np.ndarray:
        """(C,) float64: a bound of |dequantized float16 value - original float16 value| per channel: scale / 2,
        the float16 rounding of the dequantized value (half an ulp: <= 2^-11 of its magnitude, or 2^-25 if
        subnormal) and a little float32 arithmetic slack."""
        m = np.maximum(np.abs(self.offset.astype(np.float64)),
                       np.abs(self.offset.astype(np.float64) + LEVELS * self.scale.astype(np.float64)))
        return self.max_error * (1 + 2 * _RANGE_SLACK) + m * 2.0**-10 + 2.0**-24

    def quantize(self, x: np.ndarray, where: str = "features") -> np.ndarray:
        """(n, C) uint8 codes of x. Values more than half a step outside the range are an error (the range must
        cover every feature written with this code, or the error bound would not hold)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise CacheError(f"{where}: features shape {x.shape} does not match the {self.channels}-channel code")
        if not x.shape[0]:
            return np.zeros(x.shape, np.uint8)
        t = (x.astype(np.float32) - self.offset) / self.scale
        if not np.isfinite(t).all():
            raise CacheError(f"{where}: NaN/Inf features cannot be quantized")
        lim = 0.5 + _RANGE_SLACK
        out = (t < -lim) | (t > LEVELS + lim)
        if out.any():
            ch = np.flatnonzero(out.any(axis=0))
            raise CacheError(f"{where}: features outside the scene's feature range in channels {ch[:8].tolist()} "
                             "(the range must come from every feature the scene writes)")
        return np.clip(np.rint(t), 0, LEVELS).astype(np.uint8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """(n, C) float16 values of codes q: offset + scale * q computed in float32, then cast."""
        v = np.asarray(q).astype(np.float32)
        v *= self.scale
        v += self.offset
        return v.astype(np.float16)

    def to_attrs(self) -> dict[str, list[float]]:
        """Scene attributes (JSON floats hold float32 values exactly)."""
        return {"feature_scale": [float(v) for v in self.scale], "feature_offset": [float(v) for v in self.offset]}

    @classmethod
    def from_attrs(cls, attrs: dict, channels: int, where: str) -> FeatureQuantizer:
        """The code a uint8 scene recorded; a clear CacheError naming `where` if it is missing or malformed."""
        if channels == 0:
            return cls(np.ones(0, np.float32), np.zeros(0, np.float32))
        try:
            scale = np.asarray(attrs["feature_scale"], np.float64)
            offset = np.asarray(attrs["feature_offset"], np.float64)
        except KeyError as e:
            raise CacheError(f"{where}: uint8 features but no {e.args[0]} attribute (dequantization parameters)"
                             ) from e
        except (TypeError, ValueError) as e:
            raise CacheError(f"{where}: malformed feature_scale/feature_offset attributes: {e}") from e
        if scale.shape != (channels,) or offset.shape != (channels,):
            raise CacheError(f"{where}: feature_scale/feature_offset have shapes {scale.shape}/{offset.shape}, "
                             f"expected ({channels},)")
        top = offset + LEVELS * scale
        if not (np.isfinite(scale).all() and np.isfinite(offset).all()) or (scale <= 0).any() \
                or max(np.abs(offset).max(), np.abs(top).max()) > _FLOAT16_ROUNDS_FINITE:
            raise CacheError(f"{where}: feature_scale/feature_offset must be finite, scale > 0, and map 0..255 into "
                             "the float16 range")
        return cls(scale=scale.astype(np.float32), offset=offset.astype(np.float32))


def check_feature_dtype(dtype: str, where: str = "encoding.features") -> str:
    if dtype not in FEATURE_DTYPES:
        raise CacheError(f"{where}: unknown feature dtype {dtype!r} (known: {', '.join(FEATURE_DTYPES)})")
    return dtype
