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
