"""ScanNet-v2: the dataset reader and the writer of the same layouts, side by side (FORMATS.md, "ScanNet-v2").

Layouts under ``ROOT`` (the folder holding ``scans/``):

- ``sens``: ``scans/<scene>/<scene>.sens`` (see ``scannet_sens``), ``<scene>_vh_clean_2.ply`` (mesh),
  ``<scene>_vh_clean_2.labels.ply`` (+ ``ushort label`` = NYU40 id), ``<scene>.txt`` (``key = value``, with
  ``axisAlignment``), ``<scene>.aggregation.json`` + ``<scene>_vh_clean_2.0.010000.segs.json`` (the other label
  source) and ``<scene>_2d-label-filt.zip`` (``label-filt/N.png``, 16-bit *raw ScanNet ids*, N = .sens index).
- ``export``: SensReader's output ``export/<scene>/{color/N.jpg, depth/N.png (mm), pose/N.txt, label-filt/N.png,
  intrinsic/{intrinsic,extrinsic}_{color,depth}.txt}``, N not zero-padded; the 3D files stay in ``scans/<scene>/``.
- ``25k``: ``scannet_frames_25k/<scene>/{color,depth,label,pose}/NNNNNN.*`` (6 digits, labels 8-bit NYU40) and
  ``intrinsics_{color,depth}.txt`` at the scene root; ``ROOT`` may also be the ``scannet_frames_25k`` folder itself.

The mesh and the .sens poses share the *unaligned* frame, so scenes are returned in raw ply coordinates and the
axis alignment only travels in ``SceneRecord.meta``. Raw 2D ids and aggregation categories are mapped to NYU40
through ``scannetv2-labels.combined.tsv`` (``ROOT/`` by default).
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import cv2
import numpy as np
import plyfile

from .errors import FormatError
from .records import FrameRecord, MeshRecord, SceneRecord, SkipCounter
from .scannet_labels import (
    LABEL_TABLE_NAME,
    NUM_NYU40,
    LabelRow,
    LabelTable,
    read_aggregation,
    read_label_table,
    read_scene_list,
    synthetic_label_table,
    write_aggregation,
    write_label_table,
)
from .scannet_sens import SensFile, decode_rgb, depth_to_mm, write_sens

__all__ = [
    "FormatError", "LabelRow", "LabelTable", "ScanNetDataset", "SensFile", "read_aggregation", "read_label_table",
    "read_labels_ply", "read_mesh_ply", "read_scene_list", "read_scene_meta", "synthetic_label_table",
    "write_aggregation", "write_label_table", "write_labels_ply", "write_mesh_ply", "write_scannet_scan",
    "write_scene_txt", "write_sens",
]


LAYOUTS = ("sens", "export", "25k")
FRAMES_25K_DIR = "scannet_frames_25k"
EXPORT_DIR = "export"
EXPORT_DEPTH_SHIFT = 1000.0  # SensReader writes depth PNGs in millimetres
_LABEL_MEMBER = re.compile(r"(?:^|/)label-filt/(\d+)\.png$")
_MESH_PROPS = ("x", "y", "z", "red", "green", "blue")


def scan_files(name: str) -> dict[str, str]:
    """File names of one scan folder, by role."""
    return {"sens": f"{name}.sens", "mesh": f"{name}_vh_clean_2.ply", "labels": f"{name}_vh_clean_2.labels.ply",
            "meta": f"{name}.txt", "label_zip": f"{name}_2d-label-filt.zip", "aggregation": f"{name}.aggregation.json",
            "segs": f"{name}_vh_clean_2.0.010000.segs.json"}


# ---------------------------------------------------------------------------------------------- plys


def _read_ply_vertices(path: Path, needed: Sequence[str]) -> tuple[plyfile.PlyData, np.ndarray]:
    if not path.is_file():
        raise FormatError(f"missing ply file: {path}")
    try:
        with open(path, "rb") as f:
            # faces are fixed triangles in ScanNet: the known length lets plyfile read them as one block
            ply = plyfile.PlyData.read(f, known_list_len={"face": {"vertex_indices": 3}})
    except (plyfile.PlyParseError, ValueError, EOFError) as e:
        raise FormatError(f"{path}: not a readable ply ({e})") from None
    if "vertex" not in ply:
        raise FormatError(f"{path}: no 'vertex' element")
    v = ply["vertex"].data
    for p in needed:
        if p not in v.dtype.names:
            raise FormatError(f"{path}: vertex element has no property {p!r} (has {list(v.dtype.names)})")
    return ply, v


def read_mesh_ply(path: str | Path) -> MeshRecord:
    """``_vh_clean_2.ply``: vertices (float32), RGB colours and triangles; ``labels`` left 0."""
    path = Path(path)
    ply, v = _read_ply_vertices(path, _MESH_PROPS)
    verts = np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32)
    colors = np.stack([v["red"], v["green"], v["blue"]], axis=1).astype(np.uint8)
    faces = np.zeros((0, 3), np.int32)
    if "face" in ply:
        fd = ply["face"].data
        if "vertex_indices" not in fd.dtype.names:
            raise FormatError(f"{path}: face element has no property 'vertex_indices'")
        faces = np.asarray(np.stack(list(fd["vertex_indices"])) if fd.dtype["vertex_indices"].kind == "O"
                           else fd["vertex_indices"], np.int32).reshape(-1, 3)
        if faces.size and (faces.min() < 0 or faces.max() >= len(verts)):
            raise FormatError(f"{path}: face vertex indices outside 0..{len(verts) - 1} (not a triangle mesh?)")
    return MeshRecord(vertices=verts, colors=colors, faces=faces, labels=np.zeros(len(verts), np.uint8))


def read_labels_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``_vh_clean_2.labels.ply``: (vertices float32 (N,3), NYU40 labels uint8 (N,)); ids outside 1..40 → 0."""
    path = Path(path)
    _, v = _read_ply_vertices(path, ("x", "y", "z", "label"))
    raw = np.asarray(v["label"]).astype(np.int64)
    labels = np.where((raw >= 1) & (raw <= NUM_NYU40), raw, 0).astype(np.uint8)
    return np.stack([v["x"], v["y"], v["z"]], axis=1).astype(np.float32), labels


