"""`distill-cache evaluate`: score a student checkpoint on a cache (images only; no 3D input is read)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.options import PROTOCOLS, parse_scales, parse_scene_list, parse_size, parse_window


@click.command("evaluate")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="A student checkpoint written by `distill-cache train` (e.g. RUN/last.pt).")
@click.option("--cache", required=True, help="Cache to evaluate on (path or URL), e.g. the validation split.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (scores, per-class table) on stdout.")
@click.option("--protocol", type=click.Choice(sorted(PROTOCOLS)), default="paper", show_default=True,
              help="Test protocol: 'paper' = whole frames, one scale, no flip (the paper's Table 3); 'release' = "
              "scales 0.5-1.75 with flips over sliding windows of the training crop (the authors' release). "
              "--scales/--flip/--window override its parts.")
@click.option("--scales", help="Comma-separated test scales whose softmax is averaged, e.g. 0.5,0.75,1,1.25.")
@click.option("--flip/--no-flip", default=None, help="Also average horizontally flipped predictions.")
@click.option("--window", help="'whole' (the frame at once), 'crop' (sliding windows of the training crop) or WxH.")
@click.option("--save-predictions", type=click.Path(file_okay=False, path_type=Path),
              help="Write predictions as PNGs of stored ids (NYU40 ids for ScanNet) to DIR/<scene>/<frame_id>.png.")
@click.option("--compare-size", default="auto", show_default=True,
              help="WxH at which prediction and ground truth are compared (nearest resize); 'auto' = 640x480 for "
              "the ScanNet/NYU40 label space (the benchmark's), the stored size otherwise; 'native' = stored size.")
@click.option("--scenes", help="Comma-separated subset of the cache's scenes.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True, help="Loader workers.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--force", is_flag=True, help="Evaluate even if the cache was made with other parameters (teacher, "
              "projection, encoding, label space) than the training cache.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(checkpoint, cache, as_json, protocol, scales, flip, window, save_predictions, compare_size, scenes,
            batch_size, workers, device, force, quiet):
    """Evaluate a trained student on CACHE: mIoU, mAcc, pixel accuracy and a per-class table (ScanNet 2D benchmark
    semantics; S3DIS 13 classes; NYU-v2 on the 20 ScanNet classes). The student sees only the images."""
    from cache_schema import CacheError
    from stages.train.checkpoint import CheckpointError, ProvenanceError
    from stages.train.evaluate import EvalConfig, evaluate, format_result
    from stages.train.trainer import TrainError

    if compare_size in ("auto", "native"):
        size: tuple[int, int] | str | None = compare_size
    else:
        w, h = parse_size(compare_size)
        size = (h, w)
    preset = PROTOCOLS[protocol]
    cfg = EvalConfig(scales=parse_scales(scales) if scales else preset["scales"],
                     flip=preset["flip"] if flip is None else flip,
                     window=parse_window(window) if window else preset["window"], batch_size=batch_size,
                     workers=workers, device=device, compare_size=size)
    scene_list = parse_scene_list(scenes)
    try:
        result = evaluate(checkpoint, cache, cfg, force=force, save_predictions=save_predictions,
                          scenes=list(scene_list) if scene_list else None, progress=not quiet)
    except (CacheError, CheckpointError, ProvenanceError, TrainError) as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        click.echo(format_result(result))
