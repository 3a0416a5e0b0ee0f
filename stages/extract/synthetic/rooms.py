"""Procedural room layouts: a rectangular room shell, wall items and furniture built from primitives.

All sizes are metres, world +Z up, the room spans [0, Lx] x [0, Ly] x [0, H]. Labels are NYU40 ids. Every
object (each wall, the floor and the ceiling included) gets its own instance id. An object is built in its own
frame (origin at the centre of its footprint on the floor, local +y facing into the room, i.e. away from the
wall it stands against) and placed with a yaw; placement is checked on a 5 cm floor grid so objects never
overlap and door swings stay clear.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .primitives import Boxes, Cylinders, yaw_matrix
from .style import MATERIAL_INDEX

# NYU40 ids used by the world.
WALL, FLOOR, CABINET, BED, CHAIR, SOFA, TABLE, DOOR, WINDOW, BOOKSHELF = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
PICTURE, COUNTER, DESK, CURTAIN, CEILING, BOOKS, REFRIGERATOR = 11, 12, 14, 16, 22, 23, 24
WHITEBOARD, SHOWER_CURTAIN, TOILET, SINK, BATHTUB, OTHERFURNITURE = 30, 28, 33, 34, 36, 39

ROOM_TYPES: tuple[str, ...] = ("bedroom", "living", "office", "kitchen", "bathroom")

GRID_CELL = 0.05
_WALL_GAP = 0.04  # furniture stands this far from the wall (wall items protrude at most this much)


@dataclass
class Surfaces:
    """Per-surface semantics and appearance parameters; primitives point into these rows."""

    label: np.ndarray  # (S,) uint8 NYU40
    instance: np.ndarray  # (S,) int32
    material: np.ndarray  # (S,) int16 index into style.MATERIALS
    tone: np.ndarray  # (S,) float64 in [0, 1): palette entry + jitter, fixed per object and material


@dataclass
class RoomLayout:
    """One procedural room: everything the renderer, the mesh builder and the camera path need."""

    room_type: str
    size: np.ndarray  # (3,) Lx, Ly, H
    boxes: Boxes
    cylinders: Cylinders
    surfaces: Surfaces
    shell_surface: np.ndarray  # (6,) surface of faces x=0, x=Lx, y=0, y=Ly, floor, ceiling
    lights: np.ndarray  # (L, 3) point-light positions
    occupancy: np.ndarray  # (Gx, Gy) bool, floor cells under furniture (camera keeps away)
    instance_labels: dict[int, int] = field(default_factory=dict)  # instance id -> NYU40 id

    @property
    def primitive_count(self) -> int:
        return len(self.boxes) + len(self.cylinders)


# ---------------------------------------------------------------------------------------------- furniture kits
# A part: ("box", material, centre(3), half(3)) or ("cyl", material, base(3), radius, height), in object frame.
Part = tuple


@dataclass
class Kit:
    label: int
    width: float  # footprint along local x
    depth: float  # footprint along local y
    parts: list[Part]
    height: float = 0.0


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _box(material: str, cx: float, cy: float, z0: float, hx: float, hy: float, z1: float) -> Part:
    """A box from its x/y centre, half x/y extents and z range."""
    return ("box", material, (cx, cy, (z0 + z1) / 2), (hx, hy, (z1 - z0) / 2))


def _legs(material: str, w: float, d: float, h: float, inset: float, thick: float) -> list[Part]:
    return [_box(material, sx * (w / 2 - inset), sy * (d / 2 - inset), 0.0, thick, thick, h)
            for sx in (-1, 1) for sy in (-1, 1)]


def kit_bed(rng: np.random.Generator) -> Kit:
    w, d, hb, hh = _u(rng, 0.95, 1.8), _u(rng, 1.95, 2.1), _u(rng, 0.3, 0.4), _u(rng, 0.9, 1.2)
    parts = [_box("wood", 0, 0, 0, w / 2, d / 2, hb),
             _box("fabric", 0, 0.04, hb, w / 2 - 0.03, d / 2 - 0.08, hb + 0.2),
             _box("wood", 0, -d / 2 + 0.03, 0, w / 2, 0.03, hh)]
    return Kit(BED, w, d, parts, hh)


def kit_chair(rng: np.random.Generator) -> Kit:
    s, h, bh = _u(rng, 0.42, 0.5), _u(rng, 0.43, 0.48), _u(rng, 0.35, 0.5)
    seat = "fabric" if rng.random() < 0.5 else "wood"
    legs = "metal" if rng.random() < 0.5 else "wood"
    parts = _legs(legs, s, s, h, 0.03, 0.015)
    parts += [_box(seat, 0, 0, h, s / 2, s / 2, h + 0.05),
              _box(seat, 0, -s / 2 + 0.025, h + 0.05, s / 2, 0.025, h + 0.05 + bh)]
    return Kit(CHAIR, s, s, parts, h + 0.05 + bh)


def kit_sofa(rng: np.random.Generator) -> Kit:
    w, d, hs, hb = _u(rng, 1.5, 2.2), _u(rng, 0.8, 0.95), _u(rng, 0.4, 0.45), _u(rng, 0.8, 0.9)
    parts = [_box("fabric", 0, 0.05, 0, w / 2, d / 2 - 0.05, hs),
             _box("fabric", 0, -d / 2 + 0.1, 0, w / 2, 0.1, hb),
             _box("fabric", -w / 2 + 0.08, 0.05, 0, 0.08, d / 2 - 0.05, hs + 0.18),
             _box("fabric", w / 2 - 0.08, 0.05, 0, 0.08, d / 2 - 0.05, hs + 0.18)]
    return Kit(SOFA, w, d, parts, hb)


def kit_table(rng: np.random.Generator, coffee: bool = False) -> Kit:
    if coffee:
        w, d, h = _u(rng, 0.9, 1.2), _u(rng, 0.5, 0.6), _u(rng, 0.4, 0.45)
    else:
        w, d, h = _u(rng, 1.0, 1.8), _u(rng, 0.7, 1.0), _u(rng, 0.72, 0.78)
    if not coffee and rng.random() < 0.3:  # a round pedestal table
        r = min(w, d) / 2 + 0.05
        parts = [("cyl", "wood", (0.0, 0.0, h - 0.04), r, 0.04),
                 ("cyl", "metal", (0.0, 0.0, 0.0), 0.05, h - 0.04),
                 ("cyl", "metal", (0.0, 0.0, 0.0), 0.25, 0.03)]
        return Kit(TABLE, 2 * r, 2 * r, parts, h)
    legs = "metal" if rng.random() < 0.4 else "wood"
    parts = [_box("wood", 0, 0, h - 0.04, w / 2, d / 2, h)] + _legs(legs, w, d, h - 0.04, 0.06, 0.025)
    return Kit(TABLE, w, d, parts, h)


def kit_desk(rng: np.random.Generator) -> Kit:
    w, d, h = _u(rng, 1.1, 1.6), _u(rng, 0.6, 0.75), _u(rng, 0.72, 0.76)
    dw = _u(rng, 0.35, 0.45)  # the drawer block
    parts = [_box("wood", 0, 0, h - 0.03, w / 2, d / 2, h),
             _box("wood", -w / 2 + 0.02, 0, 0, 0.02, d / 2 - 0.02, h - 0.03),
             _box("wood", w / 2 - dw / 2, 0, 0, dw / 2, d / 2 - 0.02, h - 0.03)]
    for k in range(3):  # drawer handles
        z = (h - 0.03) * (k + 0.5) / 3
        parts.append(_box("metal", w / 2 - dw / 2, d / 2 - 0.01, z - 0.01, 0.06, 0.015, z + 0.01))
    return Kit(DESK, w, d, parts, h)


def kit_counter(rng: np.random.Generator) -> Kit:
    w, d, h = _u(rng, 1.6, 3.0), _u(rng, 0.58, 0.65), _u(rng, 0.88, 0.92)
    parts = [_box("wood", 0, -0.03, 0, w / 2, d / 2 - 0.03, h - 0.04),
             _box("wood", 0, 0, h - 0.04, w / 2, d / 2, h)]
    return Kit(COUNTER, w, d, parts, h)


def kit_counter_sink(rng: np.random.Generator, counter: Kit) -> tuple[Kit, float]:
    """A basin standing on a counter; returns it and its x offset in the counter's frame."""
    h = counter.height
    x = _u(rng, -counter.width / 2 + 0.35, counter.width / 2 - 0.35)
    mat = "metal" if rng.random() < 0.5 else "ceramic"
    parts = [_box(mat, 0, 0, h - 0.01, 0.27, 0.21, h + 0.06), _box("metal", 0, -0.17, h + 0.06, 0.02, 0.02, h + 0.3)]
    return Kit(SINK, 0.54, 0.42, parts, h + 0.3), x