def _ply_bytes(mesh: MeshRecord, colors: np.ndarray, labels: np.ndarray | None, comment: str) -> bytes:
    n, m = len(mesh.vertices), len(mesh.faces)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
              ("alpha", "u1")]
    if labels is not None:
        fields.append(("label", "<u2"))
    vert = np.empty(n, np.dtype(fields))
    xyz = np.asarray(mesh.vertices, np.float32)
    vert["x"], vert["y"], vert["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    vert["red"], vert["green"], vert["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    vert["alpha"] = 255
    if labels is not None:
        vert["label"] = labels
    face = np.empty(m, np.dtype([("n", "u1"), ("v", "<i4", (3,))]))
    face["n"] = 3
    face["v"] = np.asarray(mesh.faces, np.int32).reshape(m, 3)
    header = ["ply", "format binary_little_endian 1.0", f"comment {comment}", f"element vertex {n}"]
    header += [f"property {'float' if t == '<f4' else 'ushort' if t == '<u2' else 'uchar'} {k}" for k, t in fields]
    header += [f"element face {m}", "property list uchar int vertex_indices", "end_header"]
    return ("\n".join(header) + "\n").encode("ascii") + vert.tobytes() + face.tobytes()


def write_mesh_ply(path, mesh: MeshRecord) -> None:
    """``_vh_clean_2.ply``: binary little endian, float xyz, uchar RGBA, ``list uchar int`` faces."""
    Path(path).write_bytes(_ply_bytes(mesh, np.asarray(mesh.colors, np.uint8), None, "VCGLIB generated"))


def label_color(nyu40: np.ndarray) -> np.ndarray:
    """A fixed colour per NYU40 id (labels.ply colours are label colours, not RGB); 0 is black."""
    ids = np.asarray(nyu40, np.int64)
    hue = ((ids * 0.618034) % 1.0 * 180).astype(np.uint8)  # golden-ratio hues: neighbours differ
    hsv = np.stack([hue, np.full_like(hue, 200), np.where(ids > 0, 230, 0).astype(np.uint8)], axis=-1)
    return cv2.cvtColor(hsv.reshape(-1, 1, 3), cv2.COLOR_HSV2RGB).reshape(-1, 3)


def write_labels_ply(path, mesh: MeshRecord) -> None:
    """``_vh_clean_2.labels.ply``: the mesh with label colours and a ``ushort label`` (NYU40 id) per vertex."""
    labels = np.asarray(mesh.labels).astype(np.uint16)
    Path(path).write_bytes(_ply_bytes(mesh, label_color(labels), labels, "MLIB generated"))


# ---------------------------------------------------------------------------------------------- scene txt


@dataclass
class ScanNetSceneMeta:
    """``<scene>.txt``: the raw ``key = value`` pairs and the parsed axis alignment."""

    values: dict[str, str]
    axis_alignment: np.ndarray  # (4, 4) float64, row-major, applied to [x y z 1]; identity if absent


def read_scene_meta(path: str | Path) -> ScanNetSceneMeta:
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"missing scene meta file: {path}")
    values: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, val = line.partition("=")
        if not sep:
            raise FormatError(f"{path}:{lineno}: expected 'key = value', got {line!r}")
        values[key.strip()] = val.strip()
    align = np.eye(4)
    if "axisAlignment" in values:
        try:
            nums = [float(x) for x in values["axisAlignment"].split()]
        except ValueError:
            nums = []
        if len(nums) != 16 or not np.isfinite(nums).all():
            raise FormatError(f"{path}: axisAlignment must be 16 finite numbers, got {values['axisAlignment']!r}")
        align = np.array(nums, np.float64).reshape(4, 4)
    return ScanNetSceneMeta(values=values, axis_alignment=align)


