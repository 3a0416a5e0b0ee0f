"""S3DIS point clouds and Stanford 2D-3D-Semantics (2D-3D-S) images: reader and writer side by side.

On-disk layout (FORMATS.md, "S3DIS and Stanford 2D-3D-Semantics"):

- Rooms: ``ROOT/Stanford3dDataset_v1.2/Area_{1..6}/<room>/<room>.txt`` (all points) and
  ``<room>/Annotations/<class>_<k>.txt`` (one object each), whitespace-separated ``x y z r g b`` lines
  (metres with 3 decimals, colours 0-255). The class is the file-name prefix; ``stairs`` counts as clutter.
  We read the Annotations files (they carry the labels); the room file is their concatenation.
- Images: ``ROOT/area_{1,2,3,4,5a,5b,6}/data/{rgb,depth,semantic,pose}/
  camera_<uuid>_<roomType>_<roomNum>_frame_<j>_domain_<modality>.png`` (pose: ``..._domain_pose.json``).
  depth: 16-bit PNG, metres = value / 512, 65535 = missing. semantic: RGB = 24-bit index into
  ``semantic_labels.json`` (``class_instance_roomType_roomNum_area``, index 0 ``<UNK>``), #0D0D0D = missing.
  pose: ``camera_k_matrix`` 3x3 and ``camera_rt_matrix`` 3x4 world-to-camera [R|t] in OpenCV axes.

Area 5b fix. The area_5b poses live in a frame rotated and shifted against the Area_5 point clouds. A point
of that frame maps to the point-cloud frame by ``x' = A x + b`` with ``A = [[0,1,0],[-1,0,0],[0,0,1]]`` (a
yaw about +z) and ``b = (-4.10, 6.25, 0)``. For a camera this means: the centre ``c' = A c + b`` and the
camera-to-world rotation ``R' = A R`` (the optical axes turn with the yaw), i.e. ``pose' = F @ pose`` with
the 4x4 ``F = [[A, b], [0, 1]]``. The reader applies ``F`` to every area_5b pose; the writer applies ``F^-1``
so that a written pose reads back unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cache_schema.labels import IGNORE, S3DIS13

from .errors import FormatError
from .records import FrameRecord, SceneRecord, SkipCounter

log = logging.getLogger(__name__)

POINTCLOUD_DIR = "Stanford3dDataset_v1.2"
SEMANTIC_LABELS_FILE = "semantic_labels.json"
UNK_ENTRY = "<UNK>_0_<UNK>_0_0"
DEPTH_SCALE = 512.0  # stored uint16 = metres * 512
DEPTH_MISSING = 65535
SEMANTIC_MISSING = 0x0D0D0D  # pixel colour #0D0D0D: no label
POSE_CHECK_TOLERANCE = 0.01  # metres: how far R.camera_location + t may stray from 0
MODALITIES = ("rgb", "depth", "semantic", "pose")

# Area 5b fix, see the module docstring.
AREA5B_ROTATION = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
AREA5B_TRANSLATION = np.array([-4.10, 6.25, 0.0])

_CLASS_INDEX = {name: i for i, name in enumerate(S3DIS13.names)}
_CLASS_ALIASES = {"stairs": "clutter"}
_ANNOTATION_RE = re.compile(r"^([A-Za-z]+)(?:_(\d+))?\.txt$")
_AREA_DIR_RE = re.compile(r"^area_(\d)([ab]?)$")
_ROOM_RE = re.compile(r"^([A-Za-z]+)_(\d+)$")
_IMAGE_RE = re.compile(r"^camera_([0-9A-Za-z]+)_([A-Za-z]+)_(\d+)_frame_(\d+)_domain_rgb\.png$")


# --------------------------------------------------------------------------------------------- helpers


def class_index(name: str) -> int:
    """S3DIS13 index of a class name (``stairs`` → clutter); ``IGNORE`` for names outside the 13."""
    return _CLASS_INDEX.get(_CLASS_ALIASES.get(name, name), IGNORE)


def area5b_fix() -> np.ndarray:
    """The 4x4 ``F`` taking area_5b pose coordinates into the Area_5 point-cloud frame."""
    f = np.eye(4)
    f[:3, :3] = AREA5B_ROTATION
    f[:3, 3] = AREA5B_TRANSLATION
    return f


def pointcloud_area(area: str | int) -> str:
    """``Area_N`` for any spelling of an area: 5, "5", "Area_5", "area_5", "area_5a", "area_5b"."""
    s = str(area).strip()
    m = re.fullmatch(r"(?:[Aa]rea_)?(\d)[ab]?", s)
    if not m:
        raise ValueError(f"not an S3DIS area: {area!r} (expected e.g. 'Area_5', 'area_5b' or 5)")
    return f"Area_{m.group(1)}"


def quantize_points(points: np.ndarray) -> np.ndarray:
    """Coordinates as the room files hold them (3 decimals), float32: what a written room reads back as."""
    return np.round(np.asarray(points, dtype=np.float64), 3).astype(np.float32)


def _rel(root: Path, path: Path) -> str:
    return os.path.relpath(path, root)


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FormatError(f"missing file: {path}")
    return path


# --------------------------------------------------------------------------------------------- rooms


def read_xyzrgb(path: Path, skips: SkipCounter | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points (N,3) float64 and colours (N,3) uint8 of one ``x y z r g b`` text file.

    A line with bad bytes, the wrong number of fields, a non-finite coordinate or a colour outside 0..255 is
    skipped and counted under "bad line" (``file:line``); blank lines are ignored.
    """
    path = Path(path)
    data = _require(path).read_bytes()
    if data.isascii():
        # Fast path: the C parser reads a clean file at ~1 s per million lines; any doubt falls to the slow path.
        try:
            arr = np.loadtxt(io.BytesIO(data), dtype=np.float64, ndmin=2, comments=None) if data.strip() else None
        except ValueError:
            arr = np.empty((0, 0))
        if arr is None:
            return np.zeros((0, 3)), np.zeros((0, 3), np.uint8)
        if arr.shape[1] == 6 and _rows_ok(arr).all():
            return arr[:, :3].copy(), np.rint(arr[:, 3:]).astype(np.uint8)
    return _read_xyzrgb_lines(path, data, skips)


