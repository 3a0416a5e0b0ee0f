"""`distill-cache export`: the deployed student as ONNX or TorchScript, with a JSON sidecar, checked in its runtime."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("export")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="A student checkpoint written by `distill-cache train` (e.g. RUN/last.pt).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The model file (e.g. student.onnx); the sidecar goes to OUT.json.")
@click.option("--height", type=click.IntRange(min=16), help="Fixed input height of an ONNX model (default: the "
              "training crop, the window `predict` slides).")
@click.option("--width", type=click.IntRange(min=16), help="Fixed input width of an ONNX model (default: the crop).")
@click.option("--dynamic", is_flag=True, help="ONNX: any input height and width (TorchScript always is).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
def command(checkpoint, fmt, out, height, width, dynamic, as_json):
    """Export a trained student for deployment: eval mode (running statistics in BatchNorm, DN1 and DN2), no
    auxiliary head, no discriminators. Input: RGB images normalized as the sidecar says, (N, 3, H, W) float32;
    output: logits (N, K, H, W). The exported file is run in onnxruntime / TorchScript and compared with the PyTorch
    student before the command succeeds."""
    from stages.train.checkpoint import CheckpointError
    from stages.train.predict.export import ExportError, export_student

    if (height is None) != (width is None):
        raise click.UsageError("give both --height and --width, or neither")
    if dynamic and height is not None:
        raise click.UsageError("--height/--width fix the input size; --dynamic frees it: choose one")
    if fmt == "torchscript" and height is not None:
        raise click.UsageError("a TorchScript student takes any input size: --height/--width are for ONNX")
    try:
        result = export_student(checkpoint, out, fmt, size=(height, width) if height else None, dynamic=dynamic)
    except (CheckpointError, ExportError) as e:
        raise click.ClickException(str(e)) from e
    size = "any size" if result.input_size is None else f"{result.input_size[1]}x{result.input_size[0]}"
    if as_json:
        click.echo(json.dumps({"model": str(result.path), "sidecar": str(result.sidecar), "format": result.format,
                               "input_size": list(result.input_size) if result.input_size else None,
                               "max_rel_diff": result.max_rel_diff, "seconds": round(result.seconds, 2)}))
    else:
        click.echo(f"{result.format} student ({size} input, any batch) -> {result.path}\n"
                   f"sidecar -> {result.sidecar}\n"
                   f"checked in its runtime: logits within {result.max_rel_diff:.2g} (relative) of PyTorch's")
