"""`distill-cache evaluate-teacher`: score a trained 3D teacher on labelled scans, per class, against its voxel
ceiling, with the classes each one is mistaken for."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.commands.train_teacher import _load, _names


def confusions(conf: list[list[int]], names: list[str], top: int = 3) -> dict[str, dict[str, float]]:
    """For each class with points: the ``top`` other classes its points are predicted as, as fractions of its
    points (largest first; none below 0.5 %)."""
    out: dict[str, dict[str, float]] = {}
    for i, row in enumerate(conf):
        total = sum(row)
        if not total:
            continue
        others = sorted(((c, j) for j, c in enumerate(row) if j != i and c / total >= 0.005), reverse=True)[:top]
        out[names[i]] = {names[j]: round(c / total, 4) for c, j in others}
    return out


def format_table(report: dict) -> str:
    pct = lambda x: f"{100 * x:5.1f}" if x is not None else "    -"  # noqa: E731
    lines = [f"3D mIoU {100 * report['miou']:.1f} %  (voxel ceiling {100 * report['voxel_ceiling']['miou']:.1f} %)"
             f"  point accuracy {100 * report['accuracy']:.1f} %  {report['points']} points in "
             f"{report['scenes']} scenes", "",
             f"{'class':16s} {'IoU':>5s} {'ceil':>5s} {'points':>9s}  mistaken for"]
    for name, iou in report["iou"].items():
        n = report["class_points"].get(name, 0)
        mistaken = ", ".join(f"{k} {100 * v:.0f} %" for k, v in report["mistaken_for"].get(name, {}).items())
        lines.append(f"{name:16s} {pct(iou)} {pct(report['voxel_ceiling']['iou'].get(name))} {n:9d}  {mistaken}")
    return "\n".join(lines)


@click.command("evaluate-teacher")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="A teacher checkpoint (e.g. from `train-teacher`; its sidecar CHECKPOINT.json gives the "
              "architecture and voxel size).")
@click.option("--dataset", type=click.Choice(["scannet", "s3dis"]), required=True, help="Dataset format of ROOT.")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Dataset root (as for `extract`).")
@click.option("--scenes", help="Comma-separated scenes to score.")
@click.option("--split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File listing the scenes to score, one per line (e.g. ROOT/scannetv2_val.txt).")
@click.option("--architecture", help="Res16UNet variant (default: the sidecar's, else Res16UNet34C).")
@click.option("--voxel-size", type=float, help="Voxel edge in metres (default: the sidecar's, else 0.02).")
@click.option("--backend", type=click.Choice(["auto", "torch", "minkowski", "spconv"]), default="auto",
              show_default=True, help="Sparse-convolution backend.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout instead of the table.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(checkpoint: Path, dataset: str, root: Path, scenes: str | None, split_file: Path | None,
            architecture: str | None, voxel_size: float | None, backend: str, device: str, as_json: bool,
            quiet: bool) -> None:
    """Score a 3D teacher on ROOT's labelled scans: per-point 3D mIoU and per-class IoU (each point takes its
    voxel's prediction, or the point head's where the checkpoint has one), each class against its voxel ceiling
    (every point given its voxel's majority label: what no voxel classifier can beat at that voxel size), and the
    classes each class is mistaken for.

    \b
    A class far below its ceiling needs learning (steps, rooms, context); a class at its ceiling needs smaller
    voxels or `train-teacher --point-head`.
      distill-cache evaluate-teacher --checkpoint teacher.pth --dataset scannet --root world/ \\
        --split-file world/scannetv2_val.txt
    """
    import torch

    from cache_schema.labels import LABEL_SPACES
    from pipeline.extraction import teacher_geometry
    from stages.extract.teacher import TeacherConfig, load_teacher
    from stages.extract.teacher.train import evaluate_scenes, voxel_ceiling

    if scenes and split_file:
        raise click.UsageError("give --scenes or --split-file, not both")
    try:
        arch, voxel, _ = teacher_geometry(checkpoint, architecture, voxel_size)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    space, records = _load(dataset, root, _names(scenes), split_file, "evaluation", progress=not quiet)
    label_space = LABEL_SPACES[space]
    try:
        teacher = load_teacher(TeacherConfig(architecture=arch, voxel_size=voxel, backend=backend, device=device,
                                             num_classes=label_space.num_classes), checkpoint)
    except (ValueError, RuntimeError) as e:
        raise click.ClickException(f"{checkpoint}: {e}") from None
    if teacher.cfg.num_classes != label_space.num_classes:
        raise click.ClickException(f"{checkpoint} scores {teacher.cfg.num_classes} classes; {root} is labelled in "
                                   f"{space} ({label_space.num_classes} classes)")
    val = evaluate_scenes(teacher.net, teacher.ops, records, label_space, teacher.cfg, torch.device(device),
                          with_confusion=True)
    conf = val.pop("confusion")
    report = val | {"checkpoint": str(checkpoint), "architecture": arch, "voxel_size": voxel,
                    "point_head": bool(teacher.cfg.point_head), "scenes": len(records),
                    "class_points": {n: int(sum(row)) for n, row in zip(label_space.names, conf, strict=True)},
                    "voxel_ceiling": voxel_ceiling(records, label_space, voxel),
                    "mistaken_for": confusions(conf, list(label_space.names)), "confusion": conf}
    click.echo(json.dumps(report, indent=2) if as_json else format_table(report))
