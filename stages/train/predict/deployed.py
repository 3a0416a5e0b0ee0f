"""The student as deployed: rebuilt from a checkpoint, image in, logits out, and what a user needs to run it.

`DeployedStudent` is the trained student in eval mode for good: BatchNorm, DN1 and DN2 use their running
statistics, the auxiliary head is gone and nothing 3D is read (the discriminators live beside the model in the
checkpoint and are never loaded). Its architecture comes from the checkpoint's stored `StudentConfig`, never from
defaults here, so students of any shape the trainer makes load the same way.

`DeploymentInfo` is what travels with an exported model as its JSON sidecar: the label space and class names, the
input normalization, the training crop and frame size the inference path defaults to, and the provenance (the
cache fingerprints the student learnt from, the checkpoint's hash and iteration).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cache_schema import LabelSpace
from cache_schema.fingerprint import file_sha256
from stages.train.checkpoint import CacheProvenance, Checkpoint, CheckpointError
from stages.train.loader.augment import IMAGENET_MEAN, IMAGENET_STD
from stages.train.model.student import Student
from stages.train.trainer import student_config_from_json

SIDECAR_FORMAT = "distill-cache-deployed-student"
SIDECAR_VERSION = 1
DEFAULT_CROP = 473  # the paper's training crop, for checkpoints whose config does not say


def load_student(ckpt: Checkpoint, device: torch.device | str = "cpu") -> Student:
    """The student of a checkpoint in eval mode (DN1's 3D statistics come from the state_dict)."""
    student = Student(student_config_from_json(ckpt.student_config_json))
    student.load_state_dict(ckpt.model)
    return student.to(device).eval()


class DeployedStudent(nn.Module):
    """A trained student that only predicts: ``forward(image) -> logits`` (B, K, H, W), always in eval mode."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        student.pspnet.aux_head = None  # a training-time loss only: not part of the deployed network
        self.student = student
        self.num_classes = student.config.num_classes
        self.eval()

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device: torch.device | str = "cpu") -> DeployedStudent:
        return cls(load_student(ckpt, device))

    def train(self, mode: bool = True) -> DeployedStudent:
        # batch statistics would make a prediction depend on the rest of its batch: refuse training mode
        return super().train(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.student(image).logits


def _train_config_json(ckpt: Checkpoint) -> dict:
    # read leniently: a checkpoint from another version may carry config keys this one does not know
    try:
        config = json.loads(ckpt.config_json)
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def training_crop(ckpt: Checkpoint) -> int:
    """The side of the square crops the student was trained on (the default sliding window)."""
    return int(_train_config_json(ckpt).get("data", {}).get("crop", DEFAULT_CROP))


def training_mode(ckpt: Checkpoint) -> str:
    return str(_train_config_json(ckpt).get("mode", "?"))


def _provenance_json(p: CacheProvenance | None) -> dict | None:
    if p is None:
        return None
    return {"url": p.url, "fingerprint": p.fingerprint, "params_fingerprint": p.params_fingerprint}


@dataclass
class DeploymentInfo:
    """What a deployed student needs beside its weights (the exported model's sidecar; see the module docstring)."""

    label_space: LabelSpace
    crop: int  # the training crop: predict's default sliding window is crop × crop
    base_size: int | None  # long side of the training frames when the cache records it; None = unknown
    mode: str  # baseline | paired | unpaired | multitask
    iteration: int
    student_config: dict[str, Any]
    cache: dict | None  # {url, fingerprint, params_fingerprint} of the cache the student learnt from
    feature_cache: dict | None = None  # unpaired mode: the 3D feature cache
    checkpoint_sha256: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    export: dict[str, Any] = field(default_factory=dict)  # format, input size, runtime check (exported models)

    @classmethod
    def of_checkpoint(cls, ckpt: Checkpoint, path: str | Path | None = None) -> DeploymentInfo:
        if ckpt.cache is None:
            raise CheckpointError("the checkpoint records no training cache: its label space is unknown")
        manifest = ckpt.cache.manifest
        size = manifest.projection.image_size
        return cls(label_space=LabelSpace.from_json(manifest.dataset.label_space), crop=training_crop(ckpt),
                   base_size=max(size) if size else None, mode=training_mode(ckpt),
                   iteration=ckpt.iteration, student_config=json.loads(ckpt.student_config_json),
                   cache=_provenance_json(ckpt.cache), feature_cache=_provenance_json(ckpt.feature_cache),
                   checkpoint_sha256=file_sha256(path) if path is not None else None)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.label_space.names

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION,
            "label_space": self.label_space.to_json(), "classes": list(self.class_names),
            "input": {"name": "image", "layout": "NCHW", "channels": "RGB", "dtype": "float32",
                      "normalization": "(pixel / 255 - mean) / std", "mean": list(self.mean), "std": list(self.std)},
            "output": {"name": "logits", "layout": "NCHW", "size": "the input's; argmax over C = training id"},
            "crop": self.crop, "base_size": self.base_size,
            "provenance": {"cache": self.cache, "feature_cache": self.feature_cache,
                           "checkpoint_sha256": self.checkpoint_sha256, "iteration": self.iteration,
                           "mode": self.mode},
            "student_config": self.student_config, "export": self.export,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DeploymentInfo:
        if not isinstance(d, dict) or d.get("format") != SIDECAR_FORMAT:
            raise CheckpointError(f"not a {SIDECAR_FORMAT} sidecar")
        if d.get("format_version") != SIDECAR_VERSION:
            raise CheckpointError(f"sidecar format version {d.get('format_version')} is not supported "
                                  f"(this build reads {SIDECAR_VERSION})")
        prov = d["provenance"]
        return cls(label_space=LabelSpace.from_json(d["label_space"]), crop=int(d["crop"]),
                   base_size=None if d.get("base_size") is None else int(d["base_size"]), mode=str(prov["mode"]),
                   iteration=int(prov["iteration"]), student_config=dict(d["student_config"]), cache=prov["cache"],
                   feature_cache=prov.get("feature_cache"), checkpoint_sha256=prov.get("checkpoint_sha256"),
                   mean=tuple(d["input"]["mean"]), std=tuple(d["input"]["std"]), export=dict(d.get("export", {})))

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> DeploymentInfo:
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise CheckpointError(f"no sidecar {path}: `distill-cache export` writes it beside the model") from None
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: unreadable sidecar ({type(e).__name__}: {e})") from e


def sidecar_path(model_path: str | Path) -> Path:
    """An exported model's sidecar: MODEL + ".json" (student.onnx → student.onnx.json)."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")
