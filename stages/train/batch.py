"""The batch the cache loader hands the trainer: plain tensors, already on the target device."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    image: torch.Tensor  # (B, 3, H, W) float32, normalized with ImageNet mean/std
    labels: torch.Tensor  # (B, H, W) int64 training ids, 255 = ignore
    features: torch.Tensor  # (B, C, H/8, W/8) float32 cached 3D features scattered to the output grid (0 if empty)
    feature_mask: torch.Tensor  # (B, H/8, W/8) bool: a cached cell landed here
    feature_labels: torch.Tensor  # (B, H/8, W/8) int64 training id of the cell's 3D point, 255 where empty
    depth: torch.Tensor  # (B, H/8, W/8) float32 camera depth of the cell's point (metres), 0 where empty
    index: torch.Tensor  # (B,) int64 global frame index in the loader's frame table (for resume / debugging)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(**{k: getattr(self, k).to(device, non_blocking=non_blocking) for k in self.__dataclass_fields__})