def _rows_ok(arr: np.ndarray) -> np.ndarray:
    col = arr[:, 3:]
    return np.isfinite(arr[:, :3]).all(axis=1) & ((col >= 0) & (col <= 255)).all(axis=1)


def _read_xyzrgb_lines(path: Path, data: bytes, skips: SkipCounter | None) -> tuple[np.ndarray, np.ndarray]:
    rows: list[list[float]] = []
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if not line.isascii() or len(fields) != 6:
                raise ValueError
            row = [float(f) for f in fields]
            if not (all(math.isfinite(v) for v in row[:3]) and all(0 <= v <= 255 for v in row[3:])):
                raise ValueError
        except ValueError:
            where = f"{path}:{lineno}"
            log.warning("skipping bad line %s: %r", where, line[:80])
            if skips is not None:
                skips.add("bad line", where)
            continue
        rows.append(row)
    arr = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return arr[:, :3].copy(), np.rint(arr[:, 3:]).astype(np.uint8)


def annotation_files(room_dir: Path) -> list[tuple[Path, int]]:
    """The room's Annotations files with their S3DIS13 class, in reading order (class name, then k)."""
    ann = Path(room_dir) / "Annotations"
    if not ann.is_dir():
        raise FormatError(f"missing folder: {ann}")
    out = []
    for p in ann.iterdir():
        if p.suffix != ".txt" or not p.is_file():
            continue  # real folders hold stray files (.DS_Store and the like)
        m = _ANNOTATION_RE.match(p.name)
        if not m:
            raise FormatError(f"annotation file name is not <class>_<k>.txt: {p}")
        label = class_index(m.group(1))
        if label == IGNORE:
            raise FormatError(f"unknown S3DIS class {m.group(1)!r} in annotation file {p}")
        out.append((m.group(1), int(m.group(2) or 0), p, label))
    out.sort(key=lambda t: (t[0], t[1]))
    return [(p, label) for _, _, p, label in out]


