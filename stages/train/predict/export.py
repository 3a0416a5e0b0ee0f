"""Export a trained student out of PyTorch: ONNX (onnxruntime) or TorchScript, with a JSON sidecar.

The exported network is `DeployedStudent`: normalized RGB images (N, 3, H, W) float32 in, logits (N, K, H, W) out.
The batch dimension is always free. ONNX is exported at a fixed H×W (default: the training crop, the window
`predict` slides) unless ``dynamic``; TorchScript is traced, and the trace keeps sizes symbolic, so it runs at any
size. Each export is checked in its own runtime against the PyTorch student on random images (at the export size,
and at a second size when the size is free); the relative difference is recorded in the sidecar and an export
that misses ``tolerance`` raises.

PSPNet's pyramid pooling uses adaptive average pooling, which ONNX lacks: the exporter lowers it to a plain pooling
whose kernel is fixed by the example input, so a dynamic-size graph would be silently wrong at other sizes. For
ONNX the pooling layers are therefore replaced by `MatrixAdaptiveAvgPool2d`, the same averages written as two
small matrix products built from the input size, which exports exactly at any size.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stages.train.checkpoint import load_checkpoint
from stages.train.predict.deployed import DeployedStudent, DeploymentInfo, sidecar_path

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 18
TOLERANCE = 1e-4  # relative: max |exported - PyTorch| / max |PyTorch| over the check images' logits
MAX_DYNAMIC_SIDE = 8192


class ExportError(RuntimeError):
    """An export that cannot be made, or whose runtime check failed."""


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(bins)`` as P_h · x · P_wᵀ: bin i of a side of length n averages [⌊i·n/b⌋, ⌈(i+1)·n/b⌉),
    PyTorch's definition, with the matrices computed from the input's size (so they follow a dynamic size)."""

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.bins = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    @staticmethod
    def averaging_matrix(n: int | torch.SymInt, bins: int, like: torch.Tensor) -> torch.Tensor:
        i = torch.arange(bins, device=like.device)
        start = (i * n) // bins
        end = ((i + 1) * n + bins - 1) // bins
        j = torch.arange(n, device=like.device)
        inside = ((j[None] >= start[:, None]) & (j[None] < end[:, None])).to(like.dtype)
        return inside / inside.sum(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph = self.averaging_matrix(x.shape[-2], self.bins[0], x)
        pw = self.averaging_matrix(x.shape[-1], self.bins[1], x)
        return torch.einsum("nchw,ih,jw->ncij", x, ph, pw)


def with_exportable_pooling(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose adaptive average pooling layers are `MatrixAdaptiveAvgPool2d`."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(parent, name, MatrixAdaptiveAvgPool2d(child.output_size))
    return model


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    format: str
    input_size: tuple[int, int] | None  # (H, W); None = any size
    max_rel_diff: float  # the runtime check (see the module docstring)
    seconds: float


def _relative_diff(ours: np.ndarray, ref: torch.Tensor) -> float:
    r = ref.numpy()
    return float(np.abs(ours - r).max() / max(float(np.abs(r).max()), 1e-12))


def _check_sizes(size: tuple[int, int] | None, crop: int) -> list[tuple[int, int]]:
    if size is not None:
        return [size]
    return [(crop, crop), (crop + 16, crop + 40)]  # free size: the window and an off-size, wider image


def write_onnx(model: DeployedStudent, path: Path, example: torch.Tensor, dynamic: bool = False) -> None:
    """``model`` as an ONNX file: input "image" (batch free; height and width too when ``dynamic``), output "logits"."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    shapes: dict[int, object] = {0: batch}
    if dynamic:
        shapes |= {2: torch.export.Dim("height", min=16, max=MAX_DYNAMIC_SIDE),
                   3: torch.export.Dim("width", min=16, max=MAX_DYNAMIC_SIDE)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter about its own internals
        program = torch.onnx.export(with_exportable_pooling(model), (example,), dynamo=True, opset_version=ONNX_OPSET,
                                    input_names=["image"], output_names=["logits"],
                                    dynamic_shapes={"image": shapes}, verbose=False)
    program.save(str(path))


def _run_onnx(path: Path, images: list[torch.Tensor]) -> list[np.ndarray]:
    from stages.train.predict.runtime import onnx_session

    session = onnx_session(path)
    return [session.run(None, {"image": x.numpy()})[0] for x in images]


def _export_torchscript(model: DeployedStudent, path: Path, example: torch.Tensor, info: DeploymentInfo) -> None:
    import json

    with warnings.catch_warnings():
        # TracerWarnings come from the model's shape checks, which hold for every input the trace will see;
        # torch.jit's deprecation notices: TorchScript is still what C++ (libtorch) and mobile runtimes load
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"deployment.json": json.dumps(info.to_json())})


def _run_torchscript(path: Path, images: list[torch.Tensor]) -> list[np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return [module(x).numpy() for x in images]


def export_student(checkpoint: str | Path, out: str | Path, fmt: str = "onnx", *,
                   size: tuple[int, int] | None = None, dynamic: bool = False, tolerance: float = TOLERANCE,
                   seed: int = 0) -> ExportResult:
    """Export the checkpoint's deployed student to ``out`` (+ ``out``.json); see the module docstring.

    ``size`` is (H, W) of a fixed-size ONNX model (default: the training crop); ``dynamic`` frees it.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {FORMATS}, got {fmt!r}")
    if dynamic and size is not None:
        raise ExportError("give a fixed size or dynamic, not both")
    t0 = time.perf_counter()
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    info = DeploymentInfo.of_checkpoint(ckpt, checkpoint)
    model = DeployedStudent.from_checkpoint(ckpt, "cpu")
    fixed = None if fmt == "torchscript" or dynamic else (size or (info.crop, info.crop))
    gen = torch.Generator().manual_seed(seed)
    checks = [torch.randn(2, 3, *hw, generator=gen) for hw in _check_sizes(fixed, info.crop)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info.export = {"format": fmt, "file": out.name, "input_size": list(fixed) if fixed else None,
                   "dynamic_batch": True, "torch": torch.__version__}
    if fmt == "onnx":
        info.export["opset"] = ONNX_OPSET
        write_onnx(model, out, checks[0], dynamic)
        runner = _run_onnx
    else:
        _export_torchscript(model, out, checks[0], info)
        runner = _run_torchscript
    with torch.no_grad():
        refs = [model(x) for x in checks]
    diff = max(_relative_diff(o, r) for o, r in zip(runner(out, checks), refs, strict=True))
    info.export["check"] = {"images": [list(x.shape) for x in checks], "max_rel_diff": diff, "tolerance": tolerance}
    sidecar = info.write(sidecar_path(out))
    if not diff <= tolerance:
        raise ExportError(f"{out}: the exported model's logits differ from PyTorch's by {diff:.3g} (relative), more "
                          f"than {tolerance:g}: do not deploy it")
    return ExportResult(path=out, sidecar=sidecar, format=fmt, input_size=fixed, max_rel_diff=diff,
                        seconds=time.perf_counter() - t0)
