"""Encoding of the stored images, as the manifest's `encoding` names it.

The one place cache_schema touches an image library: cv2 is imported lazily, only to encode/decode JPEG.
"""

from __future__ import annotations

import numpy as np

from .errors import CacheError


def encode_image(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if fmt == "raw":
        return rgb.tobytes()
    if fmt != "jpeg":
        raise CacheError(f"unknown image encoding {fmt!r}")
    import cv2

    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise CacheError("JPEG encoding failed")
    return buf.tobytes()


def decode_image(data: bytes | np.ndarray, size: tuple[int, int], fmt: str = "jpeg") -> np.ndarray:
    """(H, W, 3) uint8 RGB from stored bytes; a corrupt image raises CacheError."""
    h, w = size
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    if fmt == "raw":
        if buf.size != h * w * 3:
            raise CacheError(f"raw image has {buf.size} bytes, expected {h * w * 3}")
        return buf.reshape(h, w, 3)
    import cv2

    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape[:2] != (h, w):
        raise CacheError(f"corrupt JPEG (decoded {None if bgr is None else bgr.shape[:2]}, expected {(h, w)})")
    return bgr[:, :, ::-1]
