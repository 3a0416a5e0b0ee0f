"""Pulling a cache (or some of its scenes) to a local directory, and merging caches of disjoint scenes.

Scenes are copied as stored objects, byte for byte (array metadata and chunks), so recorded checksums stay valid
and nothing is decoded and re-encoded. Per scene the order is the writer's: a provisional group (complete: false),
the arrays, a full verification of the copy against the recorded checksums, and only then the source's group
metadata with ``complete: true``. An interrupted transfer therefore leaves at worst incomplete scene groups, which a
rerun deletes and copies again; complete scenes that verify are skipped.

Object keys are never listed (plain HTTP cannot): the chunk keys of an array follow from its metadata.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import fsspec

from .errors import CacheError
from .fingerprint import canonical_hash
from .layout import ALL_ARRAYS, SCENES_GROUP
from .manifest import Manifest, validate_scene_name
from .reader import CacheReader, open_cache
from .remote import chunk_cache_dir
from .store import is_remote, local_path
from .verify import check_scene_group
from .writer import CacheWriter, manifest_differences

BATCH_OBJECTS = 32  # chunks fetched per request batch (concurrently on HTTP/S3): at most ~50 MB in flight
_CHUNK_KEY_PARTS = 8  # sanity bound on array rank


class TransferError(CacheError):
    """A copy failed (source unreadable or corrupt, copy does not verify) or caches cannot be merged."""


@dataclass
class TransferReport:
    dst: str
    fingerprint: str = ""
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete in dst and verified
    unavailable: list[str] = field(default_factory=list)  # not complete in the source: not copied
    recopied: list[str] = field(default_factory=list)  # complete in dst but failed verification: copied again
    bytes_copied: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.unavailable


# Hooks: on_bytes(n) after each batch of objects written (progress; a test may raise to simulate a kill);
# on_scene(name, action) after each scene ("copied" / "skipped").
BytesHook = Callable[[int], None]
SceneHook = Callable[[str, str], None]


def pull_cache(src: str | Path, dst: str | Path, *, scenes: list[str] | None = None,
               storage_options: dict[str, Any] | None = None, verify_existing: bool = True,
               on_bytes: BytesHook | None = None, on_scene: SceneHook | None = None) -> TransferReport:
    """Copy the cache at `src` (path or URL) into the local directory `dst`, all scenes or `scenes` only.

    A subset gets a manifest listing only those scenes (so its own fingerprint) and statistics recomputed from the
    copied scenes' moments. Rerunning the same pull resumes it; a `dst` holding another cache is refused.
    """
    reader = open_cache(src, storage_options=storage_options)
    manifest = reader.manifest
    names = list(manifest.dataset.scenes)
    if scenes is not None:
        for s in scenes:
            validate_scene_name(s)
        unknown = sorted(set(scenes) - set(names))
        if unknown:
            raise TransferError(f"{src}: no scene(s) {unknown} in this cache (it has {len(names)})")
        names = sorted(set(scenes))
        manifest = subset_manifest(reader, names)
    return _transfer({s: reader for s in names}, manifest, dst, storage_options=storage_options,
                     verify_existing=verify_existing, on_bytes=on_bytes, on_scene=on_scene)


def merge_caches(srcs: list[str | Path], out: str | Path, *, storage_options: dict[str, Any] | None = None,
                 verify_existing: bool = True, on_bytes: BytesHook | None = None,
                 on_scene: SceneHook | None = None) -> TransferReport:
    """Combine caches of disjoint, complete scenes made with the same parameters into the local directory `out`."""
    if len(srcs) < 2:
        raise TransferError("merge needs at least two caches")
    readers = [open_cache(s, storage_options=storage_options) for s in srcs]
    manifest = merged_manifest(readers)
    owner = {s: r for r in readers for s in r.manifest.dataset.scenes}
    return _transfer(owner, manifest, out, storage_options=storage_options, verify_existing=verify_existing,
                     on_bytes=on_bytes, on_scene=on_scene)


def subset_manifest(reader: CacheReader, scenes: list[str]) -> Manifest:
    m = reader.manifest
    dataset = replace(m.dataset, scenes=sorted(scenes), split="explicit",
                      input_fingerprint=_input_fingerprint([reader], sorted(scenes)))
    return replace(m, dataset=dataset, stats=None)


def merged_manifest(readers: list[CacheReader]) -> Manifest:
    """The manifest of the union, after refusing different parameters, overlapping or unfinished scenes."""
    first = readers[0]
    for r in readers[1:]:
        if r.manifest.params_fingerprint() != first.manifest.params_fingerprint():
            diffs = [d for d in manifest_differences(first.manifest, r.manifest)
                     if not d.startswith(("dataset.scenes", "dataset.input_fingerprint", "dataset.split",
                                          "teacher.backend"))]
            raise TransferError(f"cannot merge {r.url} into {first.url}: they were made with different teachers or "
                                f"parameters ({'; '.join(diffs) or 'params_fingerprint differs'})")
    seen: dict[str, str] = {}
    overlap = []
    for r in readers:
        for s in r.manifest.dataset.scenes:
            if s in seen:
                overlap.append(f"{s} ({seen[s]} and {r.url})")
            seen[s] = r.url
    if overlap:
        raise TransferError(f"cannot merge caches with overlapping scenes: {', '.join(overlap[:10])}"
                            + (f" and {len(overlap) - 10} more" if len(overlap) > 10 else ""))
    unfinished = [f"{s} ({r.url})" for r in readers for s in r.incomplete_scenes()]
    if unfinished:
        raise TransferError(f"cannot merge unfinished caches: scenes not complete: {', '.join(unfinished[:10])}")
    names = sorted(seen)
    splits = {r.manifest.dataset.split for r in readers}
    dataset = replace(first.manifest.dataset, scenes=names, split=splits.pop() if len(splits) == 1 else "explicit",
                      input_fingerprint=_input_fingerprint(readers, names))
    return replace(first.manifest, dataset=dataset, stats=None)


def _input_fingerprint(readers: list[CacheReader], names: list[str]) -> str:
    """As extraction computes it (sha256 of `<scene>:<files fingerprint>\\n`), from the scenes' recorded input
    fingerprints, so a pulled subset or a merge gets the fingerprint an extraction of those scenes would have.
    Caches whose scenes do not record one get a hash derived from the sources' input fingerprints instead."""
    per_scene: dict[str, str] = {}
    for r in readers:
        for s in r.manifest.dataset.scenes:
            if s in names and r.scene_status(s) == "complete":
                fp = dict(r.root[f"{SCENES_GROUP}/{s}"].attrs).get("input_fingerprint")
                if isinstance(fp, str):
                    per_scene[s] = fp
    if set(per_scene) == set(names):
        h = hashlib.sha256()
        for s in names:
            h.update(f"{s}:{per_scene[s]}\n".encode())
        return h.hexdigest()
    return canonical_hash({"derived_from": sorted(r.manifest.dataset.input_fingerprint for r in readers),
                           "scenes": names})


