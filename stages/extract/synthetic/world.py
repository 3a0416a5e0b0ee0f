"""The synthetic indoor world: seeded scenes (room + camera walk + style) rendered into dataset formats.

A scene is fully determined by (seed, index, style): the room layout and the camera path come from random
streams that do not involve the style, so two styles share geometry, labels and poses exactly (a pure
appearance domain shift). `generate_world` writes scenes through the dataset modules in `formats/`, so the
readers that parse real scans parse these files too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..formats.records import FrameRecord, MeshRecord
from .camera_path import camera_trajectory
from .mesh import build_mesh
from .render import render_depth, render_view
from .rooms import ROOM_TYPES, RoomLayout, generate_room
from .style import Style, get_style

KINDS = ("scannet", "s3dis", "nyu")

# ScanNet's typical calibration (FORMATS.md): colour 1296x968, depth 640x480.
SCANNET_COLOR = (1296, 968, 1170.187988, 1170.187988, 647.75, 483.75)
SCANNET_DEPTH = (640, 480, 571.623718, 571.623718, 319.5, 239.5)
# 2D-3D-S renders square 1080x1080 frames; a ~60 degree field of view is typical of its cameras.
S3DIS_SIZE = (1080, 1080)
S3DIS_FOV = np.radians(60.0)

# S3DIS rooms are offices and their annexes: the room types we build, with their S3DIS room-type names.
S3DIS_ROOMS: dict[str, str] = {"office": "office", "living": "lounge", "kitchen": "pantry", "bathroom": "WC"}

# NYU40 -> S3DIS13 (ceiling, floor, wall, beam, column, window, door, table, chair, sofa, bookcase, board,
# clutter); everything not listed is clutter.
_NYU40_TO_S3DIS = {22: 0, 2: 1, 1: 2, 9: 5, 8: 6, 7: 7, 14: 7, 5: 8, 6: 9, 10: 10, 30: 11, 11: 11}


def nyu40_to_s3dis13(labels: np.ndarray, unlabelled: int = 255) -> np.ndarray:
    """Map NYU40 ids to S3DIS13 indices (rest -> clutter 12); NYU40 0 (unlabelled) -> `unlabelled`."""
    lut = np.full(256, 12, dtype=np.uint8)
    for nyu, s3 in _NYU40_TO_S3DIS.items():
        lut[nyu] = s3
    lut[0] = unlabelled
    return lut[np.asarray(labels).astype(np.int64)]


def scaled_intrinsics(fx: float, fy: float, cx: float, cy: float, ref_size: tuple[int, int],
                      size: tuple[int, int]) -> np.ndarray:
    """Intrinsics of a reference camera resampled to another image size (pixel centres at integers)."""
    sx, sy = size[0] / ref_size[0], size[1] / ref_size[1]
    return np.array([[fx * sx, 0.0, (cx + 0.5) * sx - 0.5], [0.0, fy * sy, (cy + 0.5) * sy - 0.5], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class CameraSetup:
    """Colour and depth image sizes (width, height) and intrinsics of a dataset's frames."""

    color_size: tuple[int, int]
    color_K: np.ndarray
    depth_size: tuple[int, int]
    depth_K: np.ndarray


def camera_setup(kind: str, size: tuple[int, int] | None = None) -> CameraSetup:
    """The dataset's camera; `size` (colour width, height) rescales it (ScanNet depth: half the colour size)."""
    if kind == "scannet":
        cw, ch, fx, fy, cx, cy = SCANNET_COLOR
        dw, dh, dfx, dfy, dcx, dcy = SCANNET_DEPTH
        csize = size or (cw, ch)
        dsize = (dw, dh) if size is None else (max(1, round(size[0] / 2)), max(1, round(size[1] / 2)))
        return CameraSetup(csize, scaled_intrinsics(fx, fy, cx, cy, (cw, ch), csize), dsize,
                           scaled_intrinsics(dfx, dfy, dcx, dcy, (dw, dh), dsize))
    if kind == "nyu":
        from ..formats.nyu import NYU_HEIGHT, NYU_WIDTH, nyu_intrinsics  # the reader assumes these intrinsics

        csize = size or (NYU_WIDTH, NYU_HEIGHT)
        k = nyu_intrinsics(*csize)
        return CameraSetup(csize, k, csize, k.copy())
    if kind == "s3dis":
        csize = size or S3DIS_SIZE
        f = csize[0] / 2 / np.tan(S3DIS_FOV / 2)
        k = np.array([[f, 0.0, (csize[0] - 1) / 2], [0.0, f, (csize[1] - 1) / 2], [0.0, 0.0, 1.0]])
        return CameraSetup(csize, k, csize, k.copy())
    raise ValueError(f"unknown dataset kind {kind!r}; choose one of {KINDS}")


