"""ScanNet's ``.sens`` (version 4) RGB-D stream: a streaming reader and a streaming writer side by side.

Byte layout (FORMATS.md, "`.sens` (version 4)"), little-endian, L = length of the sensor name::

    0      uint32       version = 4
    4      uint64       L
    12     L bytes      sensor name (no NUL)
    12+L   4 x f32[16]  colour intrinsics, colour extrinsics, depth intrinsics, depth extrinsics (row-major 4x4)
    268+L  int32        colour compression (-1 unknown, 0 raw, 1 png, 2 jpeg)
    272+L  int32        depth compression (-1 unknown, 0 raw_ushort, 1 zlib_ushort, 2 occi_ushort)
    276+L  4 x uint32   colour width, colour height, depth width, depth height
    292+L  float32      depth shift (stored value = metres x shift)
    296+L  uint64       number of frames
    304+L  frames       f32[16] camera-to-world pose, uint64 colour timestamp, uint64 depth timestamp,
                        uint64 colour bytes, uint64 depth bytes, then the colour and depth payloads
    end    uint64 + 128-byte IMU records (ignored)

Files are GBs: the reader keeps one frame in memory and seeks past the payloads of frames it skips.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import FormatError
from .records import FrameRecord, SkipCounter

SENS_VERSION = 4
COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
SUPPORTED_COLOR = (0, 1, 2)
SUPPORTED_DEPTH = (0, 1)
_FRAME_HEADER = struct.Struct("<16f4Q")  # pose, colour ts, depth ts, colour bytes, depth bytes
_MATRICES = struct.Struct("<64f")
_TAIL = struct.Struct("<ii4IfQ")  # compressions, sizes, depth shift, frame count
# OpenCV >= 4.10 decodes straight to RGB, saving a full-image channel swap per frame
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def decode_rgb(data) -> np.ndarray | None:
    """JPEG/PNG bytes → RGB uint8 (H, W, 3), or None when they do not decode."""
    buf = np.frombuffer(data, np.uint8)
    if _IMREAD_RGB is not None:
        return cv2.imdecode(buf, _IMREAD_RGB)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass
class SensHeader:
    """Everything before the first frame."""

    version: int
    sensor_name: str
    color_intrinsics: np.ndarray  # (4, 4) float64 (values are float32 on disk)
    color_extrinsics: np.ndarray
    depth_intrinsics: np.ndarray
    depth_extrinsics: np.ndarray
    color_compression: int
    depth_compression: int
    color_width: int
    color_height: int
    depth_width: int
    depth_height: int
    depth_shift: float
    num_frames: int
    header_bytes: int  # offset of the first frame


@dataclass
class SensRawFrame:
    """One frame's pose and still-encoded payloads."""

    index: int
    pose: np.ndarray  # (4, 4) float64
    color_timestamp: int
    depth_timestamp: int
    color_bytes: bytes
    depth_bytes: bytes


