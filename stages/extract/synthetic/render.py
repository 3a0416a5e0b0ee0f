"""An analytic ray caster with a z-buffer: depth, labels and shaded colour of a room from a posed camera.

Camera rays go through pixel centres at integer pixel coordinates (the OpenCV convention), with camera-space
direction ((u - cx) / fx, (v - cy) / fy, 1): the ray parameter of a hit is then its z-depth. The room shell is
hit by every ray; each box/cylinder is tested only against the pixels inside its projected bounding
rectangle (the "chunk" it can cover), and the nearest hit wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .primitives import (
    box_normals,
    cylinder_normals,
    ray_box,
    ray_cylinder,
    ray_shell,
    shell_normals,
)
from .rooms import RoomLayout
from .style import Style, appearance

_NEAR = 0.02  # metres: corners closer than this to the camera plane disable the screen-space culling

# Hit kinds
SHELL, BOX, CYLINDER = 0, 1, 2


@dataclass
class Hits:
    """Nearest hits of a set of rays."""

    t: np.ndarray  # (...,) ray parameter (z-depth for camera rays)
    kind: np.ndarray  # (...,) int8 SHELL | BOX | CYLINDER
    index: np.ndarray  # (...,) int32 primitive index within its kind (shell: face 0..5)
    face: np.ndarray  # (...,) int8 face code within the primitive


@dataclass
class RenderedView:
    """What one camera sees: z-depth (metres), NYU40 labels, instance ids and (optionally) colour."""

    depth: np.ndarray  # (H, W) float32
    labels: np.ndarray  # (H, W) uint8
    instances: np.ndarray  # (H, W) int32
    rgb: np.ndarray | None  # (H, W, 3) uint8


def _screen_rect(corners: np.ndarray, pose: np.ndarray, K: np.ndarray, width: int,
                 height: int) -> tuple[int, int, int, int] | None:
    """Pixel rectangle (v0, v1, u0, u1) that can contain the projection of a convex set with these corners."""
    cam = (corners - pose[:3, 3]) @ pose[:3, :3]
    z = cam[:, 2]
    if z.max() < _NEAR:
        return None  # entirely behind the camera
    if z.min() < _NEAR:
        return 0, height, 0, width
    u = K[0, 0] * cam[:, 0] / z + K[0, 2]
    v = K[1, 1] * cam[:, 1] / z + K[1, 2]
    u0, u1 = max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 2, width)
    v0, v1 = max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 2, height)
    if u0 >= u1 or v0 >= v1:
        return None
    return v0, v1, u0, u1


def camera_rays(pose: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """World-space ray directions (H, W, 3) through pixel centres, scaled so their camera z is 1."""
    u = (np.arange(width) - K[0, 2]) / K[0, 0]
    v = (np.arange(height) - K[1, 2]) / K[1, 1]
    d = np.empty((height, width, 3))
    d[..., 0] = u[None, :]
    d[..., 1] = v[:, None]
    d[..., 2] = 1.0
    return d @ pose[:3, :3].T


def _update(hits: Hits, region: tuple, t: np.ndarray, face: np.ndarray, kind: int, index: int) -> None:
    closer = t < hits.t[region]
    if not closer.any():
        return
    hits.t[region] = np.where(closer, t, hits.t[region])
    hits.face[region] = np.where(closer, face, hits.face[region])
    hits.kind[region] = np.where(closer, np.int8(kind), hits.kind[region])
    hits.index[region] = np.where(closer, np.int32(index), hits.index[region])


def cast_camera(layout: RoomLayout, pose: np.ndarray, K: np.ndarray, width: int, height: int) -> tuple[Hits,
                                                                                                      np.ndarray]:
    """Nearest hits of every pixel's ray; returns them and the ray directions."""
    origin = pose[:3, 3]
    dirs = camera_rays(pose, K, width, height)
    t, face = ray_shell(origin, dirs, layout.size)
    hits = Hits(t=t, kind=np.zeros(t.shape, np.int8), index=face.astype(np.int32), face=face)
    boxes, cyls = layout.boxes, layout.cylinders
    for i in range(len(boxes)):
        rect = _screen_rect(boxes.corners(i), pose, K, width, height)
        if rect is None:
            continue
        region = (slice(rect[0], rect[1]), slice(rect[2], rect[3]))
        tb, fb = ray_box(origin, dirs[region], boxes.center[i], boxes.half[i], boxes.yaw[i])
        _update(hits, region, tb, fb, BOX, i)
    for i in range(len(cyls)):
        rect = _screen_rect(cyls.corners(i), pose, K, width, height)
        if rect is None:
            continue
        region = (slice(rect[0], rect[1]), slice(rect[2], rect[3]))
        tc, fc = ray_cylinder(origin, dirs[region], cyls.base[i], cyls.radius[i], cyls.height[i])
        _update(hits, region, tc, fc, CYLINDER, i)
    return hits, dirs


