"""The driver of `distill-cache predict`: inputs → batches → a stage-two `Predictor` → files under --out.

For each image: ``labels/<name>.png`` (uint8 stored ids of the label space, e.g. NYU40 ids for ScanNet-20, as the
datasets' own label images) and ``overlays/<name>.png`` (the image blended with the class palette, with a legend);
at the end ``predictions.json``: per image its size, the classes present with their pixel fractions and its share
of the batch's seconds, the skipped inputs with their reasons, the model and the test protocol. Unreadable inputs
are counted, named skips. Every path written is checked to lie inside --out.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2

from pipeline.image_inputs import ImageInputs, InputImage
from pipeline.overlay import class_palette, overlay

LABELS_DIR, OVERLAYS_DIR, SUMMARY_FILE = "labels", "overlays", "predictions.json"


@dataclass
class PredictSummary:
    out: Path
    model: dict[str, Any]
    protocol: dict[str, Any]
    images: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "protocol": self.protocol,
                "counts": {"predicted": len(self.images), "skipped": len(self.skipped)},
                "seconds": round(self.seconds, 3), "images": self.images, "skipped": self.skipped}


class PredictionFiles:
    """Writes one image's label PNG and overlay PNG inside ``out``."""

    def __init__(self, out: Path, names: tuple[str, ...], overlays: bool = True) -> None:
        self.out, self.names, self.overlays = out, names, overlays
        self.root = out.resolve()
        self.palette = class_palette(len(names))

    def _path(self, folder: str, name: str) -> Path:
        path = self.out / folder / f"{name}.png"
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"refusing to write {path}: outside {self.out}")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def _write(path: Path, image) -> None:
        if not cv2.imwrite(str(path), image):
            raise OSError(f"cannot write {path}")

    def write(self, item: InputImage, prediction, fractions: dict[str, float]) -> dict[str, str]:
        label_path = self._path(LABELS_DIR, item.name)
        self._write(label_path, prediction.labels)
        written = {"labels": label_path.relative_to(self.out).as_posix()}
        if self.overlays:
            assert item.rgb is not None
            picture = overlay(item.rgb, prediction.train_ids, self.names, fractions, self.palette)
            overlay_path = self._path(OVERLAYS_DIR, item.name)
            self._write(overlay_path, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            written["overlay"] = overlay_path.relative_to(self.out).as_posix()
        return written


def run_predict(predictor, inputs: ImageInputs, out: str | Path, *, model: dict[str, Any], batch_size: int = 4,
                overlays: bool = True, progress: bool = True) -> PredictSummary:
    """Predict every readable image of ``inputs`` with ``predictor`` (a `stages.train.predict.Predictor`)."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = predictor.info.class_names
    files = PredictionFiles(out, names, overlays)
    summary = PredictSummary(out=out, model=model, protocol=predictor.cfg.describe())
    t0 = time.perf_counter()
    batch: list[InputImage] = []

    def flush() -> None:
        if not batch:
            return
        for item, pred in zip(batch, predictor.predict([b.rgb for b in batch]), strict=True):
            fractions = {k: round(v, 6) for k, v in pred.class_fractions(names).items()}
            h, w = pred.labels.shape
            summary.images.append({"name": item.name, "source": item.source, "width": w, "height": h,
                                   **files.write(item, pred, fractions), "classes": fractions,
                                   "seconds": round(pred.seconds, 4)})
        bar.update(len(batch))
        batch.clear()

    with tqdm(total=inputs.count(), desc="predict", unit="image", file=sys.stderr, disable=not progress) as bar:
        for item in inputs:
            if item.rgb is None:
                summary.skipped.append({"source": item.source, "reason": item.reason})
                bar.update(1)
                continue
            batch.append(item)
            if len(batch) >= batch_size:
                flush()
        flush()
    summary.seconds = time.perf_counter() - t0
    tmp = out / f".{SUMMARY_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(summary.to_json(), indent=1) + "\n")
    os.replace(tmp, out / SUMMARY_FILE)
    return summary