def read_room(room_dir: Path, skips: SkipCounter | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (N,3) float32, colours (N,3) uint8 and S3DIS13 labels (N,) uint8 of one room's Annotations."""
    pts, cols, labs = [], [], []
    for path, label in annotation_files(room_dir):
        p, c = read_xyzrgb(path, skips)
        pts.append(p)
        cols.append(c)
        labs.append(np.full(len(p), label, np.uint8))
    if not pts:
        raise FormatError(f"room has no annotation files: {Path(room_dir) / 'Annotations'}")
    return (np.concatenate(pts).astype(np.float32), np.concatenate(cols), np.concatenate(labs))


def write_s3dis_room(root, area: str, room: str, points: np.ndarray, colors: np.ndarray, labels: np.ndarray,
                     instances: np.ndarray) -> None:
    """Write one room as ``<room>.txt`` plus ``Annotations/<class>_<k>.txt``.

    ``labels`` are S3DIS13 indices (every point must have one: the format has no unlabelled points);
    ``instances`` are object ids; each (class, instance) becomes one annotation file, k = 1.. per class in
    instance order. xyz is written with 3 decimals like the real files (see ``quantize_points``), the room
    file is the concatenation of the annotation files in reading order.
    """
    points = np.asarray(points)
    colors = np.asarray(colors)
    labels = np.asarray(labels).astype(np.int64)
    instances = np.asarray(instances).astype(np.int64)
    n = len(points)
    if points.shape != (n, 3) or colors.shape != (n, 3) or labels.shape != (n,) or instances.shape != (n,):
        raise ValueError(f"room {area}/{room}: points (N,3), colors (N,3), labels (N,), instances (N,) expected")
    if n and (labels.min() < 0 or labels.max() >= S3DIS13.num_classes):
        raise ValueError(f"room {area}/{room}: labels must be S3DIS13 indices 0..12 (S3DIS has no unlabelled points)")
    if not _ROOM_RE.match(room):
        raise ValueError(f"room name must be <roomType>_<roomNum>, got {room!r}")
    room_dir = Path(root) / POINTCLOUD_DIR / pointcloud_area(area) / room
    ann = room_dir / "Annotations"
    ann.mkdir(parents=True, exist_ok=True)
    xyz = np.round(points.astype(np.float64), 3)
    rgb = np.clip(np.rint(colors.astype(np.float64)), 0, 255).astype(np.int64)
    groups = []
    for c in np.unique(labels):
        for k, inst in enumerate(np.unique(instances[labels == c]), start=1):
            groups.append((S3DIS13.names[c], k, np.flatnonzero((labels == c) & (instances == inst))))
    groups.sort(key=lambda g: (g[0], g[1]))  # the reader's order, so the room file matches it
    texts = []
    for name, k, idx in groups:
        text = _format_xyzrgb(xyz[idx], rgb[idx])
        (ann / f"{name}_{k}.txt").write_text(text)
        texts.append(text)
    (room_dir / f"{room}.txt").write_text("".join(texts))


def _format_xyzrgb(xyz: np.ndarray, rgb: np.ndarray) -> str:
    buf = io.StringIO()
    table = np.concatenate([xyz, rgb.astype(np.float64)], axis=1)
    np.savetxt(buf, table, fmt=["%.3f", "%.3f", "%.3f", "%d", "%d", "%d"], delimiter=" ")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- 2D-3D-S


def load_semantic_labels(path: Path) -> list[str]:
    """The ``semantic_labels.json`` list of ``class_instance_roomType_roomNum_area`` strings."""
    try:
        entries = json.loads(_require(Path(path)).read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise FormatError(f"{path}: expected a JSON list of strings")
    return entries


def semantic_label_table(entries: Sequence[str]) -> np.ndarray:
    """(len(entries),) uint8: S3DIS13 class of each semantic index (its string's class prefix; else 255)."""
    return np.array([class_index(e.split("_", 1)[0]) for e in entries], dtype=np.uint8)


def write_semantic_labels(root, entries: list[str]) -> None:
    """Write ``ROOT/semantic_labels.json`` (one JSON list, as the dataset ships it)."""
    if not all(isinstance(e, str) for e in entries):
        raise ValueError("semantic label entries must be strings")
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / SEMANTIC_LABELS_FILE).write_text(json.dumps(list(entries)))


def read_2d3ds_pose(path: Path, *, area: str) -> tuple[np.ndarray, np.ndarray]:
    """(K 3x3, camera-to-world 4x4) of one pose JSON; area_5b poses get the Area 5b fix."""
    path = Path(path)
    try:
        d = json.loads(_require(path).read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise FormatError(f"{path}: expected a JSON object")
    k = _matrix(d, "camera_k_matrix", (3, 3), path)
    rt = _matrix(d, "camera_rt_matrix", (3, 4), path)
    loc = _matrix(d, "camera_location", (3,), path)
    r, t = rt[:, :3], rt[:, 3]
    if np.abs(r @ r.T - np.eye(3)).max() > 1e-3:
        raise FormatError(f"{path}: camera_rt_matrix rotation is not orthonormal")
    miss = float(np.linalg.norm(r @ loc + t))
    if miss > POSE_CHECK_TOLERANCE:
        raise FormatError(f"{path}: camera_rt_matrix disagrees with camera_location by {miss:.4f} m "
                          f"(R·camera_location + t should be 0; is it world-to-camera?)")
    pose = np.eye(4)
    pose[:3, :3] = r.T
    pose[:3, 3] = -r.T @ t
    if area == "area_5b":
        pose = area5b_fix() @ pose
    return k, pose


def _matrix(d: dict, key: str, shape: tuple[int, ...], path: Path) -> np.ndarray:
    if key not in d:
        raise FormatError(f"{path}: missing key {key!r}")
    try:
        m = np.asarray(d[key], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise FormatError(f"{path}: key {key!r} is not numeric") from e
    if m.shape != shape or not np.isfinite(m).all():
        raise FormatError(f"{path}: key {key!r} must be a finite {shape} array, got shape {m.shape}")
    return m


def read_2d3ds_depth(path: Path) -> np.ndarray:
    """(H,W) float32 metres, 0 where missing."""
    raw = cv2.imread(str(_require(Path(path))), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
        raise FormatError(f"{path}: depth must be a single-channel 16-bit PNG")
    depth = raw.astype(np.float32) / np.float32(DEPTH_SCALE)
    depth[raw == DEPTH_MISSING] = 0.0
    return depth


def read_2d3ds_semantic(path: Path, table: np.ndarray) -> np.ndarray:
    """(H,W) uint8 S3DIS13 labels (255 = missing / <UNK> / not one of the 13) of one semantic PNG."""
    raw = cv2.imread(str(_require(Path(path))), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 3 or raw.shape[2] < 3:
        raise FormatError(f"{path}: semantic must be an 8-bit RGB PNG")
    b, g, r = (raw[..., i].astype(np.int64) for i in range(3))  # OpenCV gives BGR
    idx = (r << 16) | (g << 8) | b
    missing = idx == SEMANTIC_MISSING
    bad = ~missing & (idx >= len(table))
    if bad.any():
        raise FormatError(f"{path}: {int(bad.sum())} pixels index past the {len(table)} semantic labels "
                          f"(first index {int(idx[bad][0])}); wrong semantic_labels.json?")
    labels = table[np.where(missing, 0, idx)]
    labels[missing] = IGNORE
    return labels


def read_2d3ds_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(_require(Path(path))), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FormatError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class ImageSet:
    """The four files of one 2D-3D-S frame: ``ROOT/<area_dir>/data/<modality>/<prefix>_domain_<modality>.*``."""

    area_dir: str  # "area_5b"
    prefix: str  # "camera_<uuid>_<roomType>_<roomNum>_frame_<j>"

    def relpath(self, modality: str) -> str:
        ext = "json" if modality == "pose" else "png"
        return f"{self.area_dir}/data/{modality}/{self.prefix}_domain_{modality}.{ext}"

    @property
    def name(self) -> str:
        return f"{self.area_dir}/{self.prefix}"


def index_2d3ds(root: Path) -> dict[str, list[ImageSet]]:
    """Frames per point-cloud scene (``Area_5/office_1``), found through the rgb files, in (area, uuid, j) order."""
    found: dict[str, list[tuple[str, str, int, ImageSet]]] = {}
    for area_dir in sorted(Path(root).glob("area_*")):
        m = _AREA_DIR_RE.match(area_dir.name)
        rgb_dir = area_dir / "data" / "rgb"
        if not m or not rgb_dir.is_dir():
            continue
        for p in rgb_dir.iterdir():
            fm = _IMAGE_RE.match(p.name)
            if not fm:
                continue
            uuid, rtype, rnum, j = fm.groups()
            scene = f"Area_{m.group(1)}/{rtype}_{rnum}"
            prefix = p.name[: -len("_domain_rgb.png")]
            found.setdefault(scene, []).append((area_dir.name, uuid, int(j), ImageSet(area_dir.name, prefix)))
    return {s: [t[3] for t in sorted(v, key=lambda t: t[:3])] for s, v in found.items()}


def write_2d3ds_frames(root, area: str, room: str, frames: Iterable[FrameRecord], *,
                       instances_of_frames: Sequence[np.ndarray | None] | None = None) -> list[str]:
    """Write frames of one room as 2D-3D-S rgb/depth/semantic/pose files; returns the frames' reader names.

    ``area`` is an image-area folder (``area_3``, ``area_5b``), ``room`` ``<roomType>_<roomNum>``. Frames carry
    S3DIS13 ``labels`` (255 = missing) at image size, depth at image size (the depth intrinsics must equal the
    colour ones, as in 2D-3D-S), and camera-to-world poses in the point-cloud frame (area_5b: the inverse Area
    5b fix is applied so the reader's fix gives them back). ``instances_of_frames`` (per frame an (H,W) object
    id map, or None) names the instances in ``semantic_labels.json``; without it every class is instance 1.
    ``ROOT/semantic_labels.json`` is extended with one entry per new (class, instance, room).
    """
    root = Path(root)
    am = _AREA_DIR_RE.match(area)
    rm = _ROOM_RE.match(room)
    if not am:
        raise ValueError(f"2D-3D-S area must be area_1..area_6 (area_5a/area_5b), got {area!r}")
    if not rm:
        raise ValueError(f"room name must be <roomType>_<roomNum>, got {room!r}")
    labels_path = root / SEMANTIC_LABELS_FILE
    entries = load_semantic_labels(labels_path) if labels_path.exists() else [UNK_ENTRY]
    entry_index = {e: i for i, e in enumerate(entries)}
    for modality in MODALITIES:
        (root / area / "data" / modality).mkdir(parents=True, exist_ok=True)
    unfix = np.linalg.inv(area5b_fix()) if area == "area_5b" else np.eye(4)
    names = []
    for i, fr in enumerate(frames):
        inst = None if instances_of_frames is None else instances_of_frames[i]
        uid = hashlib.sha1(f"{area}/{room}/{fr.frame_id}".encode()).hexdigest()[:24]
        # A uuid that begins with the frame id keeps the reader's (uuid, j) order equal to the writing order.
        s = ImageSet(area, f"camera_{fr.frame_id:08x}{uid}_{room}_frame_{fr.frame_id}")
        where = f"{area}/{room} frame {fr.frame_id}"
        h, w = fr.image.shape[:2]
        cv2.imwrite(str(root / s.relpath("rgb")), cv2.cvtColor(np.ascontiguousarray(fr.image), cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / s.relpath("depth")), _encode_depth(fr, where))
        sem = _encode_semantic(fr, inst, entries, entry_index, rm.groups(), am.group(1), where)
        cv2.imwrite(str(root / s.relpath("semantic")), sem[..., ::-1].copy())
        pose_file = unfix @ np.asarray(fr.pose, np.float64)
        (root / s.relpath("pose")).write_text(json.dumps(_pose_json(fr.intrinsics, pose_file, w, room, fr.frame_id,
                                                                    s.prefix)))
        names.append(s.name)
    write_semantic_labels(root, entries)
    return names


def _encode_depth(fr: FrameRecord, where: str) -> np.ndarray:
    h, w = fr.image.shape[:2]
    if fr.depth is None:
        return np.full((h, w), DEPTH_MISSING, np.uint16)
    d = np.asarray(fr.depth, np.float64)
    if d.shape != (h, w):
        raise ValueError(f"{where}: 2D-3D-S depth must be at image size {(h, w)}, got {d.shape}")
    if fr.depth_intrinsics is not None and not np.allclose(fr.depth_intrinsics, fr.intrinsics):
        raise ValueError(f"{where}: 2D-3D-S depth shares the colour intrinsics")
    valid = np.isfinite(d) & (d > 0)
    v = np.rint(np.where(valid, d, 0) * DEPTH_SCALE)
    if (v[valid] >= DEPTH_MISSING).any():
        raise ValueError(f"{where}: depth beyond {(DEPTH_MISSING - 1) / DEPTH_SCALE:.2f} m cannot be stored")
    return np.where(valid, v, DEPTH_MISSING).astype(np.uint16)


def _encode_semantic(fr: FrameRecord, inst: np.ndarray | None, entries: list[str], entry_index: dict[str, int],
                     room_parts: tuple[str, str], area_num: str, where: str) -> np.ndarray:
    h, w = fr.image.shape[:2]
    labels = np.full((h, w), IGNORE, np.int64) if fr.labels is None else np.asarray(fr.labels).astype(np.int64)
    if labels.shape != (h, w):
        raise ValueError(f"{where}: labels must be at image size {(h, w)}, got {labels.shape}")
    bad = (labels != IGNORE) & ((labels < 0) | (labels >= S3DIS13.num_classes))
    if bad.any():
        raise ValueError(f"{where}: labels must be S3DIS13 indices 0..12 or 255")
    inst_map = np.ones((h, w), np.int64) if inst is None else np.asarray(inst).astype(np.int64)
    if inst_map.shape != (h, w):
        raise ValueError(f"{where}: instance map must be at image size {(h, w)}, got {inst_map.shape}")
    idx = np.full((h, w), SEMANTIC_MISSING, np.int64)
    labelled = labels != IGNORE
    pairs, inverse = np.unique(np.stack([labels[labelled], inst_map[labelled]], 1), axis=0, return_inverse=True)
    codes = np.empty(len(pairs), np.int64)
    for n, (c, k) in enumerate(pairs):
        entry = f"{S3DIS13.names[c]}_{k}_{room_parts[0]}_{room_parts[1]}_{area_num}"
        if entry not in entry_index:
            entry_index[entry] = len(entries)
            entries.append(entry)
        codes[n] = entry_index[entry]
    if len(entries) > SEMANTIC_MISSING:
        raise ValueError("semantic_labels.json would reach the 'missing' colour #0D0D0D")
    idx[labelled] = codes[inverse.reshape(-1)]
    return np.stack([(idx >> 16) & 255, (idx >> 8) & 255, idx & 255], axis=-1).astype(np.uint8)


def _pose_json(k: np.ndarray, pose: np.ndarray, width: int, room: str, frame_num: int, prefix: str) -> dict:
    r_c2w, c = pose[:3, :3], pose[:3, 3]
    rt = np.concatenate([r_c2w.T, (-r_c2w.T @ c)[:, None]], axis=1)
    k = np.asarray(k, np.float64)
    return {
        "camera_k_matrix": k.tolist(),
        "camera_rt_matrix": rt.tolist(),
        "camera_location": c.tolist(),
        # Informative only (our reader ignores it): XYZ Euler angles of the camera in Blender axes.
        "final_camera_rotation": _blender_euler_xyz(r_c2w).tolist(),
        "field_of_view_rads": 2.0 * math.atan(width / (2.0 * float(k[0, 0]))),
        "room": room,
        "frame_num": int(frame_num),
        "camera_uuid": prefix.split("_")[1],
    }


def _blender_euler_xyz(r_c2w: np.ndarray) -> np.ndarray:
    m = r_c2w @ np.diag([1.0, -1.0, -1.0])  # OpenCV camera (y down, z forward) → Blender (y up, z back)
    y = math.asin(-max(-1.0, min(1.0, m[2, 0])))
    x = math.atan2(m[2, 1], m[2, 2])
    z = math.atan2(m[1, 0], m[0, 0])
    return np.array([x, y, z])


# --------------------------------------------------------------------------------------------- dataset


class S3DISDataset:
    """S3DIS rooms with their 2D-3D-S frames, as a ``DatasetReader`` (scenes are ``Area_N/<room>``)."""

    name = "s3dis"
    label_space = "s3dis13"
    has_3d = True

    def __init__(self, root, *, scenes: Sequence[str] | None = None, areas: Sequence[str | int] | None = None,
                 semantic_labels: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        self.semantic_labels_path = Path(semantic_labels) if semantic_labels else self.root / SEMANTIC_LABELS_FILE
        self.skips = SkipCounter()  # bad lines met by load_scene when no counter is passed
        self._wanted_scenes = list(scenes) if scenes is not None else None
        self._areas = {pointcloud_area(a) for a in areas} if areas is not None else None
        self._scenes: list[str] | None = None
        self._images: dict[str, list[ImageSet]] | None = None
        self._table: np.ndarray | None = None

    def scene_names(self) -> list[str]:
        if self._scenes is None:
            self._scenes = self._discover()
        return list(self._scenes)

    def _discover(self) -> list[str]:
        pc = self.root / POINTCLOUD_DIR
        if not pc.is_dir():
            aligned = self.root / f"{POINTCLOUD_DIR}_Aligned_Version"
            hint = (f" ({aligned.name} is there, but its rooms were rotated and do not match the 2D-3D-S poses)"
                    if aligned.is_dir() else "")
            raise FormatError(f"missing folder: {pc}{hint}")
        found = []
        for area in sorted(p for p in pc.iterdir() if p.is_dir() and re.fullmatch(r"Area_\d", p.name)):
            if self._areas is not None and area.name not in self._areas:
                continue
            found += [f"{area.name}/{r.name}" for r in sorted(area.iterdir()) if (r / "Annotations").is_dir()]
        if self._wanted_scenes is None:
            return found
        missing = [s for s in self._wanted_scenes if s not in found]
        if missing:
            raise FormatError(f"scenes not found under {pc}: {', '.join(missing)}")
        return [s for s in found if s in set(self._wanted_scenes)]

    def _check(self, name: str) -> None:
        if name not in self.scene_names():
            raise FormatError(f"unknown S3DIS scene {name!r} "
                              f"(expected Area_N/<room> under {self.root / POINTCLOUD_DIR})")

    def load_scene(self, name: str, skips: SkipCounter | None = None) -> SceneRecord:
        self._check(name)
        counter = SkipCounter()
        points, colors, labels = read_room(self.root / POINTCLOUD_DIR / name, counter)
        (skips if skips is not None else self.skips).merge(counter)
        area, room = name.split("/")
        return SceneRecord(name=name, points=points, colors=colors, labels=labels,
                           point_ids=np.arange(len(points), dtype=np.int64), label_space=self.label_space,
                           meta={"area": area, "room": room, "bad_lines": counter.counts.get("bad line", 0)})

    def image_sets(self, name: str) -> list[ImageSet]:
        """The 2D-3D-S frames paired with a scene (by area and ``<roomType>_<roomNum>``)."""
        self._check(name)
        if self._images is None:
            self._images = index_2d3ds(self.root)
        return list(self._images.get(name, []))

    def semantic_table(self) -> np.ndarray:
        if self._table is None:
            self._table = semantic_label_table(load_semantic_labels(self.semantic_labels_path))
        return self._table

    def frames(self, name: str, frame_skip: int = 1, skips: SkipCounter | None = None) -> Iterator[FrameRecord]:
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        sets = self.image_sets(name)
        if not sets:
            log.warning("S3DIS scene %s has no 2D-3D-S frames under %s", name, self.root)
            if skips is not None:
                skips.add("scene without frames", name)
        for frame_id in range(0, len(sets), frame_skip):
            yield self.read_frame(sets[frame_id], frame_id)

    def read_frame(self, s: ImageSet, frame_id: int) -> FrameRecord:
        """One frame's four files as a FrameRecord (S3DIS13 labels, depth in metres, camera-to-world pose)."""
        image = read_2d3ds_rgb(self.root / s.relpath("rgb"))
        depth = read_2d3ds_depth(self.root / s.relpath("depth"))
        labels = read_2d3ds_semantic(self.root / s.relpath("semantic"), self.semantic_table())
        k, pose = read_2d3ds_pose(self.root / s.relpath("pose"), area=s.area_dir)
        for what, arr in (("depth", depth), ("semantic", labels)):
            if arr.shape != image.shape[:2]:
                raise FormatError(f"{self.root / s.relpath(what)}: size {arr.shape} differs from rgb "
                                  f"{image.shape[:2]} (frame {s.name})")
        return FrameRecord(frame_id=frame_id, image=image, intrinsics=k, pose=pose, depth=depth,
                           depth_intrinsics=k.copy(), labels=labels, name=s.name)

    def scene_input_files(self, name: str) -> list[str]:
        files = [_rel(self.root, p) for p, _ in annotation_files(self.root / POINTCLOUD_DIR / name)]
        sets = self.image_sets(name)
        files += [s.relpath(m) for s in sets for m in MODALITIES]
        if sets:
            files.append(_rel(self.root, self.semantic_labels_path))
        return files