def _transfer(owner: dict[str, CacheReader], manifest: Manifest, dst: str | Path, *,
              storage_options: dict[str, Any] | None, verify_existing: bool, on_bytes: BytesHook | None,
              on_scene: SceneHook | None) -> TransferReport:
    if is_remote(dst):
        raise TransferError(f"the destination must be a local directory, not {dst}")
    t0 = time.perf_counter()
    dst_path = local_path(dst)
    writer = CacheWriter.create(dst_path, manifest)  # refuses a dst holding another cache (fingerprint)
    report = TransferReport(str(dst_path), manifest.fingerprint())
    sources = {id(r): _ObjectSource(r.url, storage_options) for r in owner.values()}
    for name in manifest.dataset.scenes:
        validate_scene_name(name)
        reader = owner[name]
        if reader.scene_status(name) != "complete":
            report.unavailable.append(name)
            continue
        src_attrs = dict(reader.root[f"{SCENES_GROUP}/{name}"].attrs)
        status = writer.scene_status(name)
        if status == "complete":
            if _existing_ok(writer, name, src_attrs, verify_existing):
                report.skipped.append(name)
                if on_scene is not None:
                    on_scene(name, "skipped")
                continue
            report.recopied.append(name)
        report.bytes_copied += _copy_scene(sources[id(reader)], dst_path, name, writer, on_bytes)
        report.copied.append(name)
        if on_scene is not None:
            on_scene(name, "copied")
    writer.finalize_stats()
    report.seconds = time.perf_counter() - t0
    return report


def _existing_ok(writer: CacheWriter, name: str, src_attrs: dict, verify: bool) -> bool:
    dst_attrs = dict(writer.root[f"{SCENES_GROUP}/{name}"].attrs)
    if any(dst_attrs.get(k) != src_attrs.get(k) for k in ("checksums", "feature_scale", "feature_offset")):
        return False  # (uint8 features: the same codes mean other values under another scale/offset)
    if not verify:
        return True
    probs, _ = check_scene_group(writer.root[f"{SCENES_GROUP}/{name}"], name, writer.manifest)
    return not probs


