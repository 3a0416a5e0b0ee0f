"""The one inference path of a trained student, shared by `evaluate`, `predict` and the exported models' checks.

Input: a batch of normalized images (B, 3, H, W); output: class probabilities (B, K, H, W), the softmax averaged
over every view:

- **scales**: each scale s resizes the image (bilinear, align-corners like the model's own upsampling) so that its
  long side is ``base_size · s`` (semseg's test protocol), or to s × its own size when ``base_size`` is None;
- **flip**: each scaled image is also seen mirrored left-right, its prediction mirrored back;
- **window**: None runs the whole scaled image at once (the paper's protocol: Table 3 tests whole 384×768 images);
  an (h, w) window runs crops of exactly that size, as the student was trained: an image smaller than the window
  is padded evenly with the mean colour (0 once normalized, as the training crops are padded), a larger one is
  covered by windows ``ceil(2/3 · window)`` apart whose probabilities are averaged where they overlap (semseg).

Probabilities are resized back to the input size (or ``out_size``) after each scale and averaged with equal
weights. The model is any callable from images to logits at the input size (``LogitsFn``): the PyTorch student,
an onnxruntime session, a TorchScript module; every forward call sees at most ``max_batch`` views, and in window
mode always exactly the window's size, so a model exported at a fixed input size runs here unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # normalized images (N, 3, h, w) → logits (N, K, h, w)
WindowSpec = str | tuple[int, int]  # "crop" (the training crop), "whole" (no window) or (H, W)
MIN_SIDE = 8  # a scaled image keeps at least one stride-8 cell per side


@dataclass(frozen=True)
class InferenceConfig:
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: tuple[int, int] | None = None  # (H, W) of the sliding window; None = the whole image at once
    stride_rate: float = 2 / 3  # step between windows as a fraction of the window (semseg's)
    base_size: int | None = None  # long side at scale 1.0; None = the image's own size
    max_batch: int = 8  # views per forward call

    def __post_init__(self) -> None:
        if not self.scales or any(not (s > 0 and math.isfinite(s)) for s in self.scales):
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.window is not None and (len(self.window) != 2 or min(self.window) < MIN_SIDE):
            raise ValueError(f"window must be (H, W) with sides >= {MIN_SIDE}, got {self.window}")
        if not 0 < self.stride_rate <= 1:
            raise ValueError(f"stride_rate must be in (0, 1], got {self.stride_rate}")
        if self.base_size is not None and self.base_size < MIN_SIDE:
            raise ValueError(f"base_size must be >= {MIN_SIDE}, got {self.base_size}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")

    @property
    def views(self) -> int:
        """Image views averaged per input: scales × (2 with flip)."""
        return len(self.scales) * (2 if self.flip else 1)

    def forward_views(self, size: tuple[int, int]) -> int:
        """Model inputs one image of ``size`` costs: windows (or whole images) over the scales, × 2 with flip."""
        per_scale = [1 if self.window is None else len(window_grid(scaled_size(size, s, self.base_size),
                                                                    self.window, self.stride_rate))
                     for s in self.scales]
        return sum(per_scale) * (2 if self.flip else 1)

    def describe(self) -> dict:
        """The test protocol, as results record it."""
        return {"scales": list(self.scales), "flip": self.flip, "window": list(self.window) if self.window else None,
                "stride_rate": round(self.stride_rate, 4), "base_size": self.base_size, "summary": self.summary()}

    def summary(self) -> str:
        """E.g. 'single scale, whole image' or '6 scales 0.5-1.75 + flip, 473x473 sliding window'."""
        scales = ("single scale" if self.scales == (1.0,) else
                  f"scale {self.scales[0]:g}" if len(self.scales) == 1 else
                  f"{len(self.scales)} scales {min(self.scales):g}-{max(self.scales):g}")
        where = "whole image" if self.window is None else f"{self.window[1]}x{self.window[0]} sliding window"
        return f"{scales}{' + flip' if self.flip else ''}, {where}"


def resolve_window(spec: WindowSpec, crop: int, fixed_size: tuple[int, int] | None) -> tuple[int, int] | None:
    """The sliding window for ``spec``; a model that only takes ``fixed_size`` inputs slides exactly that."""
    if spec == "crop":
        window = fixed_size or (crop, crop)
    elif spec == "whole":
        window = None
    else:
        window = (int(spec[0]), int(spec[1]))
    if fixed_size is not None and window != tuple(fixed_size):
        raise ValueError(f"the model only takes {fixed_size[1]}x{fixed_size[0]} inputs: use the default window "
                         "(or export it with --dynamic)")
    return window


def scaled_size(size: tuple[int, int], scale: float, base_size: int | None) -> tuple[int, int]:
    """(H, W) of an image of ``size`` at ``scale``: long side base_size·scale (aspect kept), else scale × size."""
    h, w = size
    if base_size is None:
        return max(MIN_SIDE, round(h * scale)), max(MIN_SIDE, round(w * scale))
    long = base_size * scale
    if h >= w:
        return max(MIN_SIDE, round(long)), max(MIN_SIDE, round(long * w / h))
    return max(MIN_SIDE, round(long * h / w)), max(MIN_SIDE, round(long))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of the windows covering ``length`` (>= window): every ``stride``, the last one flush with the end."""
    if length <= window:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return [min(i * stride, length - window) for i in range(count)]


