"""The one error type every dataset format module raises on malformed input."""


class FormatError(ValueError):
    """Input that does not follow its dataset's on-disk format; the message names the file (and frame)."""
