"""Geometric primitives of the synthetic world and their vectorized ray intersections.

Three shapes cover an indoor room: the room shell (an axis-aligned box seen from inside: floor, ceiling,
walls), oriented boxes rotated about +Z (furniture parts, doors, windows, pictures) and vertical cylinders
(bowls, pedestals, round tables). Every intersection returns the ray parameter ``t`` (in units of the ray's
direction vector, so a camera ray with camera-z component 1 gives z-depth directly) and a small face code
from which the surface normal is recovered for the final hits only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_HIT = np.inf
_EPS_T = 1e-6  # ignore hits at/behind the ray origin


@dataclass
class Boxes:
    """Oriented boxes: yaw rotates the box's local frame about world +Z."""

    center: np.ndarray  # (P, 3) float64, metres
    half: np.ndarray  # (P, 3) float64 half extents along local x, y, z
    yaw: np.ndarray  # (P,) float64 radians
    surface: np.ndarray  # (P,) int32 index into Surfaces

    def __len__(self) -> int:
        return len(self.yaw)

    def corners(self, i: int) -> np.ndarray:
        """The 8 world-space corners of box i (for image-space culling)."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        local = signs * self.half[i]
        return local @ yaw_matrix(self.yaw[i]).T + self.center[i]


@dataclass
class Cylinders:
    """Vertical cylinders (axis along world +Z), closed by two caps."""

    base: np.ndarray  # (Q, 3) float64, centre of the bottom cap
    radius: np.ndarray  # (Q,) float64
    height: np.ndarray  # (Q,) float64
    surface: np.ndarray  # (Q,) int32 index into Surfaces

    def __len__(self) -> int:
        return len(self.radius)

    def corners(self, i: int) -> np.ndarray:
        r, h = self.radius[i], self.height[i]
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (0, 1)], dtype=np.float64)
        return signs * np.array([r, r, h]) + self.base[i]


def yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation about +Z taking local coordinates to world coordinates."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def ray_shell(origin: np.ndarray, dirs: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit of rays starting inside the room box [0, size]: the first wall/floor/ceiling they meet.

    Returns (t, face) with face = 2 * axis + (1 if the positive-side face else 0), i.e. 0: x=0 wall,
    1: x=Lx wall, 2: y=0 wall, 3: y=Ly wall, 4: floor, 5: ceiling.
    """
    origin = np.asarray(origin, dtype=np.float64)
    exits = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            d = dirs[..., k]
            # Positive direction leaves through the face at size[k], negative through the face at 0.
            t_k = np.where(d > 0, size[k] - origin[..., k], -origin[..., k]) / d
            exits.append(np.where(d == 0, np.inf, t_k))
    tx, ty, tz = exits
    t = np.minimum(np.minimum(tx, ty), tz)
    axis = np.where((tx <= ty) & (tx <= tz), 0, np.where(ty <= tz, 1, 2))
    positive = np.take_along_axis(dirs, axis[..., None], axis=-1)[..., 0] > 0
    return t, (2 * axis + positive).astype(np.int8)