def _fmt(x: float) -> str:
    return repr(float(x))  # shortest exact text: a written matrix reads back bit-identical


def write_scene_txt(path, *, axis_alignment: np.ndarray, color_size, depth_size, color_intrinsics, depth_intrinsics,
                    num_frames) -> None:
    """``<scene>.txt`` with the keys of the real files; sizes are (width, height)."""
    a = np.asarray(axis_alignment, np.float64).reshape(4, 4)
    ck, dk = np.asarray(color_intrinsics, np.float64), np.asarray(depth_intrinsics, np.float64)
    lines = [
        f"axisAlignment = {' '.join(_fmt(x) for x in a.ravel())}",
        f"colorHeight = {int(color_size[1])}",
        f"colorToDepthExtrinsics = {' '.join(_fmt(x) for x in np.eye(4).ravel())}",
        f"colorWidth = {int(color_size[0])}",
        f"depthHeight = {int(depth_size[1])}", f"depthWidth = {int(depth_size[0])}",
        f"fx_color = {_fmt(ck[0, 0])}", f"fx_depth = {_fmt(dk[0, 0])}",
        f"fy_color = {_fmt(ck[1, 1])}", f"fy_depth = {_fmt(dk[1, 1])}",
        f"mx_color = {_fmt(ck[0, 2])}", f"mx_depth = {_fmt(dk[0, 2])}",
        f"my_color = {_fmt(ck[1, 2])}", f"my_depth = {_fmt(dk[1, 2])}",
        f"numColorFrames = {int(num_frames)}", f"numDepthFrames = {int(num_frames)}", "numIMUmeasurements = 0",
        "sceneType = Synthetic",
    ]
    Path(path).write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- 2D helpers


