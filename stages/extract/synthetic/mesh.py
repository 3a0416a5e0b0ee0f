"""The room as a labelled triangle mesh: primitive surfaces tessellated at a chosen vertex spacing.

Vertices lie exactly on the primitives' surfaces, so the renderer's depth at a visible vertex equals the
vertex's camera z; vertex colours come from the same appearance function as rendered pixels.
"""

from __future__ import annotations

import numpy as np

from ..formats.records import MeshRecord
from .primitives import yaw_matrix
from .rooms import RoomLayout
from .style import Style, appearance


def _grid_faces(nu: int, nv: int, offset: int, flip: bool) -> np.ndarray:
    """Two triangles per cell of an nu x nv vertex grid laid out row-major (u slow)."""
    i, j = np.meshgrid(np.arange(nu - 1), np.arange(nv - 1), indexing="ij")
    a = (i * nv + j).ravel() + offset
    b, c, d = a + nv, a + 1, a + nv + 1
    tri = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])
    return tri[:, ::-1] if flip else tri


class _Accumulator:
    def __init__(self) -> None:
        self.points: list[np.ndarray] = []
        self.normals: list[np.ndarray] = []
        self.surface: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.count = 0

    def add(self, pts: np.ndarray, normals: np.ndarray, faces: np.ndarray, surface: int) -> None:
        """Add vertices; fix the triangles' winding so they face along the given normals."""
        if len(faces):
            e1 = pts[faces[:, 1]] - pts[faces[:, 0]]
            e2 = pts[faces[:, 2]] - pts[faces[:, 0]]
            wrong = np.einsum("ij,ij->i", np.cross(e1, e2), normals[faces[:, 0]]) < 0
            faces = np.where(wrong[:, None], faces[:, ::-1], faces)
        self.points.append(pts)
        self.normals.append(normals)
        self.surface.append(np.full(len(pts), surface, dtype=np.int32))
        self.faces.append(faces + self.count)
        self.count += len(pts)

    def rect(self, origin: np.ndarray, eu: np.ndarray, ev: np.ndarray, normal: np.ndarray, surface: int,
             spacing: float) -> None:
        """A rectangle origin + a*eu + b*ev, a, b in [0, 1] (eu, ev carry the side lengths)."""
        nu = max(2, int(np.ceil(np.linalg.norm(eu) / spacing)) + 1)
        nv = max(2, int(np.ceil(np.linalg.norm(ev) / spacing)) + 1)
        a, b = np.meshgrid(np.linspace(0, 1, nu), np.linspace(0, 1, nv), indexing="ij")
        pts = origin + a.reshape(-1, 1) * eu + b.reshape(-1, 1) * ev
        self.add(pts, np.broadcast_to(normal, pts.shape).copy(), _grid_faces(nu, nv, 0, False), surface)


def _add_shell(acc: _Accumulator, layout: RoomLayout, spacing: float) -> None:
    lx, ly, h = layout.size
    o = np.zeros(3)
    X, Y, Z = np.array([lx, 0, 0.0]), np.array([0, ly, 0.0]), np.array([0, 0, h])
    s = layout.shell_surface
    acc.rect(o, X, Y, np.array([0, 0, 1.0]), int(s[4]), spacing)  # floor
    acc.rect(Z, X, Y, np.array([0, 0, -1.0]), int(s[5]), spacing)  # ceiling
    acc.rect(o, Y, Z, np.array([1.0, 0, 0]), int(s[0]), spacing)  # x = 0
    acc.rect(X, Y, Z, np.array([-1.0, 0, 0]), int(s[1]), spacing)  # x = Lx
    acc.rect(o, X, Z, np.array([0, 1.0, 0]), int(s[2]), spacing)  # y = 0
    acc.rect(Y, X, Z, np.array([0, -1.0, 0]), int(s[3]), spacing)  # y = Ly