def kit_cabinet(rng: np.random.Generator, tall: bool | None = None) -> Kit:
    tall = bool(rng.random() < 0.4) if tall is None else tall
    w, d = _u(rng, 0.5, 1.2), _u(rng, 0.4, 0.6)
    h = _u(rng, 1.6, 2.1) if tall else _u(rng, 0.7, 0.95)
    parts = [_box("panel", 0, 0, 0, w / 2, d / 2, h)]
    ndoor = 2 if w > 0.8 else 1
    for k in range(ndoor):
        x = -w / 2 + w * (k + 0.5) / ndoor + (0.12 if k == 0 and ndoor == 2 else -0.12 if ndoor == 2 else 0.15)
        parts.append(_box("metal", x, d / 2 + 0.01, h * 0.55, 0.01, 0.01, h * 0.55 + 0.12))
    return Kit(CABINET, w, d, parts, h)


def kit_wall_cabinet(rng: np.random.Generator) -> Kit:
    w, d, z0 = _u(rng, 0.6, 1.4), _u(rng, 0.32, 0.38), _u(rng, 1.45, 1.6)
    parts = [_box("panel", 0, 0, z0, w / 2, d / 2, z0 + _u(rng, 0.6, 0.75)),
             _box("metal", 0, d / 2 + 0.01, z0 + 0.05, 0.06, 0.01, z0 + 0.07)]
    return Kit(CABINET, w, d, parts, z0 + 0.75)