def ray_box(origin: np.ndarray, dirs: np.ndarray, center: np.ndarray, half: np.ndarray,
            yaw: float) -> tuple[np.ndarray, np.ndarray]:
    """Slab test of rays against one oriented box; origin (3,) or (..., 3), dirs (..., 3).

    Returns (t, face): t = NO_HIT where missed; face = 2 * local axis + (1 if the +side face).
    Written per component (no small matmuls): this is the renderer's inner loop.
    """
    c, s = np.cos(yaw), np.sin(yaw)
    rel = np.asarray(origin, dtype=np.float64) - center
    # World -> local is the inverse yaw rotation.
    o = (rel[..., 0] * c + rel[..., 1] * s, -rel[..., 0] * s + rel[..., 1] * c, rel[..., 2])
    d = (dirs[..., 0] * c + dirs[..., 1] * s, -dirs[..., 0] * s + dirs[..., 1] * c, dirs[..., 2])
    t_min, t_max = [], []
    # Division by a zero direction component gives +-inf, which the slab logic handles (a NaN from a ray
    # starting exactly on a slab plane compares False: a miss).
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            inv = 1.0 / d[k]
            t1 = (-half[k] - o[k]) * inv
            t2 = (half[k] - o[k]) * inv
            t_min.append(np.minimum(t1, t2))
            t_max.append(np.maximum(t1, t2))
    t_near = np.maximum(np.maximum(t_min[0], t_min[1]), t_min[2])
    t_far = np.minimum(np.minimum(t_max[0], t_max[1]), t_max[2])
    with np.errstate(invalid="ignore"):
        hit = (t_near <= t_far) & (t_near > _EPS_T)
    t = np.where(hit, t_near, NO_HIT)
    axis = np.where((t_min[0] >= t_min[1]) & (t_min[0] >= t_min[2]), 0, np.where(t_min[1] >= t_min[2], 1, 2))
    # The entry face is on the side the ray comes from: opposite to the direction's sign along that axis.
    d_axis = np.where(axis == 0, d[0], np.where(axis == 1, d[1], d[2]))
    return t, (2 * axis + (d_axis < 0)).astype(np.int8)


def ray_cylinder(origin: np.ndarray, dirs: np.ndarray, base: np.ndarray, radius: float,
                 height: float) -> tuple[np.ndarray, np.ndarray]:
    """Rays against one closed vertical cylinder from outside. face: 0 side, 1 bottom cap, 2 top cap."""
    o = np.broadcast_to(origin - base, dirs.shape)
    ox, oy, oz = o[..., 0], o[..., 1], o[..., 2]
    dx, dy, dz = dirs[..., 0], dirs[..., 1], dirs[..., 2]
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - radius * radius
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / np.where(a > 1e-18, a, 1e-18)
    z_side = oz + t_side * dz
    side_ok = (disc >= 0) & (a > 1e-18) & (t_side > _EPS_T) & (z_side >= 0) & (z_side <= height)
    t = np.where(side_ok, t_side, NO_HIT)
    face = np.zeros(t.shape, dtype=np.int8)
    dz_safe = np.where(np.abs(dz) < 1e-12, 1e-12, dz)
    for code, zc in ((1, 0.0), (2, height)):
        tc = (zc - oz) / dz_safe
        xc, yc = ox + tc * dx, oy + tc * dy
        ok = (tc > _EPS_T) & (xc * xc + yc * yc <= radius * radius) & (tc < t)
        t = np.where(ok, tc, t)
        face = np.where(ok, np.int8(code), face)
    return t, face


def box_normals(face: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """World normals of box faces given face codes and per-hit box yaw."""
    axis = face // 2
    sign = np.where(face % 2 == 1, 1.0, -1.0)
    local = np.zeros(face.shape + (3,))
    np.put_along_axis(local, axis[..., None].astype(np.int64), sign[..., None], axis=-1)
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([c * local[..., 0] - s * local[..., 1], s * local[..., 0] + c * local[..., 1], local[..., 2]],
                    axis=-1)


def shell_normals(face: np.ndarray) -> np.ndarray:
    """Inward normals of the room shell's faces (the side a camera inside sees)."""
    axis = face // 2
    sign = np.where(face % 2 == 1, -1.0, 1.0)
    n = np.zeros(face.shape + (3,))
    np.put_along_axis(n, axis[..., None].astype(np.int64), sign[..., None], axis=-1)
    return n


def cylinder_normals(face: np.ndarray, points: np.ndarray, base: np.ndarray) -> np.ndarray:
    """World normals of cylinder hits: radial on the side, -Z / +Z on the caps."""
    radial = points - base
    radial[..., 2] = 0.0
    norm = np.linalg.norm(radial, axis=-1, keepdims=True)
    radial = radial / np.maximum(norm, 1e-12)
    cap = np.zeros_like(radial)
    cap[..., 2] = np.where(face == 2, 1.0, -1.0)
    return np.where((face == 0)[..., None], radial, cap)