def _add_boxes(acc: _Accumulator, layout: RoomLayout, spacing: float) -> None:
    b = layout.boxes
    for i in range(len(b)):
        rot = yaw_matrix(b.yaw[i])
        half = b.half[i]
        axes = rot * (2 * half)[None, :]  # columns: full-length edge vectors along local x, y, z
        corner = b.center[i] - axes.sum(axis=1) / 2
        for k in range(3):
            u, v = [m for m in range(3) if m != k]
            for side in (0, 1):
                if k == 2 and side == 0 and b.center[i, 2] - half[2] < 0.005:
                    continue  # a bottom resting on the floor can never be seen
                normal = rot[:, k] * (1.0 if side else -1.0)
                acc.rect(corner + side * axes[:, k], axes[:, u], axes[:, v], normal, int(b.surface[i]), spacing)


def _add_cylinders(acc: _Accumulator, layout: RoomLayout, spacing: float) -> None:
    c = layout.cylinders
    for i in range(len(c)):
        r, h, base = c.radius[i], c.height[i], c.base[i]
        n_theta = max(8, int(np.ceil(2 * np.pi * r / spacing)))
        theta = np.linspace(0, 2 * np.pi, n_theta, endpoint=False)
        ring = np.column_stack([np.cos(theta), np.sin(theta), np.zeros(n_theta)])
        nz = max(2, int(np.ceil(h / spacing)) + 1)
        z = np.linspace(0, h, nz)
        side = (base + r * ring[None, :, :] + z[:, None, None] * np.array([0, 0, 1.0])).reshape(-1, 3)
        # Close the seam: the grid's last column connects back to the first.
        idx = np.arange(nz * n_theta).reshape(nz, n_theta)
        a, b_, cc, d = idx[:-1, :], np.roll(idx[:-1, :], -1, 1), idx[1:, :], np.roll(idx[1:, :], -1, 1)
        faces = np.concatenate([np.stack([a, b_, d], -1).reshape(-1, 3), np.stack([a, d, cc], -1).reshape(-1, 3)])
        acc.add(side, np.tile(ring, (nz, 1)), faces, int(c.surface[i]))
        n_r = max(1, int(np.ceil(r / spacing)))
        for top in (False, True):
            if not top and base[2] < 0.005:
                continue
            radii = np.linspace(r / n_r, r, n_r)
            pts = np.concatenate([[[0.0, 0.0, 0.0]], (radii[:, None, None] * ring[None]).reshape(-1, 3)])
            pts = pts + base + np.array([0, 0, h if top else 0.0])
            fan = np.stack([np.zeros(n_theta, int), 1 + np.arange(n_theta), 1 + np.roll(np.arange(n_theta), -1)], 1)
            ring_idx = 1 + np.arange(n_r * n_theta).reshape(n_r, n_theta)
            a, b_ = ring_idx[:-1], np.roll(ring_idx[:-1], -1, 1)
            cc, d = ring_idx[1:], np.roll(ring_idx[1:], -1, 1)
            quads = np.concatenate([np.stack([a, b_, d], -1).reshape(-1, 3), np.stack([a, d, cc], -1).reshape(-1, 3)])
            normal = np.array([0, 0, 1.0 if top else -1.0])
            acc.add(pts, np.broadcast_to(normal, pts.shape).copy(), np.concatenate([fan, quads]), int(c.surface[i]))


def build_mesh(layout: RoomLayout, style: Style, spacing: float = 0.04) -> tuple[MeshRecord, np.ndarray]:
    """Tessellate the room; returns the mesh and the per-vertex outward normals (N, 3)."""
    if not 0.005 <= spacing <= 1.0:
        raise ValueError(f"vertex spacing must be within [0.005, 1.0] metres, got {spacing}")
    acc = _Accumulator()
    _add_shell(acc, layout, spacing)
    _add_boxes(acc, layout, spacing)
    _add_cylinders(acc, layout, spacing)
    pts = np.concatenate(acc.points)
    normals = np.concatenate(acc.normals)
    surf = np.concatenate(acc.surface)
    s = layout.surfaces
    colors = appearance(style, pts, normals, s.material[surf], s.tone[surf], layout.lights)
    mesh = MeshRecord(vertices=pts.astype(np.float32), colors=colors, faces=np.concatenate(acc.faces).astype(np.int32),
                      labels=s.label[surf].astype(np.uint8), instances=s.instance[surf].astype(np.int32))
    return mesh, normals
