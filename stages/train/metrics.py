"""Segmentation metrics with the ScanNet 2D benchmark's semantics, for any ``LabelSpace``.

A confusion matrix C[gt, pred] is accumulated over *stored* ids 0..255 (NYU40 ids 0..40 for ScanNet and NYU-v2,
S3DIS indices 0..12 with 255 unlabelled), at whatever resolution the caller gives (the ScanNet benchmark compares
at 640x480: resize predictions nearest-neighbour first). For each evaluated class l (the space's ``ids``):

    TP = C[l, l]
    FN = Σ_p C[l, p] − TP                 any other prediction, evaluated or not, unlabelled included
    FP = Σ_{g evaluated, g ≠ l} C[g, l]   ground truth outside the evaluated classes is ignored
    IoU = TP / (TP + FP + FN)             undefined (NaN) when the denominator is 0; mIoU skips those
    Acc = TP / (TP + FN)                  undefined without ground-truth pixels; mAcc skips those

pixel accuracy = Σ TP / Σ (TP + FN): the fraction of evaluated-class pixels predicted right.
Predictions arrive as training ids (0..K−1, mapped back to stored ids; 255 = no prediction) or as stored ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from cache_schema.labels import IGNORE, LabelSpace

NUM_IDS = 256  # stored ids are uint8


@dataclass
class SegmentationScores:
    names: tuple[str, ...]
    tp: np.ndarray  # (K,) int64
    fp: np.ndarray
    fn: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        den = self.tp + self.fp + self.fn
        return np.where(den > 0, self.tp / np.maximum(den, 1), np.nan)

    @property
    def acc(self) -> np.ndarray:
        den = self.tp + self.fn
        return np.where(den > 0, self.tp / np.maximum(den, 1), np.nan)

    @property
    def miou(self) -> float:
        iou = self.iou
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan

    @property
    def macc(self) -> float:
        acc = self.acc
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else math.nan

    @property
    def pixel_accuracy(self) -> float:
        den = int((self.tp + self.fn).sum())
        return float(self.tp.sum() / den) if den else math.nan

    def to_json(self) -> dict:
        def num(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {"miou": num(self.miou), "macc": num(self.macc), "pixel_accuracy": num(self.pixel_accuracy),
                "classes": {n: {"iou": num(i), "acc": num(a), "tp": int(t), "fp": int(p), "fn": int(f)}
                            for n, i, a, t, p, f in zip(self.names, self.iou, self.acc, self.tp, self.fp, self.fn,
                                                        strict=True)}}

    def table(self) -> str:
        """A per-class text table (IoU and accuracy in %, '-' where undefined) with the means below."""
        width = max(len(n) for n in (*self.names, "pixel accuracy"))

        def pct(x: float) -> str:
            return f"{100 * x:6.2f}" if not math.isnan(x) else "     -"

        lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
        lines += [f"{n:<{width}}  {pct(i)}  {pct(a)}" for n, i, a in zip(self.names, self.iou, self.acc, strict=True)]
        lines += [f"{'mean':<{width}}  {pct(self.miou)}  {pct(self.macc)}",
                  f"{'pixel accuracy':<{width}}  {pct(self.pixel_accuracy)}"]
        return "\n".join(lines)


class SegmentationMetric:
    """Accumulates C[gt, pred] over batches (``torch.bincount`` on the inputs' device)."""

    def __init__(self, space: LabelSpace, device: torch.device | str | None = None) -> None:
        self.space = space
        self.device = torch.device(device) if device is not None else None
        self.confusion: torch.Tensor | None = None
        lut = np.full(NUM_IDS, IGNORE, dtype=np.int64)
        lut[: space.num_classes] = space.ids  # training id -> stored id, 255 stays "no prediction"
        self._train_to_stored = torch.from_numpy(lut)

    def reset(self) -> None:
        self.confusion = None

    def _to_stored(self, x: torch.Tensor, kind: str, what: str) -> torch.Tensor:
        x = x.long()
        if kind == "train":
            bad = (x < 0) | ((x >= self.space.num_classes) & (x != IGNORE))
            if bool(bad.any()):
                raise ValueError(f"{what}: training ids must lie in 0..{self.space.num_classes - 1} or be "
                                 f"{IGNORE}, found {int(x[bad][0])}")
            return self._train_to_stored.to(x.device)[x]
        if kind != "stored":
            raise ValueError(f"{what}: id kind must be 'train' or 'stored', got {kind!r}")
        bad = (x < 0) | (x >= NUM_IDS)
        if bool(bad.any()):
            raise ValueError(f"{what}: stored ids must lie in 0..{NUM_IDS - 1}, found {int(x[bad][0])}")
        return x

    def update(self, pred: torch.Tensor, target: torch.Tensor, *, pred_ids: Literal["train", "stored"] = "train",
               target_ids: Literal["train", "stored"] = "stored") -> None:
        """Add a batch: ``pred`` and ``target`` of equal shape (e.g. (B,H,W)), ids of the given kinds.

        Ground truth given as training ids loses the stored id of non-evaluated pixels; that changes no score
        (they count in no TP, FP or FN) but the confusion matrix then files them under 255.
        """
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ in "
                             "shape; resize the prediction (nearest) to the ground truth first")
        p = self._to_stored(pred, pred_ids, "prediction").reshape(-1)
        g = self._to_stored(target, target_ids, "ground truth").reshape(-1)
        if self.device is not None:
            p, g = p.to(self.device), g.to(self.device)
        counts = torch.bincount(g * NUM_IDS + p, minlength=NUM_IDS * NUM_IDS).reshape(NUM_IDS, NUM_IDS)
        self.confusion = counts if self.confusion is None else self.confusion + counts.to(self.confusion.device)

    def confusion_matrix(self) -> np.ndarray:
        """C[gt, pred] over stored ids 0..255 (int64)."""
        if self.confusion is None:
            return np.zeros((NUM_IDS, NUM_IDS), np.int64)
        return self.confusion.cpu().numpy()

    def compute(self) -> SegmentationScores:
        c = self.confusion_matrix()
        ids = np.asarray(self.space.ids)
        tp = c[ids, ids]
        fn = c[ids].sum(axis=1) - tp
        fp = c[np.ix_(ids, ids)].sum(axis=0) - tp
        return SegmentationScores(names=self.space.names, tp=tp, fp=fp, fn=fn)
