"""Colour overlays of predictions: the image blended with a class palette, and a legend of the classes present."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

ALPHA = 0.5  # weight of the class colour in the blend
_ROW, _SWATCH, _PAD, _FONT, _SCALE = 20, 14, 8, cv2.FONT_HERSHEY_SIMPLEX, 0.45


def class_palette(num_classes: int) -> np.ndarray:
    """(K, 3) uint8 RGB colours, one per training id: hues a golden-ratio step apart, alternating saturation and
    value so that neighbouring ids stay distinguishable; the same for every run."""
    colours = []
    for i in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.95 - 0.3 * (i % 2), 0.95 - 0.25 * ((i // 2) % 2))
        colours.append((round(255 * r), round(255 * g), round(255 * b)))
    return np.asarray(colours, np.uint8).reshape(num_classes, 3)


def overlay(rgb: np.ndarray, train_ids: np.ndarray, names: Sequence[str], fractions: Mapping[str, float],
            palette: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8: ``rgb`` blended with the colours of ``train_ids`` (same H, W), a legend panel on the right
    listing ``fractions``' classes (name → pixel fraction, in the given order)."""
    palette = class_palette(len(names)) if palette is None else palette
    h, w = train_ids.shape
    blend = cv2.addWeighted(rgb, 1.0 - ALPHA, palette[train_ids], ALPHA, 0.0)
    index = {n: i for i, n in enumerate(names)}
    rows = [(palette[index[n]], f"{n} {100 * f:.1f}%") for n, f in fractions.items()]
    text_w = max((cv2.getTextSize(t, _FONT, _SCALE, 1)[0][0] for _, t in rows), default=0)
    panel_w = _PAD * 3 + _SWATCH + text_w
    canvas = np.full((max(h, _PAD * 2 + _ROW * len(rows)), w + panel_w, 3), 255, np.uint8)
    canvas[:h, :w] = blend
    for k, (colour, text) in enumerate(rows):
        y = _PAD + k * _ROW
        x = w + _PAD
        canvas[y:y + _SWATCH, x:x + _SWATCH] = colour
        cv2.putText(canvas, text, (x + _SWATCH + _PAD, y + _SWATCH - 2), _FONT, _SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