class SensFile:
    """A ``.sens`` file opened for streaming; the header is parsed on construction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FormatError(f"missing .sens file: {self.path}")
        self.file_size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            self.header = self._read_header(f)

    # ------------------------------------------------------------------------------------------ header

    def _read_exact(self, f, n: int, what: str) -> bytes:
        b = f.read(n)
        if len(b) != n:
            raise FormatError(f"{self.path}: truncated .sens file while reading {what} "
                              f"(wanted {n} bytes at offset {f.tell() - len(b)}, got {len(b)})")
        return b

    def _read_header(self, f) -> SensHeader:
        (version,) = struct.unpack("<I", self._read_exact(f, 4, "the header"))
        if version != SENS_VERSION:
            raise FormatError(f"{self.path}: .sens version {version}, only version {SENS_VERSION} is supported")
        (name_len,) = struct.unpack("<Q", self._read_exact(f, 8, "the header"))
        if name_len > 4096:
            raise FormatError(f"{self.path}: implausible sensor name length {name_len} (not a .sens file?)")
        name = self._read_exact(f, name_len, "the sensor name").decode("utf-8", errors="replace")
        mats = np.array(_MATRICES.unpack(self._read_exact(f, _MATRICES.size, "the header matrices")), np.float64)
        mats = mats.reshape(4, 4, 4)
        cc, dc, cw, ch, dw, dh, shift, n = _TAIL.unpack(self._read_exact(f, _TAIL.size, "the header"))
        if cc not in SUPPORTED_COLOR:
            raise FormatError(f"{self.path}: colour compression {cc} ({COLOR_COMPRESSION.get(cc, 'invalid')}) is "
                              f"not supported; supported: raw, png, jpeg")
        if dc not in SUPPORTED_DEPTH:
            raise FormatError(f"{self.path}: depth compression {dc} ({DEPTH_COMPRESSION.get(dc, 'invalid')}) is "
                              f"not supported; supported: raw_ushort, zlib_ushort")
        if not (shift > 0 and np.isfinite(shift)):
            raise FormatError(f"{self.path}: invalid depth shift {shift}")
        return SensHeader(version=version, sensor_name=name, color_intrinsics=mats[0], color_extrinsics=mats[1],
                          depth_intrinsics=mats[2], depth_extrinsics=mats[3], color_compression=cc,
                          depth_compression=dc, color_width=cw, color_height=ch, depth_width=dw, depth_height=dh,
                          depth_shift=float(shift), num_frames=n, header_bytes=f.tell())

    @property
    def num_frames(self) -> int:
        return self.header.num_frames

    @property
    def color_k(self) -> np.ndarray:
        """3x3 colour intrinsics (the 4x4 on disk carries an identity border)."""
        return self.header.color_intrinsics[:3, :3].copy()

    @property
    def depth_k(self) -> np.ndarray:
        return self.header.depth_intrinsics[:3, :3].copy()

    # ------------------------------------------------------------------------------------------ frames

    def raw_frames(self, frame_skip: int = 1) -> Iterator[SensRawFrame]:
        """Every ``frame_skip``-th frame (0, k, 2k, ...) with its payloads still encoded.

        Skipped frames cost one 96-byte header read and a seek. A frame running past the end of the file raises
        ``FormatError`` naming the file and the frame.
        """
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        with open(self.path, "rb") as f:
            f.seek(self.header.header_bytes)
            for i in range(self.header.num_frames):
                start = f.tell()
                hb = f.read(_FRAME_HEADER.size)
                if len(hb) != _FRAME_HEADER.size:
                    raise FormatError(f"{self.path}: truncated at frame {i} of {self.header.num_frames} "
                                      f"(frame header at offset {start}, file size {self.file_size})")
                vals = _FRAME_HEADER.unpack(hb)
                c_ts, d_ts, c_n, d_n = vals[16:]
                end = start + _FRAME_HEADER.size + c_n + d_n
                if end > self.file_size:
                    raise FormatError(f"{self.path}: truncated at frame {i} of {self.header.num_frames} "
                                      f"(payload ends at byte {end}, file size {self.file_size})")
                if i % frame_skip:
                    f.seek(end)
                    continue
                pose = np.array(vals[:16], np.float64).reshape(4, 4)
                yield SensRawFrame(index=i, pose=pose, color_timestamp=c_ts, depth_timestamp=d_ts,
                                   color_bytes=f.read(c_n), depth_bytes=f.read(d_n))

    def decode_color(self, raw: SensRawFrame) -> np.ndarray | None:
        """RGB uint8 (H, W, 3), or None when the bytes do not decode to the header's size."""
        h, w = self.header.color_height, self.header.color_width
        if self.header.color_compression == 0:
            if len(raw.color_bytes) != h * w * 3:
                return None
            return np.frombuffer(raw.color_bytes, np.uint8).reshape(h, w, 3).copy()
        rgb = decode_rgb(raw.color_bytes)
        return None if rgb is None or rgb.shape != (h, w, 3) else rgb

    def decode_depth(self, raw: SensRawFrame) -> np.ndarray | None:
        """Depth in metres, float32 (H, W), 0 = invalid; None when the payload is corrupt."""
        h, w = self.header.depth_height, self.header.depth_width
        data = raw.depth_bytes
        if self.header.depth_compression == 1:
            try:
                data = zlib.decompress(data)
            except zlib.error:
                return None
        if len(data) != h * w * 2:
            return None
        mm = np.frombuffer(data, "<u2").reshape(h, w)
        return mm.astype(np.float32) / np.float32(self.header.depth_shift)

    def iter_frames(self, frame_skip: int = 1, skips: SkipCounter | None = None) -> Iterator[FrameRecord]:
        """Decoded frames, every ``frame_skip``-th. Lost-tracking poses and undecodable payloads are counted skips."""
        skips = skips if skips is not None else SkipCounter()
        ck, dk = self.color_k, self.depth_k
        for raw in self.raw_frames(frame_skip):
            where = f"{self.path}:frame {raw.index}"
            if not np.isfinite(raw.pose).all():
                skips.add("non-finite pose", where)
                continue
            image = self.decode_color(raw)
            if image is None:
                skips.add("corrupt colour", where)
                continue
            depth = self.decode_depth(raw)
            if depth is None:
                skips.add("corrupt depth", where)
                continue
            yield FrameRecord(frame_id=raw.index, image=image, intrinsics=ck.copy(), pose=raw.pose, depth=depth,
                              depth_intrinsics=dk.copy(), name=f"frame {raw.index}")