def cast_rays(layout: RoomLayout, origins: np.ndarray, dirs: np.ndarray) -> Hits:
    """Nearest hits of arbitrary rays (N, 3) starting inside the room (no culling; for tests and probes)."""
    t, face = ray_shell(origins, dirs, layout.size)
    hits = Hits(t=t, kind=np.zeros(t.shape, np.int8), index=face.astype(np.int32), face=face)
    every = (slice(None),)
    for i in range(len(layout.boxes)):
        b = layout.boxes
        tb, fb = ray_box(origins, dirs, b.center[i], b.half[i], b.yaw[i])
        _update(hits, every, tb, fb, BOX, i)
    for i in range(len(layout.cylinders)):
        c = layout.cylinders
        tc, fc = ray_cylinder(origins, dirs, c.base[i], c.radius[i], c.height[i])
        _update(hits, every, tc, fc, CYLINDER, i)
    return hits


def hit_surfaces(layout: RoomLayout, hits: Hits) -> np.ndarray:
    """Surface index (into layout.surfaces) of each hit."""
    surf = layout.shell_surface[np.clip(hits.index, 0, 5)]
    if len(layout.boxes):
        surf = np.where(hits.kind == BOX, layout.boxes.surface[np.clip(hits.index, 0, len(layout.boxes) - 1)], surf)
    if len(layout.cylinders):
        surf = np.where(hits.kind == CYLINDER,
                        layout.cylinders.surface[np.clip(hits.index, 0, len(layout.cylinders) - 1)], surf)
    return surf


def hit_normals(layout: RoomLayout, hits: Hits, points: np.ndarray) -> np.ndarray:
    """World normals (N, 3) of flat hit arrays, facing the side the rays came from."""
    normals = shell_normals(hits.face)
    box = hits.kind == BOX
    if box.any():
        normals[box] = box_normals(hits.face[box], layout.boxes.yaw[hits.index[box]])
    cyl = hits.kind == CYLINDER
    if cyl.any():
        normals[cyl] = cylinder_normals(hits.face[cyl], points[cyl], layout.cylinders.base[hits.index[cyl]])
    return normals


def render_depth(layout: RoomLayout, pose: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """z-depth image (H, W) float32 in metres."""
    hits, _ = cast_camera(layout, pose, K, width, height)
    return hits.t.astype(np.float32)


def render_view(layout: RoomLayout, style: Style, pose: np.ndarray, K: np.ndarray, width: int, height: int,
                shade: bool = True) -> RenderedView:
    """Depth, labels, instances and (if `shade`) Lambertian-shaded colour from one camera."""
    hits, dirs = cast_camera(layout, pose, K, width, height)
    surf = hit_surfaces(layout, hits)
    labels = layout.surfaces.label[surf]
    instances = layout.surfaces.instance[surf]
    rgb = None
    if shade:
        flat = Hits(t=hits.t.ravel(), kind=hits.kind.ravel(), index=hits.index.ravel(), face=hits.face.ravel())
        points = pose[:3, 3] + flat.t[:, None] * dirs.reshape(-1, 3)
        normals = hit_normals(layout, flat, points)
        s = surf.ravel()
        rgb = appearance(style, points, normals, layout.surfaces.material[s], layout.surfaces.tone[s],
                         layout.lights).reshape(height, width, 3)
    return RenderedView(depth=hits.t.astype(np.float32), labels=labels, instances=instances, rgb=rgb)
