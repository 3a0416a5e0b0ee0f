"""Evaluate a trained student on a cache: the deployed model sees images only (no 3D input, ever).

Metrics are `stages.train.metrics` (ScanNet 2D benchmark semantics; S3DIS's 13 classes; NYU-v2 on the 20 ScanNet
classes). Ground truth and predictions are compared at ``compare_size``: 640×480 (nearest) for the NYU40/ScanNet
label space as the benchmark does, the stored size otherwise. Predictions come from the inference path `predict`
shares (`stages.train.predict.inference`): the whole frame at once by default (the paper's protocol), or sliding
windows of the training crop (``window="crop"``), each optionally over several scales and flips (the authors'
release tests scales 0.5-1.75 with flips). Predictions can be written as PNGs of stored ids (NYU40 ids for ScanNet).

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
from cache_schema.labels import SCANNET20
from stages.train.checkpoint import ProvenanceError, load_checkpoint, provenance_problems
from stages.train.metrics import SegmentationMetric, SegmentationScores
from stages.train.predict.deployed import DeployedStudent, training_crop, training_mode
from stages.train.predict.inference import InferenceConfig, WindowSpec, predict_probabilities, resolve_window
from stages.train.trainer import resolve_device

SCANNET_BENCHMARK_SIZE = (480, 640)  # (H, W) at which the ScanNet 2D benchmark compares label maps


@dataclass
class EvalConfig:
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: WindowSpec = "whole"  # "whole" frame (the paper's protocol), "crop" (training crop, semseg's) or (H, W)
    stride_rate: float = 2 / 3  # sliding-window step as a fraction of the window
    batch_size: int = 4
    workers: int = 2
    device: str = "auto"
    compare_size: tuple[int, int] | None | str = "auto"  # (H, W); None = stored size; "auto" = per label space

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def inference(self, crop: int) -> InferenceConfig:
        """The shared inference path's settings for a student trained on crop × crop crops."""
        return InferenceConfig(scales=tuple(self.scales), flip=self.flip,
                               window=resolve_window(self.window, crop, None), stride_rate=self.stride_rate,
                               max_batch=2 * self.batch_size)


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
    protocol: dict = field(default_factory=dict)  # InferenceConfig.describe(): scales, flip, window

    def to_json(self) -> dict:
        return {"checkpoint": self.checkpoint, "cache": self.cache, "iteration": self.iteration, "mode": self.mode,
                "label_space": self.label_space.name, "frames": self.frames,
                "compare_size": list(self.compare_size) if self.compare_size else None, "protocol": self.protocol,
                **self.scores.to_json(), "warnings": self.warnings}


@dataclass
class ImageOnlyBatch:
    """What evaluation keeps of a loader batch: the image the deployed model sees, the ground truth and the frame
    identity. The 3D side (features, mask, depth) is dropped on arrival, so no code path here can read it."""

    image: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor


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
        self.lut = space.stored_ids_table()
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


def score_frames(forward: Callable[[torch.Tensor], torch.Tensor], reader: CacheReader, space: LabelSpace,
                 inference: InferenceConfig, compare: tuple[int, int] | None, *, device: torch.device,
                 batch_size: int = 4, workers: int = 2, scenes: list[str] | None = None,
                 save_predictions: str | Path | None = None, progress: bool = True,
                 desc: str = "evaluate") -> tuple[SegmentationScores, int]:
    """Score ``forward`` (images → logits, in eval mode) over every frame of ``reader`` once: the one scoring loop
    of `evaluate` and of the validation curve `train` records (``log.val_every``)."""
    from tqdm import tqdm

    from stages.train.loader import CacheLoader, LoaderConfig

    metric = SegmentationMetric(space, device=device)
    lcfg = LoaderConfig(batch_size=batch_size, train=False, drop_last=False, workers=workers)
    frames = 0
    with CacheLoader(reader, lcfg, device=device, scenes=scenes) as loader:
        writer = (PredictionWriter(Path(save_predictions), reader, loader.frame_table, space)
                  if save_predictions else None)
        for raw in tqdm(loader, total=len(loader), desc=desc, unit="batch", file=sys.stderr, disable=not progress):
            batch = ImageOnlyBatch(image=raw.image, labels=raw.labels, index=raw.index)
            del raw
            pred = predict_probabilities(forward, batch.image, inference).argmax(dim=1)
            labels = batch.labels
            if compare is not None:
                pred, labels = _resize_nearest(pred, compare), _resize_nearest(labels, compare)
            metric.update(pred, labels, pred_ids="train", target_ids="train")
            if writer is not None:
                writer.write(pred, batch.index)
            frames += batch.image.shape[0]
    return metric.compute(), frames


def evaluate(checkpoint: str | Path, cache: str | Path, cfg: EvalConfig | None = None, *, force: bool = False,
             save_predictions: str | Path | None = None, scenes: list[str] | None = None, progress: bool = True,
             echo: Callable[[str], None] | None = None) -> EvalResult:
    """Run the checkpoint's student over every frame of the cache once and score it."""
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
    model = DeployedStudent.from_checkpoint(ckpt, device)
    if model.num_classes != space.num_classes:
        raise ProvenanceError(f"{checkpoint}: the model predicts {model.num_classes} classes, the cache's "
                              f"label space {space.name} has {space.num_classes}: they cannot be compared (even with "
                              "--force)")
    compare = resolve_compare_size(cfg.compare_size, space)
    inference = cfg.inference(training_crop(ckpt))
    scores, frames = score_frames(model, reader, space, inference, compare, device=device, batch_size=cfg.batch_size,
                                  workers=cfg.workers, scenes=scenes, save_predictions=save_predictions,
                                  progress=progress)
    return EvalResult(scores=scores, frames=frames, label_space=space, compare_size=compare,
                      checkpoint=str(checkpoint), cache=str(reader.url), iteration=ckpt.iteration,
                      mode=training_mode(ckpt), warnings=warnings, protocol=inference.describe())


def format_result(result: EvalResult) -> str:
    """The per-class table and the summary line printed by `distill-cache evaluate`."""
    s = result.scores
    size = f"{result.compare_size[1]}x{result.compare_size[0]}" if result.compare_size else "stored size"

    def pct(x: float) -> str:
        return "-" if math.isnan(x) else f"{100 * x:.2f}"

    protocol = result.protocol.get("summary", "?")
    return (f"{result.label_space.name}: {result.frames} frames compared at {size} ({result.mode} model, "
            f"iteration {result.iteration}; {protocol})\n{s.table()}\n"
            f"mIoU {pct(s.miou)}  mAcc {pct(s.macc)}  pixel accuracy {pct(s.pixel_accuracy)}")
