"""Parsing helpers shared by the CLI commands."""

from __future__ import annotations

import click


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'640x480' -> (640, 480) as (W, H)."""
    if not text:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WxH like 640x480, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise click.BadParameter(f"size must be positive, got {text!r}")
    return (w, h)


def parse_scene_list(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    return tuple(s.strip() for s in text.split(",") if s.strip())
