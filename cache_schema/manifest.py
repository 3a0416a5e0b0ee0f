"""The root manifest: everything that says what a cache holds and how it was made (root attributes, JSON)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import CacheError, ManifestError, SchemaVersionError
from .feature_codec import DEFAULT_FEATURE_DTYPE, check_feature_dtype
from .fingerprint import canonical_hash
from .moments import Moments

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = (1,)
FORMAT_NAME = "distill-cache"

_SCENE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def validate_scene_name(name: str) -> str:
    """Scene names become store paths: allow `a/b` with safe parts only (no `..`, no absolute, no odd bytes)."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ManifestError(f"invalid scene name {name!r}")
    parts = name.split("/")
    if any(not _SCENE_PART.match(p) or p in (".", "..") for p in parts):
        raise ManifestError(f"invalid scene name {name!r}: parts must match {_SCENE_PART.pattern}")
    return name


@dataclass
class DatasetInfo:
    name: str  # scannet | s3dis | nyu | ...
    label_space: dict  # cache_schema.labels.LabelSpace.to_json()
    scenes: list[str]  # every scene this cache is meant to hold, sorted
    split: str | None = None  # split file name or "explicit"
    input_fingerprint: str = ""  # hash over the per-scene input fingerprints

    def __post_init__(self) -> None:
        for s in self.scenes:
            validate_scene_name(s)


# The label-embedding control (SPEC §1): no network; each cell's feature is a fixed random embedding of its point's
# label. It fills the teacher fields that have no meaning for it with these values, so every reader reads it as is.
LABEL_EMBEDDING = "label-embedding"


@dataclass
class TeacherInfo:
    architecture: str  # or LABEL_EMBEDDING
    backend: str  # not part of the fingerprint: backends agree to 1e-4
    checkpoint_sha256: str  # or "random:<seed>", or "label-embedding:<seed>"
    voxel_size: float
    feature_layer: str
    channels: int

    @classmethod
    def label_embedding(cls, channels: int, seed: int) -> TeacherInfo:
        return cls(architecture=LABEL_EMBEDDING, backend="none", checkpoint_sha256=f"{LABEL_EMBEDDING}:{seed}",
                   voxel_size=0.0, feature_layer="point-label", channels=channels)


@dataclass
class ProjectionParams:
    stride: int = 8
    dilation: int = 1  # splat radius R: a point covers its (2R+1)^2 neighbourhood; 1 = the paper's 3x3
    depth_check: bool = True
    depth_abs_tol: float = 0.1  # metres
    depth_rel_tol: float = 0.05
    sampling: str = "pixel"  # pixel | cell
    image_size: list[int] | None = None  # [W, H] of stored images; None = the source size
    frame_skip: int = 1


@dataclass
class ImageEncoding:
    """The manifest's `encoding`: how images and (since `features` was added) teacher features are stored."""

    format: str = "jpeg"  # jpeg | raw (H*W*3 uint8, C order)
    quality: int = 90
    # float16 | uint8 (per-scene, per-channel affine code; cache_schema.feature_codec). Written to the manifest and
    # hashed only when not the default, so caches written before this field keep their fingerprint and read as float16.
    features: str = DEFAULT_FEATURE_DTYPE

    def __post_init__(self) -> None:
        check_feature_dtype(self.features)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if d["features"] == DEFAULT_FEATURE_DTYPE:
            del d["features"]
        return d


@dataclass
class GlobalStats:
    count: int
    mean: list[float]
    var: list[float]

    @classmethod
    def from_moments(cls, m: Moments) -> GlobalStats:
        return cls(m.count, m.mean.tolist(), m.var.tolist())


@dataclass
class Manifest:
    dataset: DatasetInfo
    projection: ProjectionParams
    encoding: ImageEncoding = field(default_factory=ImageEncoding)
    teacher: TeacherInfo | None = None  # None for 2D-only caches (images + labels, no features)
    stats: GlobalStats | None = None
    producer: dict = field(default_factory=dict)  # {"name": "distill-cache", "version": "..."}
    schema_version: int = SCHEMA_VERSION
    format: str = FORMAT_NAME

    @property
    def channels(self) -> int:
        return self.teacher.channels if self.teacher else 0

    def params_fingerprint(self) -> str:
        """Hash of how content is made (teacher weights, projection, encoding): equal for caches that may merge."""
        teacher = None
        if self.teacher is not None:
            teacher = {k: v for k, v in asdict(self.teacher).items() if k != "backend"}
        return canonical_hash({"schema_version": self.schema_version, "teacher": teacher,
                               "projection": asdict(self.projection), "encoding": self.encoding.to_json(),
                               "label_space": self.dataset.label_space, "dataset": self.dataset.name})

    def fingerprint(self) -> str:
        """Hash of everything that determines the content: the parameters plus the inputs and the scene list.

        Two labs with the same input files, checkpoint and parameters get the same fingerprint; producer version,
        backend, timestamps and statistics (derived from the content) are left out.
        """
        return canonical_hash({"params": self.params_fingerprint(), "scenes": sorted(self.dataset.scenes),
                               "inputs": self.dataset.input_fingerprint})

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["encoding"] = self.encoding.to_json()
        d["fingerprint"] = self.fingerprint()
        d["params_fingerprint"] = self.params_fingerprint()
        return d

    @classmethod
    def from_json(cls, d: Any) -> Manifest:
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise ManifestError("not a distill-cache store (root attribute format != 'distill-cache')")
        version = d.get("schema_version")
        if version not in SUPPORTED_VERSIONS:
            raise SchemaVersionError(
                f"cache schema_version {version!r} is not supported by this reader (supports {SUPPORTED_VERSIONS});"
                " upgrade distill-cache or re-extract the cache")
        try:
            m = cls(
                dataset=_build(DatasetInfo, d["dataset"]),
                projection=_build(ProjectionParams, d["projection"]),
                encoding=_build(ImageEncoding, d.get("encoding", {})),
                teacher=_build(TeacherInfo, d["teacher"]) if d.get("teacher") else None,
                stats=_build(GlobalStats, d["stats"]) if d.get("stats") else None,
                producer=dict(d.get("producer", {})),
                schema_version=int(version),
            )
        except (KeyError, TypeError) as e:
            raise ManifestError(f"malformed manifest: {e!r}") from e
        except ManifestError:
            raise
        except CacheError as e:  # e.g. an unknown encoding.features
            raise ManifestError(f"malformed manifest: {e}") from e
        stored = d.get("fingerprint")
        if stored is not None and stored != m.fingerprint():
            raise ManifestError(f"manifest fingerprint {stored} does not match its content ({m.fingerprint()}):"
                                " the manifest was edited or corrupted")
        return m


def _build(cls: type, d: Any) -> Any:
    if not isinstance(d, dict):
        raise ManifestError(f"malformed manifest: {cls.__name__} is not an object")
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ManifestError(f"malformed manifest: unknown keys {sorted(unknown)} in {cls.__name__}")
    return cls(**d)
