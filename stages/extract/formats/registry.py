"""Open a dataset reader by name, so the CLI and the extraction workers build readers the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .common import DatasetReader

DATASETS = ("scannet", "s3dis", "nyu")


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to (re)open a dataset reader, in any process."""

    name: str
    root: Path
    scenes: tuple[str, ...] | None = None
    split_file: Path | None = None
    label_map: Path | None = None
    layout: str = "sens"  # ScanNet: sens | export | 25k
    split: str = "train"  # NYU: train | test | all


def open_dataset(spec: DatasetSpec) -> DatasetReader:
    scenes = list(spec.scenes) if spec.scenes else None
    if spec.name == "scannet":
        from .scannet import ScanNetDataset

        return ScanNetDataset(spec.root, scenes=scenes, split_file=spec.split_file, label_map=spec.label_map,
                              layout=spec.layout)
    if spec.name == "s3dis":
        from .s3dis import S3DISDataset

        return S3DISDataset(spec.root, scenes=scenes)
    if spec.name == "nyu":
        from .nyu import NYUDataset

        return NYUDataset(spec.root, split=spec.split)
    raise ValueError(f"unknown dataset {spec.name!r}; choose one of {', '.join(DATASETS)}")
