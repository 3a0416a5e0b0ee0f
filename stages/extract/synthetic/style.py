"""Appearance of the synthetic world: materials, palettes, 3D texture noise and Lambertian lighting.

One function, :func:`appearance`, colours any set of surface points; the renderer calls it at ray hits and the
mesh builder at vertices, so 3D and 2D colours agree exactly (Lambertian shading is view-independent).

Confusable classes share a *material* (and so a palette): cabinet / refrigerator / door / otherfurniture are
all "panel"; table / desk / counter / bookshelf are all "wood"; pictures and curtains draw half of their
instances from the wall paint. Their 2D colour distributions overlap; only geometry (height, thickness,
position against a wall, legs) tells them apart, which is what the 3D teacher adds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MATERIALS: tuple[str, ...] = ("wall_paint", "floor", "ceiling", "panel", "wood", "fabric", "ceramic", "glass",
                              "art", "metal", "whiteboard")
MATERIAL_INDEX: dict[str, int] = {m: i for i, m in enumerate(MATERIALS)}

# sRGB-ish albedos in 0..1, style "a". Style "b" is derived from these so both styles have the same structure.
_PALETTE_A: dict[str, tuple[tuple[float, float, float], ...]] = {
    "wall_paint": ((0.85, 0.84, 0.80), (0.75, 0.76, 0.76), (0.82, 0.76, 0.64), (0.70, 0.78, 0.84),
                   (0.74, 0.80, 0.70)),
    "floor": ((0.55, 0.40, 0.26), (0.60, 0.60, 0.58), (0.35, 0.30, 0.28), (0.45, 0.48, 0.55)),
    "ceiling": ((0.92, 0.92, 0.90), (0.85, 0.85, 0.85)),
    "panel": ((0.88, 0.88, 0.86), (0.70, 0.70, 0.70), (0.78, 0.70, 0.58), (0.70, 0.55, 0.38),
              (0.40, 0.28, 0.20)),
    "wood": ((0.72, 0.58, 0.40), (0.55, 0.40, 0.26), (0.35, 0.24, 0.16), (0.86, 0.85, 0.82),
             (0.55, 0.55, 0.55)),
    "fabric": ((0.60, 0.25, 0.22), (0.25, 0.32, 0.55), (0.50, 0.50, 0.52), (0.75, 0.68, 0.55),
               (0.35, 0.48, 0.35)),
    "ceramic": ((0.93, 0.93, 0.92), (0.88, 0.90, 0.92), (0.85, 0.83, 0.78)),
    "glass": ((0.65, 0.78, 0.88), (0.55, 0.62, 0.70), (0.80, 0.85, 0.90)),
    "art": ((0.80, 0.30, 0.20), (0.20, 0.40, 0.70), (0.90, 0.80, 0.30), (0.30, 0.60, 0.40),
            (0.15, 0.15, 0.18)),
    "metal": ((0.60, 0.60, 0.62), (0.25, 0.25, 0.27)),
    "whiteboard": ((0.95, 0.95, 0.95), (0.90, 0.92, 0.93)),
}

# How strongly each material's albedo is modulated by the texture noise (relative to Style.texture_amplitude).
_TEXTURE_GAIN: dict[str, float] = {"wall_paint": 0.5, "floor": 1.2, "ceiling": 0.3, "panel": 0.8, "wood": 1.5,
                                   "fabric": 1.3, "ceramic": 0.3, "glass": 0.4, "art": 2.0, "metal": 0.5,
                                   "whiteboard": 0.2}
_N_WAVES = 6


@dataclass(frozen=True)
class Style:
    """The look of a world: palettes, texture noise and lighting. Geometry never depends on it."""

    name: str
    palettes: dict[str, tuple[tuple[float, float, float], ...]]
    texture_amplitude: float = 0.12  # relative albedo modulation of the 3D noise
    texture_scale: float = 0.4  # metres, dominant wavelength of the noise
    light_intensity: float = 0.75
    light_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.35
    texture_seed: int = 0  # wave directions/phases of the noise
    waves: np.ndarray = field(init=False, repr=False, compare=False)  # (materials, waves, 4): k_xyz, phase

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.texture_seed)
        dirs = rng.normal(size=(len(MATERIALS), _N_WAVES, 3))
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        wavelength = self.texture_scale * np.exp(rng.uniform(np.log(0.4), np.log(2.5), size=(len(MATERIALS),
                                                                                             _N_WAVES, 1)))
        k = dirs * (2 * np.pi / wavelength)
        phase = rng.uniform(0, 2 * np.pi, size=(len(MATERIALS), _N_WAVES, 1))
        object.__setattr__(self, "waves", np.concatenate([k, phase], axis=-1))
        missing = set(MATERIALS) - set(self.palettes)
        if missing:
            raise ValueError(f"style {self.name!r}: palettes missing for materials {sorted(missing)}")


def _derive_b(palette: dict[str, tuple[tuple[float, float, float], ...]]) -> dict:
    # A warm hue shift and a contrast change: same palette structure (so the same classes stay confusable),
    # different colour statistics (a domain shift between styles).
    mix = np.array([[0.80, 0.15, 0.05], [0.10, 0.75, 0.15], [0.05, 0.30, 0.65]])
    out = {}
    for m, cols in palette.items():
        c = np.clip((np.asarray(cols) @ mix.T) ** 1.3 * 1.05 + np.array([0.06, 0.02, -0.02]), 0.02, 0.98)
        out[m] = tuple(tuple(float(v) for v in row) for row in c)
    return out


STYLES: dict[str, Style] = {
    "a": Style(name="a", palettes=_PALETTE_A, texture_amplitude=0.12, texture_scale=0.4, light_intensity=0.75,
               light_color=(1.0, 1.0, 1.0), ambient=0.35, texture_seed=11),
    "b": Style(name="b", palettes=_derive_b(_PALETTE_A), texture_amplitude=0.25, texture_scale=0.15,
               light_intensity=0.6, light_color=(1.0, 0.88, 0.72), ambient=0.3, texture_seed=23),
}


def get_style(name: str) -> Style:
    try:
        return STYLES[name]
    except KeyError:
        raise ValueError(f"unknown style {name!r}; choose one of {sorted(STYLES)}") from None


def albedo(style: Style, points: np.ndarray, material: np.ndarray, tone: np.ndarray) -> np.ndarray:
    """Unshaded colour (N, 3) in 0..1 of points on surfaces with the given material index and tone in [0, 1).

    The tone picks the instance's palette entry (and a small brightness jitter); the noise is a sum of plane
    waves of the 3D position, so a surface point has the same texture from every view.
    """
    n = len(points)
    out = np.empty((n, 3))
    for mi, name in enumerate(MATERIALS):
        sel = np.nonzero(material == mi)[0]
        if sel.size == 0:
            continue
        pal = np.asarray(style.palettes[name])
        scaled = tone[sel] * len(pal)
        idx = np.minimum(scaled.astype(np.int64), len(pal) - 1)
        jitter = 0.9 + 0.2 * (scaled - np.floor(scaled))
        base = pal[idx] * jitter[:, None]
        w = style.waves[mi].astype(np.float32)
        p = points[sel].astype(np.float32)
        # Per-instance phase offset so two objects of one material do not share a texture pattern.
        arg = (p[:, 0:1] * w[:, 0] + p[:, 1:2] * w[:, 1] + p[:, 2:3] * w[:, 2] + w[:, 3]
               + np.float32(17.0) * tone[sel, None].astype(np.float32))
        noise = np.sin(arg).sum(axis=1, dtype=np.float64) / np.sqrt(_N_WAVES / 2)
        out[sel] = base * (1.0 + style.texture_amplitude * _TEXTURE_GAIN[name] * noise)[:, None]
    return out


def shading(style: Style, points: np.ndarray, normals: np.ndarray, lights: np.ndarray) -> np.ndarray:
    """Lambertian irradiance (N, 3): ambient plus point lights with a soft distance falloff, no shadows."""
    total = np.full(len(points), style.ambient)
    for light in lights:
        to_light = light - points
        dist = np.linalg.norm(to_light, axis=1)
        cos = np.einsum("ij,ij->i", normals, to_light) / np.maximum(dist, 1e-9)
        total += style.light_intensity * np.maximum(cos, 0.0) / (1.0 + (dist / 3.0) ** 2)
    return total[:, None] * np.asarray(style.light_color)[None, :]


def appearance(style: Style, points: np.ndarray, normals: np.ndarray, material: np.ndarray, tone: np.ndarray,
               lights: np.ndarray) -> np.ndarray:
    """Shaded uint8 RGB (N, 3) of surface points: what both the renderer and the mesh vertex colours use."""
    rgb = albedo(style, points, material, tone) * shading(style, points, normals, lights)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
