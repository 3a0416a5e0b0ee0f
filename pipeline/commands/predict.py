"""`distill-cache predict`: run a trained (or exported) student on your own images, folders or a ScanNet `.sens`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.options import parse_scales, parse_window


def _parse_base_size(text: str) -> str | int:
    if text in ("auto", "native"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise click.BadParameter(f"expected auto, native or a number of pixels, got {text!r}") from None
    if value < 8:
        raise click.BadParameter(f"base size must be >= 8 pixels, got {value}")
    return value


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A student checkpoint written by `distill-cache train` (e.g. RUN/last.pt).")
@click.option("--onnx", "onnx_model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A student exported by `distill-cache export --format onnx` (its .json sidecar beside it); "
              "runs in onnxruntime on the CPU.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: labels/, overlays/ and predictions.json (nothing is written elsewhere).")
@click.option("--frame-skip", type=click.IntRange(min=1), default=1, show_default=True,
              help="For a .sens input: every N-th frame.")
@click.option("--scales", default="1.0", show_default=True,
              help="Comma-separated test scales whose softmax is averaged, e.g. 0.5,0.75,1.0,1.25,1.5,1.75.")
@click.option("--flip", is_flag=True, help="Also average horizontally flipped predictions.")
@click.option("--window", default="crop", show_default=True,
              help="'crop': sliding windows of the training crop, padded when the image is smaller (semseg's way); "
              "'whole': the image at once; or WxH.")
@click.option("--base-size", default="auto", show_default=True,
              help="Long side (pixels) of an image at scale 1.0: 'auto' = the training frames' long side when the "
              "training cache records it, else the image's own size; 'native' = the image's own size; or a number. "
              "Predictions are always written at the input's size.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images per batch (equal-sized images share forward calls).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N (PyTorch only).")
@click.option("--no-overlays", is_flag=True, help="Write the label PNGs only.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (predictions.json's counts) as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(inputs, checkpoint, onnx_model, out, frame_skip, scales, flip, window, base_size, batch_size, device,
            no_overlays, as_json, quiet):
    """Predict INPUT... (JPEG/PNG files, folders of them, ScanNet .sens files) with a trained student. Writes per
    image a label PNG of the label space's ids (NYU40 ids for ScanNet-20, 0 = unlabelled never predicted) and a
    colour overlay with a legend, plus predictions.json. Unreadable images are counted and named, not fatal."""
    from pipeline.image_inputs import ImageInputs
    from pipeline.prediction_run import run_predict
    from stages.train.checkpoint import CheckpointError
    from stages.train.predict import PredictOptions, Predictor
    from stages.train.trainer import TrainError, resolve_device

    if (checkpoint is None) == (onnx_model is None):
        raise click.UsageError("give exactly one of --checkpoint and --onnx")
    opts = PredictOptions(scales=parse_scales(scales), flip=flip, window=parse_window(window),
                          base_size=_parse_base_size(base_size), max_batch=2 * batch_size)
    try:
        if checkpoint is not None:
            predictor = Predictor.from_checkpoint(checkpoint, opts, resolve_device(device))
        else:
            predictor = Predictor.from_onnx(onnx_model, opts)
    except (CheckpointError, TrainError, ValueError, RuntimeError) as e:
        raise click.ClickException(str(e)) from e
    info = predictor.info
    model = {"checkpoint" if checkpoint else "onnx": str(checkpoint or onnx_model), "runtime": predictor.runtime_name,
             "device": str(predictor.device), "mode": info.mode, "iteration": info.iteration,
             "label_space": info.label_space.name, "cache_fingerprint": (info.cache or {}).get("fingerprint")}
    summary = run_predict(predictor, ImageInputs(inputs, frame_skip, exclude=out), out, model=model,
                          batch_size=batch_size, overlays=not no_overlays, progress=not quiet)
    counts = summary.to_json()["counts"]
    if as_json:
        click.echo(json.dumps({"out": str(out), **counts, "seconds": round(summary.seconds, 3),
                               "skipped_inputs": summary.skipped}))
    else:
        click.echo(f"{counts['predicted']} images predicted ({predictor.cfg.summary()}, {predictor.runtime_name}) "
                   f"in {summary.seconds:.1f} s -> {out}")
        for s in summary.skipped:
            click.echo(f"skipped {s['source']}: {s['reason']}", err=True)
    if not summary.images:
        raise click.ClickException(f"no image could be predicted ({counts['skipped']} skipped)")
