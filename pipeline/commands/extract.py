"""`distill-cache extract`: stage one over a dataset root into a cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from pipeline.cli import package_version
from pipeline.options import parse_scene_list, parse_size


@click.command("extract")
@click.option("--dataset", type=click.Choice(["scannet", "s3dis", "nyu"]), required=True,
              help="Dataset format of ROOT.")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Dataset root as it sits on disk (e.g. the folder holding scans/ for ScanNet).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Cache directory (created, or resumed if it holds a cache with the same fingerprint).")
@click.option("--split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Official split file (one scene name per line).")
@click.option("--scenes", help="Explicit comma-separated scene list (instead of a split file).")
@click.option("--label-map", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="ScanNet label table (default ROOT/scannetv2-labels.combined.tsv).")
@click.option("--layout", type=click.Choice(["sens", "export", "25k"]), default="sens", show_default=True,
              help="ScanNet on-disk layout.")
@click.option("--nyu-split", type=click.Choice(["train", "test", "all"]), default="train", show_default=True,
              help="NYU-v2 split to ingest (2D only: images and labels, no features).")
@click.option("--teacher", "teacher_kind", type=click.Choice(["checkpoint", "label-embedding"]), default="checkpoint",
              show_default=True,
              help="checkpoint: the 3D network of --teacher-checkpoint. label-embedding: a control with no network and "
              "no checkpoint; each cell's feature is a fixed random non-negative embedding of its point's class "
              "(zeros for unlabelled/ignored points): the 2D labels' information and none of the geometry.")
@click.option("--teacher-checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Res16UNet34C state_dict (.pth, loaded with weights_only=True, or .safetensors).")
@click.option("--teacher-init", type=click.Choice(["checkpoint", "random"]), default="checkpoint",
              show_default=True, help="'random' = seeded random weights, for debugging and benchmarks.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --teacher-init random.")
@click.option("--embedding-channels", type=int, default=96, show_default=True,
              help="--teacher label-embedding: feature channels (96 = the Res16UNet block8 width).")
@click.option("--embedding-seed", type=int, default=0, show_default=True,
              help="--teacher label-embedding: seed of the embedding matrix.")
@click.option("--backend", type=click.Choice(["auto", "torch", "minkowski", "spconv"]), default="auto",
              show_default=True, help="Sparse-convolution backend of the teacher.")
@click.option("--device", default="cpu", show_default=True,
              help="Teacher device (cpu, cuda, cuda:1...). With --workers N > 1 and cuda: one dask worker process "
              "per visible GPU, worker i pinned to GPU i mod G (cuda:K: all on GPU K).")
@click.option("--layer", default="block8", show_default=True, help="Teacher layer whose features are cached.")
@click.option("--architecture", help="Res16UNet variant of the checkpoint (default: from the checkpoint's "
              "train-teacher sidecar CKPT.json when present, else Res16UNet34C).")
@click.option("--voxel-size", type=float, help="Teacher voxel edge in metres (default: the sidecar's, else 0.02).")
@click.option("--frame-skip", type=int, default=1, show_default=True, help="Use every N-th frame (20, 100 common).")
@click.option("--stride", type=int, default=8, show_default=True, help="Keep one cell every K pixels.")
@click.option("--dilation", type=int, default=1, show_default=True,
              help="Splat radius R in pixels: a point covers its (2R+1)x(2R+1) neighbourhood under the z-buffer. "
              "1 (3x3) is what the paper did; 0 projects each point onto one pixel.")
@click.option("--depth-check/--no-depth-check", default=True, show_default=True,
              help="Drop points whose depth disagrees with the sensor depth.")
@click.option("--depth-abs-tol", type=float, default=0.1, show_default=True, help="Depth check: metres.")
@click.option("--depth-rel-tol", type=float, default=0.05, show_default=True, help="Depth check: fraction.")
@click.option("--sampling", type=click.Choice(["pixel", "cell"]), default="pixel", show_default=True,
              help="pixel: the point at pixel (K*i, K*j) (the paper); cell: nearest point in each KxK cell.")
@click.option("--image-size", help="Store images resized to WxH (intrinsics scaled), e.g. 640x480.")
@click.option("--image-format", type=click.Choice(["jpeg", "raw"]), default="jpeg", show_default=True)
@click.option("--jpeg-quality", type=int, default=90, show_default=True)
@click.option("--feature-dtype", type=click.Choice(["float16", "uint8"]), default="float16", show_default=True,
              help="How teacher features are stored. uint8 is lossy and ~2x smaller: per scene and channel an affine "
              "code over the channel's range (scale = (max - min) / 255), max error scale/2 per channel; readers "
              "still get float16. Part of the fingerprint. Ignored for 2D-only caches.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Scenes in parallel on a local dask cluster (1 = in-process). With --device cuda each worker is "
              "pinned to one GPU: N = the GPU count gives one worker per GPU, 2x that two per GPU.")
@click.option("--scheduler", help="Address of a running dask scheduler (tcp://host:8786) to use instead; with "
              "--device cuda, scenes ask its workers for one GPU resource each (start them with --resources GPU=1).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def command(dataset, root, out, split_file, scenes, label_map, layout, nyu_split, teacher_kind, teacher_checkpoint,
            teacher_init, seed, embedding_channels, embedding_seed, backend, device, layer, architecture, voxel_size,
            frame_skip, stride, dilation, depth_check, depth_abs_tol, depth_rel_tol,
            sampling, image_size, image_format, jpeg_quality, feature_dtype, workers, scheduler, as_json, quiet):
    """Run the 3D teacher once per scene, project its per-point features into every frame (z-buffer, every K-th
    pixel) and write one complete scene group per scene into the cache. Rerunning resumes: complete scenes are
    kept, incomplete ones are redone."""
    from pipeline.extraction import (
        LockedError,
        TeacherSpec,
        report_json,
        run_extraction,
        summary_table,
        teacher_geometry,
    )
    from stages.extract.formats.registry import DatasetSpec
    from stages.extract.job import JobConfig
    from stages.extract.projection import ProjectionConfig

    spec = DatasetSpec(name=dataset, root=root, scenes=parse_scene_list(scenes), split_file=split_file,
                       label_map=label_map, layout=layout, split=nyu_split)
    if teacher_kind == "label-embedding":
        _refuse_given(_NETWORK_OPTIONS, "--teacher label-embedding runs no network and takes no")
        if embedding_channels < 1:
            raise click.BadParameter(f"must be >= 1, got {embedding_channels}", param_hint="--embedding-channels")
        if embedding_seed < 0:
            raise click.BadParameter(f"must be >= 0, got {embedding_seed}", param_hint="--embedding-seed")
        teacher = TeacherSpec(kind="label-embedding", seed=embedding_seed, channels=embedding_channels)
    else:
        _refuse_given(_EMBEDDING_OPTIONS, "only --teacher label-embedding takes")
        if dataset != "nyu" and teacher_init == "checkpoint" and teacher_checkpoint is None:
            raise click.UsageError("give --teacher-checkpoint PATH (or --teacher-init random for debugging, or "
                                   "--teacher label-embedding for the labels-only control); `distill-cache "
                                   "train-teacher` makes a checkpoint for a synthetic world")
        try:
            arch, vs, source = teacher_geometry(teacher_checkpoint if teacher_init == "checkpoint" else None,
                                                architecture, voxel_size)
        except ValueError as e:
            raise click.ClickException(str(e)) from e
        if source and not quiet:
            click.echo(f"teacher {arch}, voxel {vs} m (from {source})", err=True)
        teacher = TeacherSpec(checkpoint=teacher_checkpoint, init=teacher_init, seed=seed, backend=backend,
                              device=device, layer=layer, architecture=arch, voxel_size=vs)
    job = JobConfig(projection=ProjectionConfig(stride=stride, dilation=dilation, depth_check=depth_check,
                                                depth_abs_tol=depth_abs_tol, depth_rel_tol=depth_rel_tol,
                                                sampling=sampling),
                    frame_skip=frame_skip, image_size=parse_size(image_size), image_format=image_format,
                    jpeg_quality=jpeg_quality, feature_dtype=feature_dtype)
    log = (lambda m: print(m, file=sys.stderr)) if as_json else click.echo
    try:
        report = run_extraction(spec, teacher, out, job, workers=workers, scheduler=scheduler,
                                version=package_version(), progress=not quiet, log=log)
    except (LockedError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(report_json(report), indent=2, default=str))
    else:
        click.echo(summary_table(report))
        click.echo(f"cache {out}  fingerprint {report.fingerprint[:16]}  backend {report.backend}  "
                   f"{report.wall_seconds:.1f}s")
    if report.failed:
        raise click.ClickException(f"{len(report.failed)} scene(s) failed and stay incomplete: "
                                   + "; ".join(f"{k}: {v}" for k, v in report.failed.items()))


# options that only one kind of teacher reads: given to the other kind they would be silently ignored
_NETWORK_OPTIONS = ("teacher_checkpoint", "teacher_init", "seed", "backend", "device", "layer", "architecture",
                    "voxel_size")
_EMBEDDING_OPTIONS = ("embedding_channels", "embedding_seed")


def _refuse_given(names: tuple[str, ...], why: str) -> None:
    ctx = click.get_current_context()
    given = [n for n in names if ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT)]
    if given:
        raise click.UsageError(f"{why} {', '.join('--' + n.replace('_', '-') for n in given)}")