@dataclass
class SyntheticScene:
    """One procedural room seen along one camera walk, in one style."""

    name: str
    layout: RoomLayout
    style: Style
    poses: np.ndarray  # (frames, 4, 4) camera-to-world, OpenCV axes

    def mesh(self, vertex_spacing: float = 0.04) -> MeshRecord:
        return build_mesh(self.layout, self.style, vertex_spacing)[0]

    def render_frame(self, i: int, camera: CameraSetup) -> tuple[FrameRecord, np.ndarray]:
        """Frame i (colour, NYU40 labels, z-depth at the depth camera) and its (H, W) instance map."""
        pose = self.poses[i]
        view = render_view(self.layout, self.style, pose, camera.color_K, *camera.color_size)
        same = camera.depth_size == camera.color_size and np.allclose(camera.depth_K, camera.color_K)
        depth = view.depth if same else render_depth(self.layout, pose, camera.depth_K, *camera.depth_size)
        frame = FrameRecord(frame_id=i, image=view.rgb, intrinsics=camera.color_K.copy(), pose=pose.copy(),
                            depth=depth, depth_intrinsics=camera.depth_K.copy(), labels=view.labels,
                            name=f"{self.name} frame {i}")
        return frame, view.instances

    def frames(self, camera: CameraSetup) -> Iterator[FrameRecord]:
        for i in range(len(self.poses)):
            yield self.render_frame(i, camera)[0]


def scene_room_type(seed: int, index: int, room_types: Sequence[str] = ROOM_TYPES) -> str:
    """Room types cycle (from a seed-dependent start), so even a two-scene world has varied classes."""
    offset = int(np.random.default_rng([seed, 7919]).integers(len(room_types)))
    return room_types[(index + offset) % len(room_types)]


def make_scene(seed: int, index: int, *, frames: int, style: str | Style = "a", room_type: str | None = None,
               name: str | None = None) -> SyntheticScene:
    """Scene `index` of the world `seed`; geometry and poses do not depend on `style`."""
    room_type = room_type or scene_room_type(seed, index)
    layout = generate_room(np.random.default_rng([seed, index, 0]), room_type)
    poses = camera_trajectory(layout, frames, np.random.default_rng([seed, index, 1]))
    st = style if isinstance(style, Style) else get_style(style)
    return SyntheticScene(name=name or f"scene{index:04d}_00", layout=layout, style=st, poses=poses)


