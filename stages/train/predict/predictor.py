"""Run a deployed student on plain images: RGB uint8 arrays of any size in, label maps at the same size out.

Stage two never opens a dataset or a file here: the caller (the CLI's `predict`) reads images, folders or a
`.sens` stream and hands over arrays. A `Predictor` normalizes them as the training loader does, runs the shared
inference path (`inference.py`: sliding window at the training crop by default, optional scales and flips) in a
runtime (PyTorch or onnxruntime) and returns training ids and stored ids (the label space's own: NYU40 ids for
ScanNet-20, as the datasets' label images hold them).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stages.train.checkpoint import load_checkpoint
from stages.train.predict.deployed import DeployedStudent, DeploymentInfo, sidecar_path
from stages.train.predict.inference import InferenceConfig, LogitsFn, WindowSpec, predict_probabilities, resolve_window
from stages.train.predict.runtime import OnnxRuntime, TorchRuntime

BaseSizeSpec = str | int | None  # "auto" (the training frames' long side when known), "native"/None, or pixels


@dataclass(frozen=True)
class PredictOptions:
    """How to run the student; resolved against the model (`resolve_inference`) into an `InferenceConfig`."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: WindowSpec = "crop"
    base_size: BaseSizeSpec = "auto"
    stride_rate: float = 2 / 3
    max_batch: int = 8


def resolve_inference(info: DeploymentInfo, opts: PredictOptions, fixed_size: tuple[int, int] | None = None,
                      max_batch: int | None = None) -> InferenceConfig:
    if opts.base_size == "auto":
        base = info.base_size
    elif opts.base_size in (None, "native"):
        base = None
    else:
        base = int(opts.base_size)
    return InferenceConfig(scales=tuple(opts.scales), flip=opts.flip,
                           window=resolve_window(opts.window, info.crop, fixed_size), stride_rate=opts.stride_rate,
                           base_size=base, max_batch=min(opts.max_batch, max_batch or opts.max_batch))


@dataclass
class Prediction:
    train_ids: np.ndarray  # (H, W) uint8 training ids (argmax of the averaged probabilities)
    labels: np.ndarray  # (H, W) uint8 stored ids of the label space (e.g. NYU40 ids)
    seconds: float  # this image's share of the wall time of the batch it was predicted in

    def class_fractions(self, names: Sequence[str]) -> dict[str, float]:
        """Classes present → fraction of the image's pixels, largest first."""
        counts = np.bincount(self.train_ids.ravel(), minlength=len(names))[: len(names)]
        order = np.argsort(-counts, kind="stable")
        return {names[i]: float(counts[i] / self.train_ids.size) for i in order if counts[i] > 0}


class Predictor:
    """A deployed student (in some runtime) with its `DeploymentInfo` and inference settings."""

    def __init__(self, runtime: LogitsFn, info: DeploymentInfo, cfg: InferenceConfig,
                 device: torch.device | str = "cpu") -> None:
        self.runtime, self.info, self.cfg = runtime, info, cfg
        self.device = torch.device(device)
        self._stored = info.label_space.stored_ids_table()
        self._mean = torch.tensor(info.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(info.std, device=self.device).view(1, 3, 1, 1) * 255.0

    @classmethod
    def from_checkpoint(cls, path: str | Path, opts: PredictOptions | None = None,
                        device: torch.device | str = "cpu") -> Predictor:
        ckpt = load_checkpoint(path, map_location="cpu")
        info = DeploymentInfo.of_checkpoint(ckpt)
        runtime = TorchRuntime(DeployedStudent.from_checkpoint(ckpt), device)
        return cls(runtime, info, resolve_inference(info, opts or PredictOptions()), device)

    @classmethod
    def from_onnx(cls, path: str | Path, opts: PredictOptions | None = None, threads: int | None = None) -> Predictor:
        info = DeploymentInfo.read(sidecar_path(path))
        runtime = OnnxRuntime(path, threads)
        return cls(runtime, info, resolve_inference(info, opts or PredictOptions(), runtime.fixed_size,
                                                    runtime.max_batch), "cpu")

    @property
    def runtime_name(self) -> str:
        return str(getattr(self.runtime, "name", type(self.runtime).__name__))

    def normalize(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Equal-sized RGB uint8 (H, W, 3) arrays → normalized float32 (B, 3, H, W) on the device."""
        x = torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2).float()
        return (x - self._mean) / self._std

    def probabilities(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Averaged softmax (B, K, H, W) of equal-sized RGB uint8 images."""
        return predict_probabilities(self.runtime, self.normalize(images), self.cfg)

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predictions for RGB uint8 images of any sizes (equal-sized ones share forward calls)."""
        for img in images:
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise ValueError(f"expected RGB uint8 images (H, W, 3), got {img.shape} {img.dtype}")
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape[:2], []).append(i)
        out: list[Prediction | None] = [None] * len(images)
        for idx in groups.values():
            t = time.perf_counter()
            ids = self.probabilities([images[i] for i in idx]).argmax(dim=1).to(torch.uint8).cpu().numpy()
            share = (time.perf_counter() - t) / len(idx)
            for i, train_ids in zip(idx, ids, strict=True):
                out[i] = Prediction(train_ids=train_ids, labels=self._stored[train_ids], seconds=share)
        return [p for p in out if p is not None]
