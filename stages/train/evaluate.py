"""Evaluate a trained student on a cache: the deployed model sees images only (no 3D input, ever).

Metrics are `stages.train.metrics` (ScanNet 2D benchmark semantics; S3DIS's 13 classes; NYU-v2 on the 20 ScanNet
classes). Ground truth and predictions are compared at ``compare_size``: 640×480 (nearest) for the NYU40/ScanNet
label space as the benchmark does, the stored size otherwise. Optional multi-scale and flip testing averages the
softmax probabilities at the input size. Predictions can be written as PNGs of stored ids (NYU40 ids for ScanNet).

Provenance: a checkpoint is refused on a cache made with other parameters (teacher, projection, encoding, label
space, dataset) unless ``force``; the scene list may differ (evaluation runs on the validation split).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cache_schema import CacheReader, LabelSpace, open_cache
from cache_schema.labels import IGNORE, SCANNET20
from stages.train.checkpoint import Checkpoint, ProvenanceError, load_checkpoint, provenance_problems
from stages.train.metrics import SegmentationMetric, SegmentationScores
from stages.train.model.student import Student
from stages.train.trainer import resolve_device, student_config_from_json

SCANNET_BENCHMARK_SIZE = (480, 640)  # (H, W) at which the ScanNet 2D benchmark compares label maps


@dataclass
class EvalConfig:
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    batch_size: int = 4
    workers: int = 2
    device: str = "auto"
    compare_size: tuple[int, int] | None | str = "auto"  # (H, W); None = stored size; "auto" = per label space

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class EvalResult:
    scores: SegmentationScores
    frames: int
    label_space: LabelSpace
    compare_size: tuple[int, int] | None
    checkpoint: str
    cache: str
    iteration: int
    mode: str
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"checkpoint": self.checkpoint, "cache": self.cache, "iteration": self.iteration, "mode": self.mode,
                "label_space": self.label_space.name, "frames": self.frames,
                "compare_size": list(self.compare_size) if self.compare_size else None, **self.scores.to_json(),
                "warnings": self.warnings}


@dataclass
class ImageOnlyBatch:
    """What evaluation keeps of a loader batch: the image the deployed model sees, the ground truth and the frame
    identity. The 3D side (features, mask, depth) is dropped on arrival, so no code path here can read it."""

    image: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor


def load_student(ckpt: Checkpoint, device: torch.device | str = "cpu") -> Student:
    """The student of a checkpoint in eval mode (DN1's 3D statistics come from the state_dict)."""
    student = Student(student_config_from_json(ckpt.student_config_json))
    student.load_state_dict(ckpt.model)
    return student.to(device).eval()


@torch.no_grad()
def predict_probabilities(model: Student, image: torch.Tensor, scales: tuple[float, ...] = (1.0,),
                          flip: bool = False) -> torch.Tensor:
    """Softmax probabilities (B, K, H, W) averaged over scales (and horizontal flips) at the input size."""
    size = image.shape[-2:]
    total = None
    for s in scales:
        x = image if s == 1.0 else F.interpolate(
            image, (max(8, round(size[0] * s)), max(8, round(size[1] * s))), mode="bilinear", align_corners=True)
        views = [(x, False), (x.flip(-1), True)] if flip else [(x, False)]
        for v, flipped in views:
            logits = model(v).logits.float()
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size, mode="bilinear", align_corners=True)
            p = logits.softmax(dim=1)
            total = p if total is None else total + p
    return total / (len(scales) * (2 if flip else 1))


def resolve_compare_size(spec: tuple[int, int] | None | str, space: LabelSpace) -> tuple[int, int] | None:
    if spec == "auto":
        return SCANNET_BENCHMARK_SIZE if space.ids == SCANNET20.ids else None
    if spec == "native":
        return None
    return spec  # type: ignore[return-value]


def _resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) integer maps resized nearest-neighbour (exact for equal sizes)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[:, None].float(), size, mode="nearest")[:, 0].long()


