"""Opening a cache's Zarr store from a path or URL (file://, http(s)://, s3:// through fsspec)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr
from zarr.storage import FsspecStore, LocalStore

REMOTE_SCHEMES = ("http://", "https://", "s3://", "gs://", "az://", "memory://")


def is_remote(url: str | Path) -> bool:
    return str(url).startswith(REMOTE_SCHEMES)


def local_path(url: str | Path) -> Path:
    s = str(url)
    return Path(s[len("file://"):] if s.startswith("file://") else s)


def open_store(url: str | Path, *, read_only: bool, storage_options: dict[str, Any] | None = None):
    """A zarr store for `url`. Remote stores are always read-only; opening to read never writes."""
    if is_remote(url):
        if not read_only:
            raise ValueError(f"remote caches are read-only: {url}")
        from .remote import ChunkCacheStore, chunk_cache_dir

        directory, options = chunk_cache_dir(storage_options)
        store = FsspecStore.from_url(str(url), read_only=True, storage_options=options)
        return ChunkCacheStore(store, directory, str(url)) if directory else store
    path = local_path(url)
    if read_only and not (path / "zarr.json").exists():
        raise FileNotFoundError(f"no cache at {path} (missing {path / 'zarr.json'})")
    return LocalStore(path, read_only=read_only)


def open_root(url: str | Path, *, mode: str = "r", storage_options: dict[str, Any] | None = None) -> zarr.Group:
    store = open_store(url, read_only=(mode == "r"), storage_options=storage_options)
    return zarr.open_group(store, mode=mode, zarr_format=3)
