"""The cache schema: the one contract between stage one (extract) and stage two (train). See SPEC.md."""

from .errors import CacheError, FingerprintMismatchError, IncompleteSceneError, ManifestError, SchemaVersionError
from .labels import IGNORE, LABEL_SPACES, S3DIS13, SCANNET20, LabelSpace
from .layout import grid_shape
from .manifest import (
                     LABEL_EMBEDDING,
                     SCHEMA_VERSION,
                     DatasetInfo,
                     GlobalStats,
                     ImageEncoding,
                     Manifest,
                     ProjectionParams,
                     TeacherInfo,
                     validate_scene_name,
)
from .moments import Moments, merge_all
from .reader import CacheReader, SceneReader, open_cache
from .records import CachedFrame, FrameBlock
from .writer import CacheWriter, SceneSummary, SceneWriter, manifest_differences

__all__ = [
    "CacheError", "FingerprintMismatchError", "IncompleteSceneError", "ManifestError", "SchemaVersionError",
    "IGNORE", "LABEL_EMBEDDING", "LABEL_SPACES", "S3DIS13", "SCANNET20", "LabelSpace", "grid_shape", "SCHEMA_VERSION",
    "DatasetInfo", "GlobalStats", "ImageEncoding", "Manifest", "ProjectionParams", "TeacherInfo",
    "validate_scene_name", "Moments", "merge_all", "CacheReader", "SceneReader", "open_cache", "CachedFrame",
    "FrameBlock", "CacheWriter", "SceneSummary", "SceneWriter", "manifest_differences",
]
