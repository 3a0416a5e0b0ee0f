"""Stage two's cache loader: blocks of frames → shuffled, augmented batches on the training device.

`CacheLoader` (loader.py) is the entry point; the other modules are its parts: the frame table and epoch order
(frames.py), block reading and prefetch threads (reader.py), geometric augmentation (augment.py), the sparse→dense
cell scatter (scatter.py) and reused pinned buffers with the side copy stream (pinned.py).
"""

from .loader import CacheLoader, LoaderConfig

__all__ = ["CacheLoader", "LoaderConfig"]
