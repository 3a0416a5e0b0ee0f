"""Errors a cache reader or writer raises. All are ValueErrors so a CLI can report them uniformly."""


class CacheError(ValueError):
    """Base class: something about a cache is wrong or does not match what the caller asked for."""


class SchemaVersionError(CacheError):
    """The cache was written with a schema version this reader does not understand."""


class ManifestError(CacheError):
    """The root manifest is missing, malformed or unsafe."""


class IncompleteSceneError(CacheError):
    """A scene group has no completion marker: it was never finished and must not be read as data."""


class FingerprintMismatchError(CacheError):
    """The cache's fingerprint differs from the one the caller expects (different inputs or parameters)."""