def _copy_scene(src: _ObjectSource, dst_root: Path, name: str, writer: CacheWriter, on_bytes: BytesHook | None
                ) -> int:
    prefix = f"{SCENES_GROUP}/{validate_scene_name(name)}"
    scene_dir = dst_root / SCENES_GROUP / name
    if scene_dir.exists():  # an incomplete (or failed) copy: start the scene again
        shutil.rmtree(scene_dir)
    group_meta = src.get(f"{prefix}/zarr.json")
    meta = _parse_json(group_meta, f"{src.url}/{prefix}/zarr.json")
    provisional = dict(meta)
    provisional["attributes"] = {**meta.get("attributes", {}), "complete": False}
    _write(scene_dir / "zarr.json", json.dumps(provisional).encode())
    total = 0
    for array in ALL_ARRAYS:
        key = f"{prefix}/{array}/zarr.json"
        raw = src.get(key)
        keys = chunk_keys(_parse_json(raw, f"{src.url}/{key}"), f"{src.url}/{key}")
        _write(scene_dir / array / "zarr.json", raw)
        total += len(raw)
        for batch in _batches(keys, BATCH_OBJECTS):
            got = src.get_many([f"{prefix}/{array}/{k}" for k in batch])
            n = 0
            for k, data in zip(batch, got, strict=True):
                if data is not None:  # absent: a chunk equal to the fill value, never written
                    _write(scene_dir / array / k, data)
                    n += len(data)
            total += n
            if on_bytes is not None:
                on_bytes(n)
    probs, _ = check_scene_group(writer.root[prefix], name, writer.manifest)
    if probs:
        raise TransferError(f"scene {name}: the copy from {src.url} does not verify (the source is damaged or the "
                            f"transfer failed); it is left incomplete: " + "; ".join(str(p) for p in probs[:5]))
    _write(scene_dir / "zarr.json", group_meta)  # the completion marker, last
    return total + len(group_meta)


def chunk_keys(meta: dict, where: str) -> list[str]:
    """Every chunk key of a Zarr v3 array with a regular chunk grid, from its metadata (no listing)."""
    try:
        if meta.get("node_type") != "array" or meta.get("zarr_format") != 3:
            raise TransferError(f"{where}: not Zarr v3 array metadata")
        shape = [int(s) for s in meta["shape"]]
        grid = meta["chunk_grid"]
        if grid.get("name") != "regular":
            raise TransferError(f"{where}: unsupported chunk grid {grid.get('name')!r}")
        chunks = [int(c) for c in grid["configuration"]["chunk_shape"]]
        enc = meta.get("chunk_key_encoding", {"name": "default"})
        sep = enc.get("configuration", {}).get("separator", "/" if enc.get("name") == "default" else ".")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TransferError(f"{where}: malformed array metadata: {e!r}") from e
    if len(shape) != len(chunks) or len(shape) > _CHUNK_KEY_PARTS or min(chunks, default=1) <= 0 or sep not in "/.":
        raise TransferError(f"{where}: malformed array metadata (shape {shape}, chunks {chunks}, separator {sep!r})")
    counts = [math.ceil(s / c) for s, c in zip(shape, chunks, strict=True)]
    coords = itertools.product(*(range(n) for n in counts))
    if enc.get("name") == "default":
        return [sep.join(["c", *map(str, c)]) for c in coords]
    if enc.get("name") == "v2":
        return [sep.join(map(str, c)) or "0" for c in coords]
    raise TransferError(f"{where}: unsupported chunk key encoding {enc.get('name')!r}")


class _ObjectSource:
    """Raw stored objects of a cache by key, through fsspec (local, HTTP, S3); many keys are fetched at once."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None):
        self.url = url
        _, options = chunk_cache_dir(storage_options)  # a transfer reads each object once: no chunk cache
        self.fs, root = fsspec.core.url_to_fs(url if is_remote(url) else str(local_path(url)), **options)
        self.root = root.rstrip("/")

    def get(self, key: str) -> bytes:
        data = self.get_many([key])[0]
        if data is None:
            raise TransferError(f"{self.url}: missing object {key}")
        return data

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        paths = [f"{self.root}/{k}" for k in keys]
        got = self.fs.cat(paths, on_error="return")
        if not isinstance(got, dict):  # a single path is returned bare by some filesystems
            got = {paths[0]: got}
        out: list[bytes | None] = []
        for k, p in zip(keys, paths, strict=True):
            v = got.get(p, got.get(self.fs._strip_protocol(p)))
            if isinstance(v, FileNotFoundError) or v is None:
                out.append(None)
            elif isinstance(v, BaseException):
                raise TransferError(f"{self.url}: cannot read {k}: {type(v).__name__}: {v}") from v
            else:
                out.append(bytes(v))
        return out


def _parse_json(raw: bytes, where: str) -> dict:
    try:
        d = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise TransferError(f"{where}: not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise TransferError(f"{where}: not a JSON object")
    return d


def _batches(items: list[str], n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _write(path: Path, data: bytes) -> None:
    """Write through a temporary name and rename, so a kill never leaves a half-written object under its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