def kit_bookshelf(rng: np.random.Generator) -> tuple[Kit, Kit]:
    """The shelf and the rows of books on it (books are NYU40 'books', not a ScanNet-20 class)."""
    w, d, h, t = _u(rng, 0.8, 1.2), _u(rng, 0.28, 0.38), _u(rng, 1.6, 2.2), 0.02
    parts = [_box("wood", -w / 2 + t / 2, 0, 0, t / 2, d / 2, h), _box("wood", w / 2 - t / 2, 0, 0, t / 2, d / 2, h),
             _box("wood", 0, -d / 2 + t / 2, 0, w / 2 - t, t / 2, h)]
    n = int(rng.integers(4, 6))
    books = []
    for k in range(n + 1):
        z = k * (h - t) / n
        parts.append(_box("wood", 0, t / 2, z, w / 2 - t, d / 2 - t / 2, z + t))
        if k < n and rng.random() < 0.8:
            bw = (w - 2 * t) * _u(rng, 0.4, 0.9)
            bx = _u(rng, -(w - 2 * t - bw) / 2, (w - 2 * t - bw) / 2)
            bh = min((h - t) / n - t - 0.02, _u(rng, 0.17, 0.26))
            books.append(_box("art", bx, 0.0, z + t, bw / 2, d / 2 - 0.06, z + t + bh))
    return Kit(BOOKSHELF, w, d, parts, h), Kit(BOOKS, w, d, books, h)


def kit_refrigerator(rng: np.random.Generator) -> Kit:
    w, d, h = _u(rng, 0.6, 0.9), _u(rng, 0.65, 0.75), _u(rng, 1.7, 1.9)
    parts = [_box("panel", 0, 0, 0, w / 2, d / 2, h),
             _box("metal", w / 2 - 0.08, d / 2 + 0.015, h * 0.45, 0.012, 0.015, h * 0.45 + 0.35)]
    return Kit(REFRIGERATOR, w, d, parts, h)


def kit_toilet(rng: np.random.Generator) -> Kit:
    d = 0.7
    parts = [_box("ceramic", 0, -d / 2 + 0.09, 0.4, 0.2, 0.09, _u(rng, 0.75, 0.8)),
             ("cyl", "ceramic", (0.0, -0.06, 0.0), _u(rng, 0.18, 0.21), 0.4)]
    return Kit(TOILET, 0.45, d, parts, 0.8)


def kit_sink(rng: np.random.Generator) -> Kit:
    d = 0.45
    z = _u(rng, 0.78, 0.86)
    parts = [_box("ceramic", 0, 0, z - 0.14, 0.28, d / 2, z),
             ("cyl", "ceramic", (0.0, -0.05, 0.0), 0.08, z - 0.14)]
    return Kit(SINK, 0.56, d, parts, z)