@dataclass
class WorldSummary:
    """What `generate_world` wrote."""

    kind: str
    root: Path
    scenes: list[str]
    frames: int
    vertices: int
    pixel_histogram: dict[int, int] = field(default_factory=dict)  # NYU40 id -> pixels over all frames
    splits: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        from cache_schema.labels import NYU40_NAMES

        total = max(1, sum(self.pixel_histogram.values()))
        top = sorted(self.pixel_histogram.items(), key=lambda kv: -kv[1])[:8]
        classes = ", ".join(f"{NYU40_NAMES[k]} {100 * v / total:.0f}%" for k, v in top)
        split = "; ".join(f"{k}: {len(v)}" for k, v in self.splits.items())
        return (f"{self.kind}: {len(self.scenes)} scenes, {self.frames} frames, {self.vertices} mesh vertices "
                f"in {self.seconds:.1f}s -> {self.root}\n  splits: {split or '-'}\n  classes (pixels): {classes}")


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'WxH' -> (W, H)."""
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like 640x480, got {text!r}") from None
    if w < 8 or h < 8:
        raise ValueError(f"size must be at least 8x8, got {text!r}")
    return w, h


def _split(names: list[str], val_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    n_val = 0 if len(names) < 2 else max(1, round(val_fraction * len(names)))
    return names[: len(names) - n_val], names[len(names) - n_val:]


def generate_world(kind: str, out: str | Path, *, scenes: int, frames: int, seed: int,
                   size: tuple[int, int] | None = None, style: str = "a", layouts: Sequence[str] = ("sens",),
                   vertex_spacing: float = 0.04, progress: bool = True, processes: int = 1) -> WorldSummary:
    """Generate `scenes` rooms with `frames` frames each and write them in the `kind` dataset's format at `out`.

    `processes` > 1 (ScanNet only) builds and writes rooms in that many worker processes. Every room depends on
    (seed, index, style) alone and has its own files, so the world is byte-identical to a one-process run."""
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of {KINDS}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if processes > 1 and kind != "scannet":
        raise ValueError(f"processes > 1 is written for scannet only ({kind} writes shared files room after room)")
    if scenes < 1 or frames < 0:
        raise ValueError(f"need at least one scene and no negative frame count, got scenes={scenes} frames={frames}")
    if frames == 0 and kind != "scannet":
        raise ValueError("frames=0 (3D-only scans, extra rooms for a teacher) is written for scannet only")
    st = get_style(style)
    camera = camera_setup(kind, size)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = WorldSummary(kind=kind, root=root, scenes=[], frames=0, vertices=0)
    bar = tqdm(total=scenes * max(frames, 1), desc=f"synth {kind}", unit="frame" if frames else "scene",
               disable=not progress, leave=False)
    try:
        writer = {"scannet": _write_scannet, "s3dis": _write_s3dis, "nyu": _write_nyu}[kind]
        extra = {"processes": processes} if kind == "scannet" else {}
        writer(root, summary, bar, scenes=scenes, frames=frames, seed=seed, style=st, camera=camera,
               layouts=tuple(layouts), vertex_spacing=vertex_spacing, **extra)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _count(summary: WorldSummary, labels: np.ndarray) -> None:
    ids, counts = np.unique(labels, return_counts=True)
    for i, c in zip(ids.tolist(), counts.tolist(), strict=True):
        summary.pixel_histogram[i] = summary.pixel_histogram.get(i, 0) + c


def _render_all(scene: SyntheticScene, camera: CameraSetup, summary: WorldSummary,
                bar: tqdm | None) -> tuple[list[FrameRecord], list[np.ndarray]]:
    frames, instances = [], []
    for i in range(len(scene.poses)):
        fr, inst = scene.render_frame(i, camera)
        frames.append(fr)
        instances.append(inst)
        _count(summary, fr.labels)
        if bar is not None:
            bar.update(1)
    summary.frames += len(frames)
    return frames, instances


@dataclass
class _ScanNetRoom:
    """What writing one ScanNet room reports back (from a worker process, so plain data)."""

    name: str
    vertices: int
    frames: int
    histogram: dict[int, int]


def _write_scannet_room(root: Path, index: int, *, frames: int, seed: int, style: Style, camera: CameraSetup,
                        layouts: tuple[str, ...], vertex_spacing: float, table_rows: list) -> _ScanNetRoom:
    from ..formats import scannet

    scene = make_scene(seed, index, frames=max(frames, 1), style=style)
    mesh = scene.mesh(vertex_spacing)
    part = WorldSummary(kind="scannet", root=root, scenes=[], frames=0, vertices=0)
    recs = _render_all(scene, camera, part, None)[0] if frames else []
    scannet.write_scannet_scan(root, scene.name, mesh, recs, table_rows=table_rows, layouts=layouts if frames else ())
    return _ScanNetRoom(scene.name, len(mesh.vertices), part.frames, part.pixel_histogram)


def _write_scannet(root: Path, summary: WorldSummary, bar: tqdm, *, scenes: int, frames: int, seed: int,
                   style: Style, camera: CameraSetup, layouts: tuple[str, ...], vertex_spacing: float,
                   processes: int = 1) -> None:
    from ..formats import scannet
    from ..formats.scannet_labels import LABEL_TABLE_NAME

    rows = scannet.synthetic_label_table()
    scannet.write_label_table(root / LABEL_TABLE_NAME, rows)
    room = partial(_write_scannet_room, root, frames=frames, seed=seed, style=style, camera=camera, layouts=layouts,
                   vertex_spacing=vertex_spacing, table_rows=rows)
    if processes > 1:
        import multiprocessing as mp

        # spawn: the workers import numpy and this package only, whatever the caller has loaded (torch, threads)
        pool = mp.get_context("spawn").Pool(min(processes, scenes))
        rooms: Iterator[_ScanNetRoom] = pool.imap(room, range(scenes))  # in index order
    else:
        pool, rooms = None, map(room, range(scenes))
    try:
        for r in rooms:
            summary.scenes.append(r.name)
            summary.vertices += r.vertices
            summary.frames += r.frames
            for k, v in r.histogram.items():
                summary.pixel_histogram[k] = summary.pixel_histogram.get(k, 0) + v
            bar.update(max(r.frames, 1))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    # a 3D-only world is a repository of training scans for a teacher: every scene is a training scene
    train, val = _split(summary.scenes) if frames else (summary.scenes, [])
    (root / "scannetv2_train.txt").write_text("".join(f"{n}\n" for n in train))
    (root / "scannetv2_val.txt").write_text("".join(f"{n}\n" for n in val))
    summary.splits = {"train": train, "val": val}


def s3dis_scene_names(seed: int, scenes: int) -> list[tuple[int, str, str]]:
    """(index, area 1..6, room) of each scene: areas round-robin, rooms named <S3DIS room type>_<k>."""
    seen: dict[tuple[int, str], int] = {}
    out = []
    for index in range(scenes):
        area = index % 6 + 1
        rtype = scene_room_type(seed, index, tuple(S3DIS_ROOMS))
        k = seen[(area, rtype)] = seen.get((area, rtype), 0) + 1
        out.append((area, rtype, f"{S3DIS_ROOMS[rtype]}_{k}"))
    return out


def _write_s3dis(root: Path, summary: WorldSummary, bar: tqdm, *, scenes: int, frames: int, seed: int,
                 style: Style, camera: CameraSetup, layouts: tuple[str, ...], vertex_spacing: float) -> None:
    from ..formats import s3dis

    for index, (area, rtype, room) in enumerate(s3dis_scene_names(seed, scenes)):
        scene = make_scene(seed, index, frames=frames, style=style, room_type=rtype, name=f"Area_{area}/{room}")
        mesh = scene.mesh(vertex_spacing)
        # S3DIS rooms are sampled point clouds: the mesh vertices are such a sample.
        s3dis.write_s3dis_room(root, f"Area_{area}", room, mesh.vertices, mesh.colors,
                               nyu40_to_s3dis13(mesh.labels, unlabelled=12), mesh.instances)
        recs, inst = _render_all(scene, camera, summary, bar)
        for fr in recs:
            fr.labels = nyu40_to_s3dis13(fr.labels)
        # Area 5's images live in area_5a (area_5b would need the pose fix; our rooms never need it).
        image_area = "area_5a" if area == 5 else f"area_{area}"
        s3dis.write_2d3ds_frames(root, image_area, room, recs, instances_of_frames=inst)
        summary.scenes.append(scene.name)
        summary.vertices += len(mesh.vertices)
    summary.splits = {f"Area_{a}": [s for s in summary.scenes if s.startswith(f"Area_{a}/")] for a in range(1, 7)
                      if any(s.startswith(f"Area_{a}/") for s in summary.scenes)}


def _write_nyu(root: Path, summary: WorldSummary, bar: tqdm, *, scenes: int, frames: int, seed: int,
               style: Style, camera: CameraSetup, layouts: tuple[str, ...], vertex_spacing: float) -> None:
    from ..formats import nyu

    records: list[FrameRecord] = []
    scene_of: list[int] = []
    for index in range(scenes):
        scene = make_scene(seed, index, frames=frames, style=style)
        recs, _ = _render_all(scene, camera, summary, bar)
        records += recs
        scene_of += [index] * len(recs)
        summary.scenes.append(scene.name)
    # Split by scene (no room in both train and test), as NYU's official split separates scenes.
    if scenes >= 2:
        train_scenes, _ = _split(list(range(scenes)))
        train_idx = [i for i, s in enumerate(scene_of) if s in set(train_scenes)]
    else:
        train_idx = list(range(len(records) - max(1, round(0.2 * len(records))) if len(records) > 1 else 1))
    test_idx = [i for i in range(len(records)) if i not in set(train_idx)]
    nyu.write_nyu(root, records, train_idx=train_idx, test_idx=test_idx)
    summary.splits = {"train": [str(i) for i in train_idx], "test": [str(i) for i in test_idx]}
