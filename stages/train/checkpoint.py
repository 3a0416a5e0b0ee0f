"""Training checkpoints: everything a run needs to continue exactly, stored so `torch.load(weights_only=True)` reads it.

Only tensors and plain types go in: configs and manifests as JSON strings, RNG states as uint8/int64 tensors. The
file is written to a temporary name beside the target and renamed, so a crash never leaves half a checkpoint.

Provenance: a checkpoint records the fingerprint, manifest JSON and global statistics of the cache it was trained
from (and of the feature cache in unpaired mode). `provenance_problems` compares them with a cache about to be
used and returns human-readable differences (empty list = same provenance).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cache_schema import CacheReader, Manifest, manifest_differences

FORMAT = "distill-cache-student"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this use."""


class ProvenanceError(CheckpointError):
    """The cache differs from the one the checkpoint was trained on (pass force to go on anyway)."""


@dataclass
class CacheProvenance:
    """Which cache a model learnt from: its fingerprint, manifest and feature statistics."""

    url: str
    fingerprint: str
    params_fingerprint: str
    manifest_json: str
    stats_mean: torch.Tensor | None = None  # (C,) float64, None for 2D-only caches
    stats_var: torch.Tensor | None = None

    @classmethod
    def of(cls, reader: CacheReader) -> CacheProvenance:
        m = reader.manifest
        mean = var = None
        if m.stats is not None:
            mean, var = (torch.from_numpy(np.asarray(x, np.float64)) for x in reader.global_stats())
        return cls(url=str(reader.url), fingerprint=m.fingerprint(), params_fingerprint=m.params_fingerprint(),
                   manifest_json=json.dumps(m.to_json(), sort_keys=True), stats_mean=mean, stats_var=var)

    @property
    def manifest(self) -> Manifest:
        return Manifest.from_json(json.loads(self.manifest_json))

    def to_state(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> CacheProvenance:
        return cls(**d)


@dataclass
class Checkpoint:
    iteration: int  # iterations completed
    total_iters: int
    config_json: str  # TrainConfig.to_json()
    student_config_json: str  # the StudentConfig the model was built with
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    discriminators: dict[str, torch.Tensor] | None = None
    disc_optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    loader_state_json: str = "{}"  # CacheLoader.state_dict() of the image loader
    feature_loader_state_json: str | None = None  # unpaired mode: the feature cache's loader
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    cache: CacheProvenance | None = None
    feature_cache: CacheProvenance | None = None  # unpaired mode
    world_size: int = 1

    @property
    def loader_state(self) -> dict:
        return json.loads(self.loader_state_json)

    @property
    def feature_loader_state(self) -> dict | None:
        return None if self.feature_loader_state_json is None else json.loads(self.feature_loader_state_json)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray | torch.Tensor):
        return v.tolist()
    raise TypeError(f"loader state holds a {type(v).__name__}, which a checkpoint cannot store as JSON")


def encode_state(state: dict) -> str:
    """A loader's state_dict as JSON (tuples become lists, numpy scalars Python numbers)."""
    return json.dumps(state, default=_jsonable, sort_keys=True)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write atomically: a temporary file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
    for name, value in vars(ckpt).items():
        payload[name] = value.to_state() if isinstance(value, CacheProvenance) else value
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint with `weights_only=True` (never unpickles code); clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, pickled objects, not a torch file at all
        raise CheckpointError(f"{path}: cannot be read as a distill-cache checkpoint ({type(e).__name__}: {e})") \
            from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a distill-cache student checkpoint (format {payload.get('format')!r})"
                              if isinstance(payload, dict) else f"{path}: not a distill-cache student checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {payload.get('format_version')} is not supported "
                              f"(this build reads {FORMAT_VERSION})")
    payload = {k: v for k, v in payload.items() if k not in ("format", "format_version")}
    for key in ("cache", "feature_cache"):
        if payload.get(key) is not None:
            payload[key] = CacheProvenance.from_state(payload[key])
    try:
        return Checkpoint(**payload)
    except TypeError as e:
        raise CheckpointError(f"{path}: malformed checkpoint: {e}") from e


def provenance_problems(recorded: CacheProvenance | None, reader: CacheReader, *, scope: str = "full") -> list[str]:
    """Differences between the cache a checkpoint recorded and `reader`'s; [] if they agree.

    scope="full" compares the whole fingerprint (resuming must see the same data); scope="params" compares how
    the content was made (teacher, projection, encoding, label space, dataset) but not the scene list, since
    evaluation normally runs on other scenes (the validation split) than training.
    """
    if recorded is None:
        return ["the checkpoint records no cache provenance"]
    m = reader.manifest
    same = m.fingerprint() == recorded.fingerprint if scope == "full" else \
        m.params_fingerprint() == recorded.params_fingerprint
    if same:
        return []
    try:
        diffs = manifest_differences(recorded.manifest, m)
    except Exception as e:  # a manifest this reader version cannot parse
        diffs = [f"(recorded manifest unreadable: {e})"]
    if scope == "params":
        diffs = [d for d in diffs if not d.startswith(("dataset.scenes", "dataset.input_fingerprint"))]
    head = (f"cache {reader.url} (fingerprint {m.fingerprint()[:12]}) differs from the one the checkpoint was "
            f"trained on: {recorded.url} (fingerprint {recorded.fingerprint[:12]})")
    return [head, *(diffs or ["(fingerprints differ; no field-level difference found)"])]


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, torch.Tensor]:
    """Global torch/CUDA/numpy/random states and any named generators, as tensors."""
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    out["numpy_keys"] = torch.from_numpy(np.asarray(keys, np.int64))
    out["numpy_meta"] = torch.tensor([pos, has_gauss], dtype=torch.int64)
    out["numpy_gauss"] = torch.tensor([gauss], dtype=torch.float64)
    version, state, py_gauss = random.getstate()
    out["python_state"] = torch.tensor(state, dtype=torch.int64)
    out["python_meta"] = torch.tensor([version], dtype=torch.int64)
    out["python_gauss"] = torch.tensor([float("nan") if py_gauss is None else py_gauss], dtype=torch.float64)
    for name, g in (generators or {}).items():
        out[f"gen:{name}"] = g.get_state()
    return out


def restore_rng(states: dict[str, torch.Tensor], generators: dict[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"].cpu())
    if "numpy_keys" in states:
        pos, has_gauss = (int(v) for v in states["numpy_meta"])
        np.random.set_state(("MT19937", states["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss,
                             float(states["numpy_gauss"][0])))
    if "python_state" in states:
        g = float(states["python_gauss"][0])
        random.setstate((int(states["python_meta"][0]), tuple(int(v) for v in states["python_state"]),
                         None if np.isnan(g) else g))
    for name, gen in (generators or {}).items():
        if f"gen:{name}" in states:
            gen.set_state(states[f"gen:{name}"].cpu())
