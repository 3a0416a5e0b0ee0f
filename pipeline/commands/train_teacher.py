"""`distill-cache train-teacher`: train Res16UNet34C on a dataset's labelled 3D scans."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def _read_split(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    names = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not names:
        raise click.BadParameter(f"split file {path} lists no scenes")
    return names


def _names(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def _load(dataset: str, root: Path, scenes: list[str] | None, split_file: Path | None, what: str):
    from tqdm import tqdm

    from stages.extract.formats.registry import DatasetSpec, open_dataset

    if dataset == "s3dis" and split_file is not None:  # S3DIS has no official split files: read names here
        scenes, split_file = _read_split(split_file), None
    reader = open_dataset(DatasetSpec(name=dataset, root=root, scenes=tuple(scenes) if scenes else None,
                                      split_file=split_file))
    names = reader.scene_names()
    if not names:
        raise click.ClickException(f"no {what} scenes found under {root}")
    records = [reader.load_scene(n) for n in tqdm(names, desc=f"load {what}", unit="scene", file=sys.stderr)]
    return reader.label_space, records


@click.command("train-teacher")
@click.option("--dataset", type=click.Choice(["scannet", "s3dis"]), required=True, help="Dataset format of ROOT.")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Dataset root (as for `extract`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Checkpoint to write (.pth; a JSON sidecar with metrics is written next to it as OUT.json).")
@click.option("--scenes", help="Comma-separated training scenes (default: every scene under ROOT).")
@click.option("--split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File listing training scenes, one per line.")
@click.option("--val-scenes", help="Comma-separated held-out scenes for 3D mIoU.")
@click.option("--val-split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File listing held-out scenes, one per line.")
@click.option("--epochs", type=int, default=5, show_default=True, help="Passes over the training scenes.")
@click.option("--lr", type=float, default=0.05, show_default=True, help="Initial learning rate (poly decay).")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True,
              help="SGD with momentum 0.9 (as SpatioTemporalSegmentation) or Adam.")
@click.option("--max-points", type=int, default=60000, show_default=True,
              help="Random spatial crop per step, in points (0 = whole scenes); keeps CPU training feasible.")
@click.option("--architecture", default="Res16UNet34C", show_default=True, help="Res16UNet variant.")
@click.option("--voxel-size", type=float, default=0.02, show_default=True, help="Voxel edge in metres.")
@click.option("--backend", type=click.Choice(["auto", "torch", "minkowski", "spconv"]), default="auto",
              show_default=True, help="Sparse-convolution backend ('auto': minkowski where installed, else torch).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation, order and crops.")
def command(dataset: str, root: Path, out: Path, scenes: str | None, split_file: Path | None,
            val_scenes: str | None, val_split_file: Path | None, epochs: int, lr: float, optimizer: str,
            max_points: int, architecture: str, voxel_size: float, backend: str, device: str, seed: int) -> None:
    """Train the 3D teacher on ROOT's labelled scans and save it in MinkowskiEngine's state_dict layout.

    Reports per-epoch loss and, with held-out scenes, 3D mIoU; the checkpoint loads in `extract
    --teacher-checkpoint`.
    """
    from cache_schema.labels import LABEL_SPACES
    from stages.extract.teacher import TeacherConfig
    from stages.extract.teacher.train import train_teacher

    if scenes and split_file:
        raise click.UsageError("give --scenes or --split-file, not both")
    space, train_records = _load(dataset, root, _names(scenes), split_file, "training")
    val_records = []
    val_names = _names(val_scenes) or _read_split(val_split_file)
    if val_names:
        _, val_records = _load(dataset, root, val_names, None, "validation")
        overlap = {r.name for r in val_records} & {r.name for r in train_records}
        if overlap:
            raise click.UsageError(f"scenes both trained on and held out: {', '.join(sorted(overlap))}")
    cfg = TeacherConfig(architecture=architecture, voxel_size=voxel_size, backend=backend, device=device)
    report = train_teacher(train_records, val_records, LABEL_SPACES[space], cfg, epochs=epochs, lr=lr, seed=seed,
                           out=out, max_points=max_points, optimizer=optimizer)
    summary = {"checkpoint": report["checkpoint"], "checkpoint_sha256": report["checkpoint_sha256"],
               "final_loss": report["history"][-1]["loss"] if report["history"] else None,
               "val_miou": report["val"]["miou"] if report["val"] else None, "seconds": round(report["seconds"], 1)}
    click.echo(json.dumps(summary, indent=2))