def kit_bathtub(rng: np.random.Generator) -> Kit:
    w, d, h, t = _u(rng, 1.5, 1.7), _u(rng, 0.7, 0.8), _u(rng, 0.5, 0.58), 0.08
    parts = [_box("ceramic", 0, 0, 0, w / 2, d / 2, 0.15),
             _box("ceramic", 0, -d / 2 + t / 2, 0.15, w / 2, t / 2, h),
             _box("ceramic", 0, d / 2 - t / 2, 0.15, w / 2, t / 2, h),
             _box("ceramic", -w / 2 + t / 2, 0, 0.15, t / 2, d / 2 - t, h),
             _box("ceramic", w / 2 - t / 2, 0, 0.15, t / 2, d / 2 - t, h)]
    return Kit(BATHTUB, w, d, parts, h)


def kit_otherfurniture(rng: np.random.Generator) -> Kit:
    if rng.random() < 0.25:  # a round side table
        r, h = _u(rng, 0.2, 0.3), _u(rng, 0.5, 0.65)
        parts = [("cyl", "wood", (0.0, 0.0, h - 0.03), r, 0.03), ("cyl", "metal", (0.0, 0.0, 0.0), 0.03, h - 0.03)]
        return Kit(OTHERFURNITURE, 2 * r, 2 * r, parts, h)
    w, d, h = _u(rng, 0.4, 1.0), _u(rng, 0.35, 0.5), _u(rng, 0.45, 1.1)
    mat = "panel" if rng.random() < 0.6 else "wood"
    parts = [_box(mat, 0, 0, 0, w / 2, d / 2, h), _box("metal", 0, d / 2 + 0.01, h - 0.12, 0.06, 0.01, h - 0.1)]
    return Kit(OTHERFURNITURE, w, d, parts, h)


