"""An optional local read-through cache of the chunk objects of a remote cache (HTTP/S3).

Enabled by the environment variable DISTILL_CACHE_CHUNK_CACHE=<dir> or the storage option
``chunk_cache=<dir>``. Only chunk objects are kept: metadata (``zarr.json``) is always fetched, because completion
markers and statistics may change while a cache is being written. Chunks are filed under the cache's manifest
fingerprint (read from the root ``zarr.json``, the first object any reader fetches), so a cache rebuilt with other
inputs or parameters at the same URL never serves stale chunks. Chunks of complete scenes are never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

ENV_VAR = "DISTILL_CACHE_CHUNK_CACHE"
STORAGE_OPTION = "chunk_cache"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.\-/]+$")


class ChunkCacheStore(WrapperStore):
    """Wraps a read-only store; whole-object reads of chunk keys are served from / saved to `directory`."""

    def __init__(self, store, directory: str | Path | None = None, url: str = ""):
        super().__init__(store)
        self.directory = Path(directory) if directory is not None else None
        self.url = url
        self.namespace: str | None = None  # the manifest fingerprint, once the root metadata was read
        self.hits = 0
        self.misses = 0

    def _with_store(self, store) -> ChunkCacheStore:
        return type(self)(store, self.directory, self.url)

    def _local(self, key: str) -> Path | None:
        if self.directory is None or self.namespace is None or key.endswith("zarr.json"):
            return None
        parts = key.split("/")
        if not _SAFE_KEY.match(key) or any(p in ("", ".", "..") for p in parts):
            return None  # never build a path from an odd key
        return self.directory / self.namespace / key

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
                  ) -> Buffer | None:
        local = self._local(key) if byte_range is None else None
        if local is not None and local.is_file():
            self.hits += 1
            return prototype.buffer.from_bytes(local.read_bytes())
        buf = await self._store.get(key, prototype, byte_range)
        if key == "zarr.json" and buf is not None and byte_range is None:
            self.namespace = _namespace(buf.to_bytes(), self.url)
        if local is not None and buf is not None:
            self.misses += 1
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
            tmp.write_bytes(buf.to_bytes())
            os.replace(tmp, local)  # atomic: a concurrent reader sees the whole chunk or none
        return buf


def _namespace(root_meta: bytes, url: str) -> str:
    try:
        fp = json.loads(root_meta)["attributes"]["fingerprint"]
        if isinstance(fp, str) and re.fullmatch(r"[0-9a-f]{16,128}", fp):
            return fp
    except (ValueError, KeyError, TypeError):
        pass
    return "url-" + hashlib.sha256(url.encode()).hexdigest()


def chunk_cache_dir(storage_options: dict | None) -> tuple[str | None, dict]:
    """(directory or None, the storage options without ours): the option wins over the environment variable."""
    opts = dict(storage_options or {})
    directory = opts.pop(STORAGE_OPTION, None) or os.environ.get(ENV_VAR) or None
    return directory, opts