class PredictionWriter:
    """PNGs of stored ids (uint8) at DIR/<scene>/<frame_id>.png."""

    def __init__(self, root: Path, reader: CacheReader, frame_table: list[tuple[str, int]], space: LabelSpace):
        self.root, self.reader, self.frame_table = root, reader, frame_table
        lut = np.full(256, IGNORE, np.uint8)
        lut[: space.num_classes] = space.ids
        self.lut = lut
        self.frame_ids: dict[str, np.ndarray] = {}

    def write(self, pred: torch.Tensor, index: torch.Tensor) -> None:
        import cv2

        for p, i in zip(pred.cpu().numpy(), index.cpu().tolist(), strict=True):
            scene, k = self.frame_table[i]
            if scene not in self.frame_ids:
                self.frame_ids[scene] = self.reader.scene(scene).frame_id
            path = self.root / scene / f"{int(self.frame_ids[scene][k]):06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), self.lut[p.astype(np.int64)]):
                raise OSError(f"cannot write prediction {path}")


def evaluate(checkpoint: str | Path, cache: str | Path, cfg: EvalConfig | None = None, *, force: bool = False,
             save_predictions: str | Path | None = None, scenes: list[str] | None = None, progress: bool = True,
             echo: Callable[[str], None] | None = None) -> EvalResult:
    """Run the checkpoint's student over every frame of the cache once and score it."""
    from tqdm import tqdm

    from stages.train.loader import CacheLoader, LoaderConfig

    cfg = cfg or EvalConfig()
    echo = echo or (lambda m: print(m, file=sys.stderr))
    device = resolve_device(cfg.device)
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    reader = open_cache(cache)
    warnings: list[str] = []
    problems = provenance_problems(ckpt.cache, reader, scope="params")
    if problems:
        text = "\n  ".join(problems)
        if not force:
            raise ProvenanceError(f"refusing to evaluate on a cache made differently from the training cache "
                                  f"(pass --force to evaluate anyway):\n  {text}")
        warnings.append(text)
        echo(f"warning: evaluating on a differently made cache (--force):\n  {text}")
    space = LabelSpace.from_json(reader.manifest.dataset.label_space)
    model = load_student(ckpt, device)
    if model.config.num_classes != space.num_classes:
        raise ProvenanceError(f"{checkpoint}: the model predicts {model.config.num_classes} classes, the cache's "
                              f"label space {space.name} has {space.num_classes}: they cannot be compared (even with "
                              "--force)")
    compare = resolve_compare_size(cfg.compare_size, space)
    metric = SegmentationMetric(space, device=device)
    lcfg = LoaderConfig(batch_size=cfg.batch_size, train=False, drop_last=False, workers=cfg.workers)
    frames = 0
    with CacheLoader(reader, lcfg, device=device, scenes=scenes) as loader:
        writer = (PredictionWriter(Path(save_predictions), reader, loader.frame_table, space)
                  if save_predictions else None)
        for raw in tqdm(loader, total=len(loader), desc="evaluate", unit="batch", file=sys.stderr,
                        disable=not progress):
            batch = ImageOnlyBatch(image=raw.image, labels=raw.labels, index=raw.index)
            del raw
            pred = predict_probabilities(model, batch.image, cfg.scales, cfg.flip).argmax(dim=1)
            labels = batch.labels
            if compare is not None:
                pred, labels = _resize_nearest(pred, compare), _resize_nearest(labels, compare)
            metric.update(pred, labels, pred_ids="train", target_ids="train")
            if writer is not None:
                writer.write(pred, batch.index)
            frames += batch.image.shape[0]
    cfg_mode = _mode_of(ckpt)
    return EvalResult(scores=metric.compute(), frames=frames, label_space=space, compare_size=compare,
                      checkpoint=str(checkpoint), cache=str(reader.url), iteration=ckpt.iteration, mode=cfg_mode,
                      warnings=warnings)


def _mode_of(ckpt: Checkpoint) -> str:
    import json

    try:
        return str(json.loads(ckpt.config_json).get("mode", "?"))
    except (ValueError, AttributeError):
        return "?"


def format_result(result: EvalResult) -> str:
    """The per-class table and the summary line printed by `distill-cache evaluate`."""
    s = result.scores
    size = f"{result.compare_size[1]}x{result.compare_size[0]}" if result.compare_size else "stored size"

    def pct(x: float) -> str:
        return "-" if math.isnan(x) else f"{100 * x:.2f}"

    return (f"{result.label_space.name}: {result.frames} frames compared at {size} ({result.mode} model, "
            f"iteration {result.iteration})\n{s.table()}\n"
            f"mIoU {pct(s.miou)}  mAcc {pct(s.macc)}  pixel accuracy {pct(s.pixel_accuracy)}")