def _read_matrix(path: Path, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    if not path.is_file():
        raise FormatError(f"missing matrix file: {path}")
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise FormatError(f"{path}: not a matrix of numbers ({e})") from None
    if m.shape != shape:
        raise FormatError(f"{path}: expected a {shape[0]}x{shape[1]} matrix, got {m.shape}")
    return m


def _write_matrix(path: Path, m: np.ndarray) -> None:
    path.write_text("\n".join(" ".join(_fmt(x) for x in row) for row in np.asarray(m, np.float64)) + "\n")


def _decode_png16(data: bytes | np.ndarray) -> np.ndarray | None:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return None if img is None or img.ndim != 2 else img


def _fit_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if labels.shape == hw:
        return labels
    return cv2.resize(labels, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)


def _read_rgb(path: Path) -> np.ndarray | None:
    return decode_rgb(np.fromfile(path, np.uint8)) if path.is_file() else None


def _encode(ext: str, img: np.ndarray, where: str, params: Sequence[int] = ()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    if not ok:
        raise ValueError(f"{where}: {ext} encoding failed")
    return buf.tobytes()


def _frame_numbers(folder: Path, ext: str) -> list[int]:
    if not folder.is_dir():
        raise FormatError(f"missing frame folder: {folder}")
    return sorted(int(p.stem) for p in folder.iterdir() if p.suffix == ext and p.stem.isdigit())


# ---------------------------------------------------------------------------------------------- the reader


class ScanNetDataset:
    """ScanNet-v2 as a ``DatasetReader`` (see the module docstring for the layouts)."""

    name = "scannet"
    label_space = "nyu40-scannet20"
    has_3d = True

    def __init__(self, root: str | Path, *, scenes: list[str] | None = None, split_file: str | Path | None = None,
                 label_map: str | Path | None = None, layout: str = "sens"):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown ScanNet layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        self.root = Path(root)
        self.layout = layout
        self._scenes = list(scenes) if scenes is not None else None
        self.split_file = Path(split_file) if split_file else None
        self.label_map = Path(label_map) if label_map else self.root / LABEL_TABLE_NAME
        self._table: LabelTable | None = None

    # ------------------------------------------------------------------ where things are

    @property
    def table(self) -> LabelTable:
        if self._table is None:
            self._table = read_label_table(self.label_map)
        return self._table

    def scan_dir(self, name: str) -> Path:
        return self.root / "scans" / name

    def frames_base(self) -> Path:
        """The folder holding one frame folder per scene (export and 25k layouts)."""
        if self.layout == "export":
            return self.root / EXPORT_DIR
        base = self.root / FRAMES_25K_DIR
        return base if base.is_dir() else self.root

    def frames_dir(self, name: str) -> Path:
        return self.frames_base() / name

    def scene_names(self) -> list[str]:
        if self._scenes is not None:
            return sorted(self._scenes)
        if self.split_file is not None:
            return sorted(read_scene_list(self.split_file))
        if self.layout == "sens":
            base = self.root / "scans"
            found = [p.name for p in base.iterdir() if (p / f"{p.name}.sens").is_file()] if base.is_dir() else []
        else:
            base = self.frames_base()
            found = [p.name for p in base.iterdir() if p.is_dir() and (p / "color").is_dir()] if base.is_dir() else []
        return sorted(found)

    def _required(self, path: Path, what: str, name: str) -> Path:
        if not path.is_file():
            raise FormatError(f"ScanNet scene {name}: missing {what} {path}")
        return path

    # ------------------------------------------------------------------ 3D

    def load_scene(self, name: str) -> SceneRecord:
        files = {k: self.scan_dir(name) / v for k, v in scan_files(name).items()}
        mesh = read_mesh_ply(self._required(files["mesh"], "mesh", name))
        n = len(mesh.vertices)
        if files["labels"].is_file():
            verts, labels = read_labels_ply(files["labels"])
            if len(verts) != n:
                raise FormatError(f"{files['labels']}: {len(verts)} vertices, the mesh {files['mesh']} has {n}")
            source = "labels.ply"
        elif files["aggregation"].is_file() and files["segs"].is_file():
            labels, _ = read_aggregation(files["aggregation"], files["segs"], self.table, n)
            source = "aggregation"
        else:  # test scans carry no annotation
            labels, source = np.zeros(n, np.uint8), "none"
        align = read_scene_meta(files["meta"]).axis_alignment if files["meta"].is_file() else np.eye(4)
        return SceneRecord(name=name, points=mesh.vertices, colors=mesh.colors, labels=labels,
                           point_ids=np.arange(n, dtype=np.int64), label_space=self.label_space,
                           meta={"axis_alignment": align.tolist(), "label_source": source})

    # ------------------------------------------------------------------ 2D

    def frames(self, name: str, frame_skip: int = 1, skips: SkipCounter | None = None) -> Iterator[FrameRecord]:
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        skips = skips if skips is not None else SkipCounter()
        if self.layout == "sens":
            return self._frames_sens(name, frame_skip, skips)
        return self._frames_files(name, frame_skip, skips)

    def _frames_sens(self, name: str, frame_skip: int, skips: SkipCounter) -> Iterator[FrameRecord]:
        d = self.scan_dir(name)
        sens = SensFile(self._required(d / scan_files(name)["sens"], ".sens", name))
        zpath = d / scan_files(name)["label_zip"]
        zf = zipfile.ZipFile(zpath) if zpath.is_file() else None
        try:
            members = {}
            if zf is not None:
                members = {int(m.group(1)): n for n in zf.namelist() if (m := _LABEL_MEMBER.search(n))}
                lut = self.table.lut()
            for fr in sens.iter_frames(frame_skip, skips):
                if fr.frame_id in members:
                    raw = _decode_png16(zf.read(members[fr.frame_id]))
                    if raw is None:
                        skips.add("corrupt label", f"{zpath}:{members[fr.frame_id]}")
                        continue
                    fr.labels = _fit_labels(lut[raw], fr.image.shape[:2])
                yield fr
        finally:
            if zf is not None:
                zf.close()

    def _frames_files(self, name: str, frame_skip: int, skips: SkipCounter) -> Iterator[FrameRecord]:
        d = self.frames_dir(name)
        export = self.layout == "export"
        if export:
            ck = _read_matrix(d / "intrinsic" / "intrinsic_color.txt")[:3, :3]
            dk = _read_matrix(d / "intrinsic" / "intrinsic_depth.txt")[:3, :3]
            label_dir, num = d / "label-filt", "{}"
            lut = self.table.lut() if label_dir.is_dir() else None
        else:
            ck = _read_matrix(d / "intrinsics_color.txt")[:3, :3]
            dk = _read_matrix(d / "intrinsics_depth.txt")[:3, :3]
            label_dir, num = d / "label", "{:06d}"
            ids = np.arange(1 << 16)
            lut = np.where(ids <= NUM_NYU40, ids, 0).astype(np.uint8)  # already NYU40; anything above 40 is ignore
        for i in _frame_numbers(d / "color", ".jpg")[::frame_skip]:
            stem = num.format(i)
            where = f"{d}:frame {stem}"
            pose = _read_matrix(d / "pose" / f"{stem}.txt")
            if not np.isfinite(pose).all():
                skips.add("non-finite pose", where)
                continue
            image = _read_rgb(d / "color" / f"{stem}.jpg")
            if image is None:
                skips.add("corrupt colour", where)
                continue
            dpath = d / "depth" / f"{stem}.png"
            if not dpath.is_file():
                raise FormatError(f"ScanNet scene {name}: missing depth {dpath} for frame {stem}")
            mm = _decode_png16(np.fromfile(dpath, np.uint8))
            if mm is None or mm.dtype != np.uint16:
                skips.add("corrupt depth", where)
                continue
            labels = None
            lpath = label_dir / f"{stem}.png"
            if lut is not None and lpath.is_file():
                raw = _decode_png16(np.fromfile(lpath, np.uint8))
                if raw is None:
                    skips.add("corrupt label", where)
                    continue
                labels = _fit_labels(lut[raw], image.shape[:2])
            yield FrameRecord(frame_id=i, image=image, intrinsics=ck.copy(), pose=pose,
                              depth=mm.astype(np.float32) / np.float32(EXPORT_DEPTH_SHIFT), depth_intrinsics=dk.copy(),
                              labels=labels, name=f"frame {stem}")

    # ------------------------------------------------------------------ fingerprinting

    def scene_input_files(self, name: str) -> list[str]:
        d = self.scan_dir(name)
        files = scan_files(name)
        paths: list[Path] = []
        if self.layout == "sens":
            paths.append(self._required(d / files["sens"], ".sens", name))
        else:
            fd = self.frames_dir(name)
            if not fd.is_dir():
                raise FormatError(f"ScanNet scene {name}: missing frame folder {fd}")
            paths += sorted(p for p in fd.rglob("*") if p.is_file())
        # the 3D files are optional here: a 2D-only extraction (no teacher) never opens them
        roles = ("mesh", "labels", "meta") + (("label_zip",) if self.layout == "sens" else ())
        paths += [d / files[k] for k in roles if (d / files[k]).is_file()]
        if not (d / files["labels"]).is_file():
            paths += [d / files[k] for k in ("aggregation", "segs") if (d / files[k]).is_file()]
        if self.label_map.is_file():
            paths.append(self.label_map)
        return [os.path.relpath(p, self.root) for p in paths]


# ---------------------------------------------------------------------------------------------- the writer


class _LabelZipSink:
    """``<scene>_2d-label-filt.zip`` written frame by frame (raw ScanNet ids, 16-bit PNG)."""

    def __init__(self, path: Path, to_raw: np.ndarray):
        self.zf = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED)  # PNGs are compressed already
        self.to_raw = to_raw

    def add(self, index: int, fr: FrameRecord) -> None:
        if fr.labels is not None:
            png = _encode(".png", self.to_raw[fr.labels], f"frame {index}")
            # a fixed entry time: the same world written twice is byte-identical
            info = zipfile.ZipInfo(f"label-filt/{index}.png", date_time=(1980, 1, 1, 0, 0, 0))
            self.zf.writestr(info, png)

    def close(self) -> None:
        self.zf.close()


class _FolderSink:
    """The SensReader export (``export``) or ``scannet_frames_25k`` (``25k``) folders of one scene."""

    def __init__(self, d: Path, layout: str, to_raw: np.ndarray, jpeg_quality: int):
        self.d, self.layout, self.to_raw, self.q = d, layout, to_raw, jpeg_quality
        self.labels_dir = "label-filt" if layout == "export" else "label"
        for sub in ("color", "depth", "pose", self.labels_dir) + (("intrinsic",) if layout == "export" else ()):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.wrote_intrinsics = False

    def add(self, index: int, fr: FrameRecord) -> None:
        stem = str(index) if self.layout == "export" else f"{index:06d}"
        if not self.wrote_intrinsics:
            ck, dk = np.eye(4), np.eye(4)
            ck[:3, :3] = fr.intrinsics
            dk[:3, :3] = fr.depth_intrinsics if fr.depth_intrinsics is not None else fr.intrinsics
            if self.layout == "export":
                for kind, k in (("color", ck), ("depth", dk)):
                    _write_matrix(self.d / "intrinsic" / f"intrinsic_{kind}.txt", k)
                    _write_matrix(self.d / "intrinsic" / f"extrinsic_{kind}.txt", np.eye(4))
            else:
                _write_matrix(self.d / "intrinsics_color.txt", ck)
                _write_matrix(self.d / "intrinsics_depth.txt", dk)
            self.wrote_intrinsics = True
        where = f"{self.d}: frame {index}"
        bgr = cv2.cvtColor(np.asarray(fr.image, np.uint8), cv2.COLOR_RGB2BGR)
        (self.d / "color" / f"{stem}.jpg").write_bytes(_encode(".jpg", bgr, where, [cv2.IMWRITE_JPEG_QUALITY, self.q]))
        if fr.depth is None:
            raise ValueError(f"{where}: no depth")
        mm = depth_to_mm(fr.depth, EXPORT_DEPTH_SHIFT)
        (self.d / "depth" / f"{stem}.png").write_bytes(_encode(".png", mm, where))
        _write_matrix(self.d / "pose" / f"{stem}.txt", fr.pose)
        if fr.labels is not None:
            lab = self.to_raw[fr.labels] if self.layout == "export" else np.asarray(fr.labels, np.uint8)
            (self.d / self.labels_dir / f"{stem}.png").write_bytes(_encode(".png", lab, where))

    def close(self) -> None:
        pass


def write_scannet_scan(root, name: str, mesh: MeshRecord, frames: Iterable[FrameRecord], *,
                       table_rows: list[LabelRow], layouts: Sequence[str] = ("sens",),
                       axis_alignment: np.ndarray | None = None, jpeg_quality: int = 90) -> None:
    """Write one scene in each requested layout under ``root`` (see the module docstring), streaming ``frames``.

    The 3D files (plys, ``.txt``, aggregation + segs) always go to ``root/scans/<name>/`` and the label table to
    ``root/scannetv2-labels.combined.tsv``. Frames are numbered by their position in ``frames`` (the .sens index),
    in every layout. 2D labels are written as raw ScanNet ids (``label-filt``) by inverting the table, NYU40 in 25k.
    """
    bad = [x for x in layouts if x not in LAYOUTS]
    if bad:
        raise ValueError(f"unknown ScanNet layouts {bad}; choose from {', '.join(LAYOUTS)}")
    root = Path(root)
    table = LabelTable.from_rows(table_rows)
    missing = table.missing_nyu40(np.unique(mesh.labels))
    if missing:
        raise ValueError(f"scene {name}: the label table maps no raw id to NYU40 ids {missing}")
    to_raw = table.nyu40_to_raw_id()
    scan = root / "scans" / name
    scan.mkdir(parents=True, exist_ok=True)
    write_label_table(root / LABEL_TABLE_NAME, table_rows)
    files = scan_files(name)
    write_mesh_ply(scan / files["mesh"], mesh)
    write_labels_ply(scan / files["labels"], mesh)
    write_aggregation(scan / files["aggregation"], scan / files["segs"], mesh, table, name)
    if not layouts:  # a 3D-only scan (a teacher's extra rooms): plys and annotation, no frames, no .sens
        return

    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError(f"scene {name}: no frames to write")
    ck = np.asarray(first.intrinsics, np.float64)
    dk = np.asarray(first.depth_intrinsics if first.depth_intrinsics is not None else first.intrinsics, np.float64)
    color_size = (first.image.shape[1], first.image.shape[0])
    depth_size = (first.depth.shape[1], first.depth.shape[0]) if first.depth is not None else color_size
    sinks: list[_LabelZipSink | _FolderSink] = []
    if "sens" in layouts:
        sinks.append(_LabelZipSink(scan / files["label_zip"], to_raw))
    if "export" in layouts:
        sinks.append(_FolderSink(root / EXPORT_DIR / name, "export", to_raw, jpeg_quality))
    if "25k" in layouts:
        sinks.append(_FolderSink(root / FRAMES_25K_DIR / name, "25k", to_raw, jpeg_quality))

    def tee() -> Iterator[FrameRecord]:
        for index, fr in enumerate(chain([first], it)):
            if fr.labels is not None:
                present = np.flatnonzero(np.bincount(np.asarray(fr.labels, np.uint8).ravel(), minlength=256))
                if table.missing_nyu40(present):
                    raise ValueError(f"scene {name} frame {index}: the label table maps no raw id to NYU40 ids "
                                     f"{table.missing_nyu40(present)}")
            for s in sinks:
                s.add(index, fr)
            yield fr

    try:
        if "sens" in layouts:
            n = write_sens(scan / files["sens"], tee(), color_intrinsics=ck, depth_intrinsics=dk, color_size=color_size,
                           depth_size=depth_size, jpeg_quality=jpeg_quality)
        else:
            n = sum(1 for _ in tee())
    finally:
        for s in sinks:
            s.close()
    align = np.eye(4) if axis_alignment is None else axis_alignment
    write_scene_txt(scan / files["meta"], axis_alignment=align, color_size=color_size, depth_size=depth_size,
                    color_intrinsics=ck, depth_intrinsics=dk, num_frames=n)
