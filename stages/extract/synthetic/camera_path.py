"""A hand-held scanning trajectory: walk the free floor at eye height, looking around at the furniture.

Positions follow shortest grid paths between random free waypoints (so the walk never crosses furniture),
lightly smoothed and resampled by arc length; the camera looks at a slowly moving sequence of points of
interest (objects, the floor, the far side of the room), which yields smooth yaw and a slight downward pitch.
Poses are camera-to-world 4x4 in OpenCV axes (x right, y down, z forward), world +Z up.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from scipy import ndimage

from .render import render_depth
from .rooms import GRID_CELL, RoomLayout

WORLD_UP = np.array([0.0, 0.0, 1.0])
# A 16x12 depth probe with a ~60 degree field of view, to avoid frames filled by one close object.
_PROBE_SIZE = (16, 12)
_PROBE_K = np.array([[8 / np.tan(np.radians(30)), 0.0, 7.5], [0.0, 8 / np.tan(np.radians(30)), 5.5], [0, 0, 1.0]])
_MIN_VIEW_DEPTH = 1.0  # metres: median depth a view should reach


def look_at_pose(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world pose at `position` looking at `target` with no roll (OpenCV camera axes)."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, WORLD_UP)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, position
    return pose


def free_space(layout: RoomLayout, clearance: float) -> np.ndarray:
    """Floor cells at least `clearance` metres from furniture footprints and walls."""
    blocked = np.pad(layout.occupancy, 1, constant_values=True)  # the walls count as blocked
    dist = ndimage.distance_transform_edt(~blocked)[1:-1, 1:-1] * GRID_CELL
    return dist >= clearance


def _grid_path(free: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
    """Breadth-first 8-connected shortest path over free cells (grids are small: ~100 x 100)."""
    prev = -np.ones(free.shape + (2,), dtype=np.int64)
    prev[start] = start
    queue = deque([start])
    steps = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)]
    while queue:
        cur = queue.popleft()
        if cur == goal:
            break
        for dx, dy in steps:
            nx, ny = cur[0] + dx, cur[1] + dy
            if 0 <= nx < free.shape[0] and 0 <= ny < free.shape[1] and free[nx, ny] and prev[nx, ny, 0] < 0:
                prev[nx, ny] = cur
                queue.append((nx, ny))
    if prev[goal][0] < 0:
        return [start]
    path = [goal]
    while path[-1] != start:
        path.append(tuple(int(v) for v in prev[path[-1]]))
    return path[::-1]


def _resample(points: np.ndarray, n: int) -> np.ndarray:
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] < 1e-9:
        return np.repeat(points[:1], n, axis=0)
    s = np.linspace(0.0, arc[-1], n)
    return np.column_stack([np.interp(s, arc, points[:, k]) for k in range(points.shape[1])])


def _interest_points(layout: RoomLayout, rng: np.random.Generator, count: int) -> np.ndarray:
    """Points the scanner looks at: object parts (mostly) and random spots in the room."""
    lx, ly, h = layout.size
    centres = np.concatenate([layout.boxes.center, layout.cylinders.base + np.c_[0 * layout.cylinders.radius,
                                                                                  0 * layout.cylinders.radius,
                                                                                  layout.cylinders.height / 2]])
    out = []
    for _ in range(count):
        if len(centres) and rng.random() < 0.6:
            out.append(centres[rng.integers(len(centres))])
        else:
            out.append(np.array([rng.uniform(0.1, lx - 0.1), rng.uniform(0.1, ly - 0.1), rng.uniform(0.2, 1.4)]))
    return np.asarray(out)


def camera_trajectory(layout: RoomLayout, frames: int, rng: np.random.Generator, eye_height: tuple[float, float]
                      = (1.3, 1.6), min_pitch_deg: float = 8.0, max_pitch_deg: float = 40.0) -> np.ndarray:
    """`frames` camera-to-world poses (frames, 4, 4) of a walk through the room's free space."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    free = np.zeros(1, dtype=bool)
    for clearance in (0.45, 0.35, 0.25):
        free = free_space(layout, clearance)
        if free.any():
            break
    if not free.any():  # a cramped room: stand where there is most room
        blocked = np.pad(layout.occupancy, 1, constant_values=True)
        dist = ndimage.distance_transform_edt(~blocked)[1:-1, 1:-1]
        free = dist == dist.max()
    cells = np.argwhere(free)
    n_way = int(np.clip(frames // 6 + 2, 2, 8))
    way = [tuple(int(v) for v in cells[rng.integers(len(cells))]) for _ in range(n_way)]
    path = [way[0]]
    for a, b in zip(way[:-1], way[1:], strict=True):
        path += _grid_path(free, a, b)[1:]
    xy = (np.asarray(path, dtype=np.float64) + 0.5) * GRID_CELL
    if len(xy) > 5:  # smooth the grid staircase; a 5-cell window cannot leave the clearance band
        kernel = np.ones(5) / 5
        xy = np.column_stack([np.convolve(np.pad(xy[:, k], 2, mode="edge"), kernel, mode="valid") for k in (0, 1)])
    xy = _resample(xy, frames)
    phase = rng.uniform(0, 2 * np.pi)
    t = np.linspace(0, 1, frames)
    z = np.mean(eye_height) + (eye_height[1] - eye_height[0]) / 2 * 0.8 * np.sin(2 * np.pi * t + phase)
    positions = np.column_stack([xy, z])
    targets = _resample(_interest_points(layout, rng, n_way + 1), frames)

    poses = np.empty((frames, 4, 4))
    for i in range(frames):
        direction = targets[i] - positions[i]
        horiz = np.linalg.norm(direction[:2])
        if horiz < 0.5:  # target (almost) under the camera: look ahead along an arbitrary stable heading
            direction = np.array([np.cos(phase + i * 0.3), np.sin(phase + i * 0.3), 0.0])
            horiz = 1.0
        pitch = np.clip(np.degrees(np.arctan2(-direction[2], horiz)), min_pitch_deg, max_pitch_deg)
        heading = np.arctan2(direction[1], direction[0])
        best, best_depth = None, -1.0
        for turn in range(6):  # a view blocked by something close: turn away, as a person scanning would
            h = heading + turn * np.pi / 3
            forward = np.array([np.cos(h), np.sin(h), -np.tan(np.radians(pitch))])
            pose = look_at_pose(positions[i], positions[i] + forward)
            depth = float(np.median(render_depth(layout, pose, _PROBE_K, *_PROBE_SIZE)))
            if depth > best_depth:
                best, best_depth = pose, depth
            if depth >= _MIN_VIEW_DEPTH:
                break
        poses[i] = best
    return poses