# ---------------------------------------------------------------------------------------------- writer


def _k4(k: np.ndarray) -> np.ndarray:
    k = np.asarray(k, np.float64)
    if k.shape == (4, 4):
        return k
    if k.shape != (3, 3):
        raise ValueError(f"intrinsics must be 3x3 or 4x4, got {k.shape}")
    out = np.eye(4)
    out[:3, :3] = k
    return out


def depth_to_mm(depth: np.ndarray, depth_shift: float = 1000.0) -> np.ndarray:
    """Metres → stored uint16 (rounded; 0, negative and non-finite = invalid; beyond 65535 clipped to invalid)."""
    d = np.asarray(depth, np.float64) * depth_shift
    ok = np.isfinite(d) & (d > 0) & (d <= 0xFFFF)
    return np.where(ok, np.rint(np.where(ok, d, 0)), 0).astype(np.uint16)


def write_sens(path, frames: Iterable[FrameRecord], *, color_intrinsics: np.ndarray, depth_intrinsics: np.ndarray,
               color_size: tuple[int, int], depth_size: tuple[int, int], sensor_name: str = "StructureSensor",
               jpeg_quality: int = 90, depth_shift: float = 1000.0) -> int:
    """Stream ``frames`` into a version-4 ``.sens`` (JPEG colour, zlib depth); returns the number of frames written.

    ``color_size`` and ``depth_size`` are ``(width, height)`` as in the file header (ScanNet: (1296, 968), (640, 480)).
    Each frame's ``image`` must be RGB uint8 at ``color_size`` and its ``depth`` metres at ``depth_size``. The frame
    count is patched into the header at the end, so ``frames`` is consumed lazily, one frame in memory at a time.
    """
    cw, ch = (int(v) for v in color_size)
    dw, dh = (int(v) for v in depth_size)
    name = sensor_name.encode("utf-8")
    mats = np.stack([_k4(color_intrinsics), np.eye(4), _k4(depth_intrinsics), np.eye(4)]).astype(np.float32)
    path = Path(path)
    n = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IQ", SENS_VERSION, len(name)) + name)
        f.write(mats.astype("<f4").tobytes())
        count_at = f.tell() + _TAIL.size - 8
        f.write(_TAIL.pack(2, 1, cw, ch, dw, dh, depth_shift, 0))
        for fr in frames:
            img = np.asarray(fr.image)
            if img.shape != (ch, cw, 3) or img.dtype != np.uint8:
                raise ValueError(f"{path}: frame {fr.frame_id}: image {img.shape} {img.dtype}, expected "
                                 f"({ch}, {cw}, 3) uint8 (color_size is (width, height))")
            if fr.depth is None or np.shape(fr.depth) != (dh, dw):
                raise ValueError(f"{path}: frame {fr.frame_id}: depth {None if fr.depth is None else fr.depth.shape}, "
                                 f"expected ({dh}, {dw}) (depth_size is (width, height))")
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
            if not ok:
                raise ValueError(f"{path}: frame {fr.frame_id}: JPEG encoding failed")
            dz = zlib.compress(depth_to_mm(fr.depth, depth_shift).astype("<u2").tobytes(), 1)
            pose = np.asarray(fr.pose, np.float64).reshape(4, 4).astype("<f4")
            ts = n * 33_333  # microseconds at 30 Hz, like the real streams
            f.write(pose.tobytes() + struct.pack("<4Q", ts, ts, len(jpg), len(dz)))
            f.write(jpg.tobytes())
            f.write(dz)
            n += 1
        f.write(struct.pack("<Q", 0))  # no IMU records
        f.seek(count_at)
        f.write(struct.pack("<Q", n))
    return n
