"""Parsing helpers shared by the CLI commands."""

from __future__ import annotations

import json
from typing import Any

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


def parse_scales(text: str) -> tuple[float, ...]:
    """'1.0,0.75,1.25' -> (1.0, 0.75, 1.25): test scales whose softmax is averaged."""
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers like 1.0,0.75,1.25, got {text!r}") from None
    if not scales or any(not s > 0 for s in scales):
        raise click.BadParameter(f"scales must be positive numbers, got {text!r}")
    return scales


def parse_window(text: str) -> str | tuple[int, int]:
    """'whole' | 'crop' | 'WxH' -> the inference path's window spec ((H, W) for a size)."""
    if text in ("whole", "crop"):
        return text
    size = parse_size(text)
    assert size is not None
    w, h = size
    if min(w, h) < 8:
        raise click.BadParameter(f"a window needs sides of at least 8 pixels, got {text!r}")
    return (h, w)


# Test protocols of `evaluate --protocol`: the paper's Table 3 tests whole images at one scale without flips; the
# authors' release (semseg's test script) averages six scales and their flips over sliding windows of the crop.
RELEASE_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": {"scales": (1.0,), "flip": False, "window": "whole"},
    "release": {"scales": RELEASE_SCALES, "flip": True, "window": "crop"},
}


def parse_scene_list(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    return tuple(s.strip() for s in text.split(",") if s.strip())


storage_option = click.option(
    "--storage-option", "-S", "storage_opts", multiple=True, metavar="KEY=VALUE",
    help="fsspec storage option for remote caches, repeatable, e.g. endpoint_url=http://127.0.0.1:9000 for an "
         "S3-compatible server or anon=true. VALUE is parsed as JSON when it is valid JSON, else kept as text. "
         "Credentials come from the usual AWS environment/config; AWS_ENDPOINT_URL is honoured.")


def parse_storage_options(items: tuple[str, ...]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--storage-option")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out or None