# -------------------------------------------------------------------------------------------------- builder
class _RoomBuilder:
    """Accumulates primitives and surfaces while furniture is placed."""

    def __init__(self, size: np.ndarray, rng: np.random.Generator) -> None:
        self.size = size
        self.rng = rng
        self.gx = int(np.ceil(size[0] / GRID_CELL))
        self.gy = int(np.ceil(size[1] / GRID_CELL))
        self.occ = np.zeros((self.gx, self.gy), dtype=bool)  # furniture footprints
        self.reserved = np.zeros_like(self.occ)  # kept free for door swings and walkways
        self.tall = np.zeros_like(self.occ)  # under objects reaching above 1.4 m (wall cabinets avoid them)
        cx = (np.arange(self.gx) + 0.5) * GRID_CELL
        cy = (np.arange(self.gy) + 0.5) * GRID_CELL
        self.cell_xy = np.stack(np.meshgrid(cx, cy, indexing="ij"), axis=-1)
        self.boxes: list[tuple] = []
        self.cyls: list[tuple] = []
        self.surf: list[tuple[int, int, int, float]] = []
        self.instance_labels: dict[int, int] = {}
        self.wall_spans: dict[int, list[tuple[float, float, float, float]]] = {w: [] for w in range(4)}

    # -- walls: origin, tangent, inward normal, length, yaw of an object standing against it
    def wall_frame(self, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
        lx, ly = self.size[0], self.size[1]
        frames = {0: ((0, 0), (1, 0), (0, 1), lx, 0.0), 1: ((lx, 0), (0, 1), (-1, 0), ly, np.pi / 2),
                  2: ((lx, ly), (-1, 0), (0, -1), lx, np.pi), 3: ((0, ly), (0, -1), (1, 0), ly, -np.pi / 2)}
        o, t, n, length, yaw = frames[w]
        return np.array(o, float), np.array(t, float), np.array(n, float), float(length), float(yaw)

    def new_instance(self, label: int) -> int:
        inst = len(self.instance_labels) + 1
        self.instance_labels[inst] = label
        return inst

    def new_surface(self, label: int, instance: int, material: str, tone: float | None = None) -> int:
        tone = float(self.rng.random()) if tone is None else tone
        self.surf.append((label, instance, MATERIAL_INDEX[material], tone))
        return len(self.surf) - 1

    def footprint(self, pos: np.ndarray, yaw: float, w: float, d: float, margin: float) -> np.ndarray:
        rel = self.cell_xy - pos[:2]
        c, s = np.cos(yaw), np.sin(yaw)
        lx = rel[..., 0] * c + rel[..., 1] * s
        ly = -rel[..., 0] * s + rel[..., 1] * c
        return (np.abs(lx) <= w / 2 + margin) & (np.abs(ly) <= d / 2 + margin)

    def inside(self, pos: np.ndarray, yaw: float, w: float, d: float) -> bool:
        corners = np.array([[sx * w / 2, sy * d / 2] for sx in (-1, 1) for sy in (-1, 1)])
        world = corners @ yaw_matrix(yaw)[:2, :2].T + pos[:2]
        return bool(np.all(world >= -1e-6) and np.all(world <= self.size[:2] + 1e-6))

    def fits(self, pos: np.ndarray, yaw: float, kit: Kit, margin: float = 0.03, above: bool = False) -> bool:
        """Inside the room and clear of footprints; `above` (wall cabinets) only needs to clear tall objects."""
        if not self.inside(pos, yaw, kit.width, kit.depth):
            return False
        fp = self.footprint(pos, yaw, kit.width, kit.depth, margin)
        blocked = (self.tall | self.reserved) if above else (self.occ | self.reserved)
        return not np.any(fp & blocked)

    def add_kit(self, kit: Kit, pos: np.ndarray, yaw: float, occupy: bool = True,
                tones: dict[str, float] | None = None) -> int:
        """Instantiate a kit; parts of one material share a surface (one colour per object and material)."""
        inst = self.new_instance(kit.label)
        rot = yaw_matrix(yaw)
        surfaces: dict[str, int] = {}
        for part in kit.parts:
            mat = part[1]
            if mat not in surfaces:
                surfaces[mat] = self.new_surface(kit.label, inst, mat, (tones or {}).get(mat))
            if part[0] == "box":
                centre = rot @ np.asarray(part[2], float) + np.array([pos[0], pos[1], 0.0])
                self.boxes.append((centre, np.asarray(part[3], float), yaw, surfaces[mat]))
            else:
                base = rot @ np.asarray(part[2], float) + np.array([pos[0], pos[1], 0.0])
                self.cyls.append((base, float(part[3]), float(part[4]), surfaces[mat]))
        if occupy:
            fp = self.footprint(pos, yaw, kit.width, kit.depth, 0.0)
            self.occ |= fp
            if kit.height > 1.4:
                self.tall |= fp
        return inst

    def place_against_wall(self, kit: Kit, walls: tuple[int, ...] = (0, 1, 2, 3), tries: int = 40,
                           corner: bool = False, above: bool = False) -> tuple[np.ndarray, float, int, float] | None:
        for _ in range(tries):
            w = int(self.rng.choice(walls))
            o, t, n, length, yaw = self.wall_frame(w)
            if length < kit.width + 0.1:
                continue
            if corner:
                s = kit.width / 2 + 0.01 if self.rng.random() < 0.5 else length - kit.width / 2 - 0.01
            else:
                s = _u(self.rng, kit.width / 2 + 0.05, length - kit.width / 2 - 0.05)
            gap = 0.01 if corner else _WALL_GAP
            pos2 = o + s * t + (gap + kit.depth / 2) * n
            pos = np.array([pos2[0], pos2[1], 0.0])
            if self.fits(pos, yaw, kit, above=above):
                self.add_kit(kit, pos, yaw)
                return pos, yaw, w, s
        return None

    def place_free(self, kit: Kit, margin_wall: float = 0.7, tries: int = 40) -> tuple[np.ndarray, float] | None:
        for _ in range(tries):
            lo = margin_wall + max(kit.width, kit.depth) / 2
            if self.size[0] - lo <= lo or self.size[1] - lo <= lo:
                return None
            pos = np.array([_u(self.rng, lo, self.size[0] - lo), _u(self.rng, lo, self.size[1] - lo), 0.0])
            yaw = float(self.rng.choice([0.0, np.pi / 2]) + self.rng.normal(0, 0.12))
            if self.fits(pos, yaw, kit, margin=0.1):
                self.add_kit(kit, pos, yaw)
                return pos, yaw
        return None

    def place_chair_facing(self, target: np.ndarray, direction: float, distance: float) -> bool:
        """A chair at `distance` from target along `direction` (radians), facing the target."""
        kit = kit_chair(self.rng)
        pos = target + distance * np.array([np.cos(direction), np.sin(direction), 0.0])
        # The chair's front (+y) must point back along -direction: yaw such that R(yaw) @ (0,1) = -dir.
        yaw = direction + np.pi / 2 + float(self.rng.normal(0, 0.15))
        if self.fits(pos, yaw, kit, margin=0.02):
            self.add_kit(kit, pos, yaw)
            return True
        return False

    def place_wall_item(self, label: int, material: str, width: float, z0: float, z1: float, thick: float,
                        walls: tuple[int, ...] = (0, 1, 2, 3), tries: int = 30,
                        extra: list[tuple[str, float, float, float, float, float]] | None = None
                        ) -> tuple[int, float, int] | None:
        """A thin box flush with a wall (back face on the wall plane), not overlapping other wall items."""
        for _ in range(tries):
            w = int(self.rng.choice(walls))
            o, t, n, length, yaw = self.wall_frame(w)
            if length < width + 0.3:
                continue
            s = _u(self.rng, width / 2 + 0.15, length - width / 2 - 0.15)
            if any(s - width / 2 - 0.1 < b1 and a0 < s + width / 2 + 0.1 and z0 < zb and za < z1
                   for a0, b1, za, zb in self.wall_spans[w]):
                continue
            if label == DOOR:
                # Keep the door swing clear; it also must not open onto furniture already placed.
                swing = self.footprint(np.r_[o + s * t + 0.5 * n, 0.0], yaw, width + 0.2, 1.0, 0.0)
                if np.any(swing & self.occ):
                    continue
                self.reserved |= swing
            self.wall_spans[w].append((s - width / 2, s + width / 2, z0, z1))
            inst = self.new_instance(label)
            surf = self.new_surface(label, inst, material)
            centre2 = o + s * t + thick / 2 * n
            self.boxes.append((np.array([centre2[0], centre2[1], (z0 + z1) / 2]),
                               np.array([width / 2, thick / 2, (z1 - z0) / 2]), yaw, surf))
            for mat, ds, dz0, dz1, hw, ht in extra or []:  # handles etc. in the item's frame
                es = self.new_surface(label, inst, mat)
                c2 = o + (s + ds) * t + (thick + ht / 2) * n
                self.boxes.append((np.array([c2[0], c2[1], (dz0 + dz1) / 2]),
                                   np.array([hw, ht / 2, (dz1 - dz0) / 2]), yaw, es))
            return w, s, inst
        return None

    def build(self, room_type: str) -> RoomLayout:
        lx, ly, h = self.size
        area = lx * ly
        n_lights = 1 + int(area // 10)
        lights = np.column_stack([self.rng.uniform(0.25 * lx, 0.75 * lx, n_lights),
                                  self.rng.uniform(0.25 * ly, 0.75 * ly, n_lights), np.full(n_lights, h - 0.15)])
        boxes = Boxes(center=np.array([b[0] for b in self.boxes]).reshape(-1, 3),
                      half=np.array([b[1] for b in self.boxes]).reshape(-1, 3),
                      yaw=np.array([b[2] for b in self.boxes], dtype=np.float64),
                      surface=np.array([b[3] for b in self.boxes], dtype=np.int32))
        cyls = Cylinders(base=np.array([c[0] for c in self.cyls]).reshape(-1, 3),
                         radius=np.array([c[1] for c in self.cyls], dtype=np.float64),
                         height=np.array([c[2] for c in self.cyls], dtype=np.float64),
                         surface=np.array([c[3] for c in self.cyls], dtype=np.int32))
        surf = np.array(self.surf, dtype=np.float64).reshape(-1, 4)
        surfaces = Surfaces(label=surf[:, 0].astype(np.uint8), instance=surf[:, 1].astype(np.int32),
                            material=surf[:, 2].astype(np.int16), tone=surf[:, 3].copy())
        return RoomLayout(room_type=room_type, size=self.size.copy(), boxes=boxes, cylinders=cyls,
                          surfaces=surfaces, shell_surface=self.shell, lights=lights, occupancy=self.occ.copy(),
                          instance_labels=dict(self.instance_labels))

    def add_shell(self) -> None:
        paint = float(self.rng.random())  # one paint for all four walls
        walls = [self.new_surface(WALL, self.new_instance(WALL), "wall_paint", paint) for _ in range(4)]
        floor = self.new_surface(FLOOR, self.new_instance(FLOOR), "floor")
        ceiling = self.new_surface(CEILING, self.new_instance(CEILING), "ceiling")
        # Face order of primitives.ray_shell: x=0, x=Lx, y=0, y=Ly, floor, ceiling (= walls 3, 1, 0, 2).
        self.shell = np.array([walls[3], walls[1], walls[0], walls[2], floor, ceiling], dtype=np.int32)


# ------------------------------------------------------------------------------------------------ recipes
def _add_openings(b: _RoomBuilder, room_type: str) -> None:
    rng = b.rng
    h = b.size[2]
    for _ in range(1 if room_type == "bathroom" or rng.random() < 0.7 else 2):
        dw, dh = _u(rng, 0.8, 0.95), _u(rng, 2.0, 2.1)
        b.place_wall_item(DOOR, "panel", dw, 0.0, dh, 0.05, extra=[("metal", dw / 2 - 0.1, 1.0, 1.06, 0.07, 0.03)])
    n_windows = int(rng.integers(0, 2)) if room_type == "bathroom" else int(rng.integers(1, 3))
    for _ in range(n_windows):
        ww, z0 = _u(rng, 0.8, 1.6), _u(rng, 0.8, 1.0)
        z1 = min(h - 0.25, z0 + _u(rng, 1.0, 1.4))
        placed = b.place_wall_item(WINDOW, "glass", ww, z0, z1, 0.03)
        if placed is None or rng.random() > 0.7:
            continue
        w, s, _ = placed
        o, t, n, _, yaw = b.wall_frame(w)
        curtain_mat = "fabric" if rng.random() < 0.5 else "wall_paint"
        tone = float(rng.random())
        top = min(h - 0.05, z1 + 0.2)
        for side in (-1, 1):
            cw = _u(rng, 0.3, 0.5)
            kit = Kit(CURTAIN, cw, 0.04, [_box(curtain_mat, 0, 0, 0.02, cw / 2, 0.02, top)], top)
            pos2 = o + (s + side * (ww / 2 + cw / 2 - 0.05)) * t + 0.1 * n
            pos = np.array([pos2[0], pos2[1], 0.0])
            if b.fits(pos, yaw, kit, margin=0.0):
                b.add_kit(kit, pos, yaw, tones={curtain_mat: tone})


def _add_wall_decor(b: _RoomBuilder, room_type: str) -> None:
    rng = b.rng
    if room_type == "office" and rng.random() < 0.8:
        bw = _u(rng, 1.2, 2.0)
        b.place_wall_item(WHITEBOARD, "whiteboard", bw, 0.9, _u(rng, 1.9, 2.1), 0.02)
    for _ in range(int(rng.integers(1, 4))):
        pw, ph, zc = _u(rng, 0.3, 1.0), _u(rng, 0.3, 0.8), _u(rng, 1.4, 1.7)
        mat = "art" if rng.random() < 0.5 else "wall_paint"
        b.place_wall_item(PICTURE, mat, pw, zc - ph / 2, zc + ph / 2, 0.02)


def _table_with_chairs(b: _RoomBuilder, coffee: bool = False) -> None:
    kit = kit_table(b.rng, coffee=coffee)
    placed = b.place_free(kit)
    if placed is None or coffee:
        return
    pos, yaw = placed
    for k in b.rng.permutation(4)[: int(b.rng.integers(2, 5))]:
        direction = yaw + k * np.pi / 2
        reach = (kit.width if k % 2 == 0 else kit.depth) / 2 + 0.3
        b.place_chair_facing(pos, float(direction), reach)


def _desk_with_chair(b: _RoomBuilder) -> None:
    kit = kit_desk(b.rng)
    placed = b.place_against_wall(kit)
    if placed is None:
        return
    pos, yaw, _, _ = placed
    # The wall normal is R(yaw) @ (0, 1), i.e. angle yaw + pi/2; the chair sits out there, facing the desk.
    b.place_chair_facing(pos, yaw + np.pi / 2, kit.depth / 2 + 0.32)


def _bookshelf(b: _RoomBuilder) -> None:
    shelf, books = kit_bookshelf(b.rng)
    placed = b.place_against_wall(shelf)
    if placed is not None and books.parts:
        b.add_kit(books, placed[0], placed[1], occupy=False)


def _kitchen_counter(b: _RoomBuilder) -> None:
    kit = kit_counter(b.rng)
    placed = b.place_against_wall(kit, corner=b.rng.random() < 0.5)
    if placed is None:
        return
    pos, yaw, _, _ = placed
    sink, x = kit_counter_sink(b.rng, kit)
    b.add_kit(sink, pos + yaw_matrix(yaw) @ np.array([x, 0.0, 0.0]), yaw, occupy=False)


def _bath(b: _RoomBuilder) -> None:
    kit = kit_bathtub(b.rng)
    placed = b.place_against_wall(kit, corner=True)
    if placed is None or b.rng.random() > 0.7:
        return
    pos, yaw, _, _ = placed
    mat = "fabric" if b.rng.random() < 0.5 else "wall_paint"
    curtain = Kit(SHOWER_CURTAIN, kit.width, 0.02,
                  [_box(mat, 0, kit.depth / 2 - 0.03, kit.height + 0.1, kit.width / 2 - 0.02, 0.01, 2.0)], 2.0)
    b.add_kit(curtain, pos, yaw, occupy=False)


def _repeat(n: int, fn: Callable[[], object]) -> None:
    for _ in range(n):
        fn()


def _furnish(b: _RoomBuilder, room_type: str) -> None:
    rng = b.rng
    if room_type == "bedroom":
        b.place_against_wall(kit_bed(rng))
        _repeat(int(rng.integers(1, 3)), lambda: b.place_against_wall(kit_otherfurniture(rng)))
        b.place_against_wall(kit_cabinet(rng, tall=True))
        if rng.random() < 0.6:
            _desk_with_chair(b)
        if rng.random() < 0.4:
            _bookshelf(b)
        if rng.random() < 0.3:
            b.place_against_wall(kit_sofa(rng))
    elif room_type == "living":
        _repeat(int(rng.integers(1, 3)), lambda: b.place_against_wall(kit_sofa(rng)))
        _table_with_chairs(b, coffee=rng.random() < 0.5)
        _bookshelf(b)
        b.place_against_wall(kit_cabinet(rng))
        b.place_against_wall(kit_otherfurniture(rng))
        if rng.random() < 0.5:
            b.place_chair_facing(b.size * np.array([0.5, 0.5, 0.0]), float(rng.uniform(0, 2 * np.pi)), 1.0)
    elif room_type == "office":
        _repeat(int(rng.integers(2, 4)), lambda: _desk_with_chair(b))
        _repeat(int(rng.integers(1, 3)), lambda: _bookshelf(b))
        _repeat(int(rng.integers(1, 3)), lambda: b.place_against_wall(kit_cabinet(rng)))
        if rng.random() < 0.5:
            _table_with_chairs(b)
    elif room_type == "kitchen":
        _repeat(int(rng.integers(1, 3)), lambda: _kitchen_counter(b))
        b.place_against_wall(kit_refrigerator(rng))
        b.place_against_wall(kit_cabinet(rng))
        _repeat(int(rng.integers(1, 3)), lambda: b.place_against_wall(kit_wall_cabinet(rng), above=True))
        if rng.random() < 0.7:
            _table_with_chairs(b)
        if rng.random() < 0.3:
            b.place_against_wall(kit_otherfurniture(rng))
    elif room_type == "bathroom":
        _bath(b)
        b.place_against_wall(kit_toilet(rng))
        b.place_against_wall(kit_sink(rng))
        if rng.random() < 0.5:
            b.place_against_wall(kit_cabinet(rng, tall=False))
        if rng.random() < 0.3:
            b.place_against_wall(kit_otherfurniture(rng))
    else:
        raise ValueError(f"unknown room type {room_type!r}; choose one of {ROOM_TYPES}")


def room_size(rng: np.random.Generator, room_type: str) -> np.ndarray:
    if room_type == "bathroom":
        return np.array([_u(rng, 2.6, 3.6), _u(rng, 2.2, 3.0), _u(rng, 2.4, 2.8)])
    return np.array([_u(rng, 3.8, 6.5), _u(rng, 3.2, 5.0), _u(rng, 2.5, 3.0)])


def generate_room(rng: np.random.Generator, room_type: str) -> RoomLayout:
    """A furnished room of the given type; deterministic in the generator's state."""
    b = _RoomBuilder(room_size(rng, room_type), rng)
    b.add_shell()
    _add_openings(b, room_type)
    _furnish(b, room_type)
    _add_wall_decor(b, room_type)
    return b.build(room_type)