def window_grid(size: tuple[int, int], window: tuple[int, int], stride_rate: float) -> list[tuple[int, int]]:
    """(top, left) of every window over an image of ``size`` (padded up to the window where smaller)."""
    (h, w), (wh, ww) = size, window
    return [(y, x) for y in window_starts(max(h, wh), wh, max(1, math.ceil(wh * stride_rate)))
            for x in window_starts(max(w, ww), ww, max(1, math.ceil(ww * stride_rate)))]


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size, mode="bilinear", align_corners=True)


def _chunks(x: torch.Tensor, n: int) -> Iterator[torch.Tensor]:
    for i in range(0, x.shape[0], n):
        yield x[i:i + n]


def view_probabilities(forward: LogitsFn, x: torch.Tensor, flip: bool, max_batch: int) -> torch.Tensor:
    """Softmax of ``forward`` on x (N, 3, h, w), averaged with its mirrored view when ``flip``: (N, K, h, w)."""
    views = torch.cat([x, x.flip(-1)]) if flip else x
    probs = torch.cat([forward(c).float().softmax(dim=1) for c in _chunks(views, max_batch)])
    if probs.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"the model returned logits of size {tuple(probs.shape[-2:])} for an input of "
                         f"{tuple(x.shape[-2:])}: it must predict at its input's size")
    if not flip:
        return probs
    n = x.shape[0]
    return (probs[:n] + probs[n:].flip(-1)) / 2


def sliding_window_probabilities(forward: LogitsFn, x: torch.Tensor, window: tuple[int, int], flip: bool = False,
                                 stride_rate: float = 2 / 3, max_batch: int = 8) -> torch.Tensor:
    """Probabilities (B, K, h, w) of x (B, 3, h, w) from windows of exactly ``window`` (see the module docstring)."""
    b, _, h, w = x.shape
    wh, ww = window
    ph, pw = max(wh - h, 0), max(ww - w, 0)
    top, left = ph // 2, pw // 2
    if ph or pw:
        x = F.pad(x, (left, pw - left, top, ph - top))  # zeros: the mean colour once normalized
    hp, wp = x.shape[-2:]
    spots = window_grid((hp, wp), window, stride_rate)
    jobs = [(k, y, x0) for y, x0 in spots for k in range(b)]  # (image, top, left) of every window of the batch
    per_call = max(1, max_batch // (2 if flip else 1))  # a flipped window is a second view in the same call
    total: torch.Tensor | None = None
    count = torch.zeros(1, 1, hp, wp, device=x.device)
    for i in range(0, len(jobs), per_call):
        chunk = jobs[i:i + per_call]
        probs = view_probabilities(forward, torch.stack([x[k, :, y:y + wh, x0:x0 + ww] for k, y, x0 in chunk]),
                                   flip, max_batch)
        if total is None:
            total = torch.zeros(b, probs.shape[1], hp, wp, device=x.device)
        for p, (k, y, x0) in zip(probs, chunk, strict=True):
            total[k, :, y:y + wh, x0:x0 + ww] += p
    for y, x0 in spots:
        count[0, 0, y:y + wh, x0:x0 + ww] += 1
    assert total is not None
    return (total / count)[:, :, top:top + h, left:left + w]


@torch.no_grad()
def predict_probabilities(forward: LogitsFn, image: torch.Tensor, cfg: InferenceConfig | None = None,
                          out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Softmax probabilities (B, K, H, W) of normalized images (B, 3, h, w), averaged over ``cfg``'s views, at
    ``out_size`` (default: the input's size)."""
    cfg = cfg or InferenceConfig()
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"expected normalized images (B, 3, H, W), got {tuple(image.shape)}")
    size = tuple(out_size) if out_size is not None else tuple(image.shape[-2:])
    total = None
    for s in cfg.scales:
        x = _resize(image, scaled_size(tuple(image.shape[-2:]), s, cfg.base_size))
        if cfg.window is None:
            p = view_probabilities(forward, x, cfg.flip, cfg.max_batch)
        else:
            p = sliding_window_probabilities(forward, x, cfg.window, cfg.flip, cfg.stride_rate, cfg.max_batch)
        p = _resize(p, size)
        total = p if total is None else total + p
    assert total is not None
    return total / len(cfg.scales)
