"""The runtimes a deployed student runs in, as `LogitsFn`s the inference path calls: PyTorch or onnxruntime.

Both take normalized images (N, 3, H, W) as a torch tensor and return logits (N, K, H, W) as a torch tensor, so the
inference path (`inference.py`) cannot tell them apart. ``fixed_size`` is the (H, W) a model only accepts (an ONNX
model exported at a fixed size), None when any size goes; ``max_batch`` the most images one call may hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stages.train.predict.deployed import DeployedStudent


class TorchRuntime:
    """The PyTorch student on ``device``."""

    name = "pytorch"

    def __init__(self, model: DeployedStudent, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.fixed_size: tuple[int, int] | None = None
        self.max_batch: int | None = None

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device, non_blocking=True)).float()


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session; ``threads`` = intra-op threads (default: torch's, so both runtimes use alike)."""
    try:
        import onnxruntime as ort
    except ImportError as e:  # an install without the `export` extra
        raise RuntimeError("onnxruntime is not installed: pip install 'distill-cache[export]'") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.log_severity_level = 3  # errors only: its constant-folding notes are not the user's business
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _static(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxRuntime:
    """An exported ONNX student in onnxruntime (CPU); inputs are moved to the host, outputs come back as tensors."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4:
            raise ValueError(f"{self.path}: expected an image input (N, 3, H, W), got shape {inp.shape}")
        self.input_name = inp.name
        n, _, h, w = (_static(d) for d in inp.shape)
        self.fixed_size = (h, w) if h is not None and w is not None else None
        self.max_batch = n

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)})
        return torch.from_numpy(out[0])
