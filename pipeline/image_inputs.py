"""What `distill-cache predict` reads: image files, folders of them, and ScanNet `.sens` streams, as plain images.

Each input yields `InputImage`s: a unique output name (relative, no '..': outputs stay inside --out), where it
came from, and the RGB uint8 pixels, or None with the reason when they cannot be read (a counted, named skip for
the caller, never an exception). A `.sens` is streamed through stage one's reader (`formats.scannet_sens`), one
frame in memory at a time, every ``frame_skip``-th frame; stage two only ever sees the decoded arrays.

Names: a file → its stem; a folder → folder/relative/path (no suffix, searched recursively); a `.sens` → its
stem/frame-NNNNNN. A name already taken gets -2, -3, ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SENS_SUFFIX = ".sens"


@dataclass
class InputImage:
    name: str  # output name, unique within the run, '/'-separated
    source: str  # the file, or "file.sens:frame N"
    rgb: np.ndarray | None  # (H, W, 3) uint8, None when it could not be read
    reason: str = ""  # why rgb is None


def read_rgb(path: Path) -> np.ndarray | None:
    """An image file as RGB uint8, EXIF orientation applied; None when it does not decode."""
    try:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    if bgr is None or bgr.size == 0:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _folder_images(folder: Path, exclude: Path | None) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))
    if exclude is None:
        return found
    return [p for p in found if not p.resolve().is_relative_to(exclude)]


class ImageInputs:
    """The images of INPUT paths (files, folders, `.sens`), in the order given; see the module docstring.

    ``exclude``: a folder whose images are never inputs (the output folder, when it lies inside an input folder).
    """

    def __init__(self, paths: Sequence[str | Path], frame_skip: int = 1, exclude: str | Path | None = None) -> None:
        if frame_skip < 1:
            raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
        self.paths = [Path(p) for p in paths]
        self.frame_skip = frame_skip
        self.exclude = Path(exclude).resolve() if exclude is not None else None
        self._taken: set[str] = set()

    def count(self) -> int:
        """How many images the inputs hold (a `.sens` counts its selected frames): the progress bar's total."""
        from stages.extract.formats.errors import FormatError
        from stages.extract.formats.scannet_sens import SensFile

        total = 0
        for p in self.paths:
            if p.is_dir():
                total += len(_folder_images(p, self.exclude))
            elif p.suffix.lower() == SENS_SUFFIX:
                try:
                    total += -(-SensFile(p).num_frames // self.frame_skip)
                except FormatError:
                    total += 1  # reported as one skip
            else:
                total += 1
        return total

    def _unique(self, name: str) -> str:
        parts = [s for s in name.replace("\\", "/").split("/") if s not in ("", ".", "..")]
        base = "/".join(parts) or "image"
        name, k = base, 1
        while name in self._taken:
            k += 1
            name = f"{base}-{k}"
        self._taken.add(name)
        return name

    def _file(self, path: Path, name: str) -> InputImage:
        rgb = read_rgb(path)
        return InputImage(self._unique(name), str(path), rgb, "" if rgb is not None else "unreadable or corrupt image")

    def _sens(self, path: Path) -> Iterator[InputImage]:
        from stages.extract.formats.errors import FormatError
        from stages.extract.formats.scannet_sens import SensFile

        try:
            sens = SensFile(path)
            for raw in sens.raw_frames(self.frame_skip):
                rgb = sens.decode_color(raw)  # the pose does not matter here: lost tracking is still an image
                yield InputImage(self._unique(f"{path.stem}/frame-{raw.index:06d}"), f"{path}:frame {raw.index}",
                                 rgb, "" if rgb is not None else "corrupt colour frame")
        except FormatError as e:
            yield InputImage(self._unique(f"{path.stem}/unreadable"), str(path), None, f"unreadable .sens: {e}")

    def __iter__(self) -> Iterator[InputImage]:
        self._taken = set()
        for p in self.paths:
            if p.is_dir():
                for f in _folder_images(p, self.exclude):
                    yield self._file(f, f"{p.resolve().name}/{f.relative_to(p).with_suffix('').as_posix()}")
            elif p.suffix.lower() == SENS_SUFFIX:
                yield from self._sens(p)
            else:
                yield self._file(p, p.stem)
