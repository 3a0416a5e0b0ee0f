"""Geometric augmentation as one affine map per frame, applied alike to the image, its labels and its cells.

Convention (shared with the model and the cache): coordinates are pixel indices (x = column, y = row) and pixel
(x, y) is the centre of that pixel. A frame's transform is a 2×3 matrix A mapping a *source* pixel to an *output*
pixel, [x', y'] = A[:, :2]·[x, y] + A[:, 2]. The cached cell (i, j) sits on source pixel (K·j, K·i); it lands on
output pixel A·(K·j, K·i) and so in output cell round(x'/8), round(y'/8) — output cell (u, v) is centred on pixel
(8u, 8v), exactly where the stride-8 model puts its feature (stages/train/model/resnet.py), and a crop of size S
has ceil(S/8) cells per side. A scaled-up cell also fills the other output cells its K×K footprint covers
(scatter.py). Images and labels are resampled at A⁻¹(output pixel): bilinear for the image (pad:
the ImageNet mean, 0 after normalization), nearest for labels (pad: 255).

Training (the paper's semseg defaults): scale s ~ U(0.5, 2) about the origin, rotation θ ~ U(−10°, 10°) about the
scaled image's centre (same canvas size), horizontal flip with p = ½, then a random S×S crop of the canvas, padded
evenly on both sides where it is smaller than S. Evaluation: identity, or a resize to `image_size`.
Two implementations of the same map: cv2 in worker threads (the CPU path) and torch `grid_sample` on the batch's
device (the CUDA path; the same code runs on CPU tensors).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cache_schema import IGNORE

# The student's input normalization (ImageNet statistics of RGB in [0, 1]): the loader applies it in training and
# evaluation, `predict` to a user's images, and an exported student's sidecar records it.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _h(a: np.ndarray) -> np.ndarray:
    return np.vstack([a, [0.0, 0.0, 1.0]])


def train_transform(rng: np.random.Generator, height: int, width: int, *, crop: int, scale: tuple[float, float],
                    rotate: float, flip: bool) -> np.ndarray:
    """One random 2×3 source→output matrix for an S×S training crop (S = crop)."""
    s = rng.uniform(scale[0], scale[1])
    theta = math.radians(rng.uniform(-rotate, rotate)) if rotate else 0.0
    do_flip = bool(flip and rng.random() < 0.5)
    hs, ws = max(1, round(height * s)), max(1, round(width * s))
    m = np.diag([s, s, 1.0])
    cx, cy = (ws - 1) / 2, (hs - 1) / 2
    c, si = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -si, cx - c * cx + si * cy], [si, c, cy - si * cx - c * cy], [0, 0, 1.0]])
    m = rot @ m
    if do_flip:
        m = np.array([[-1.0, 0, ws - 1], [0, 1, 0], [0, 0, 1]]) @ m
    ph, pw = max(crop - hs, 0), max(crop - ws, 0)
    hp, wp = hs + ph, ws + pw
    y0 = int(rng.integers(0, hp - crop + 1))
    x0 = int(rng.integers(0, wp - crop + 1))
    m = np.array([[1.0, 0, pw // 2 - x0], [0, 1, ph // 2 - y0], [0, 0, 1]]) @ m
    return m[:2]


def resize_transform(height: int, width: int, out_hw: tuple[int, int] | None) -> np.ndarray:
    """Evaluation: identity, or the align-corners resize (pixel 0 → 0, last → last) to out_hw = (H, W)."""
    if out_hw is None or tuple(out_hw) == (height, width):
        return np.array([[1.0, 0, 0], [0, 1.0, 0]])
    ho, wo = out_hw
    sx = (wo - 1) / (width - 1) if width > 1 else 1.0
    sy = (ho - 1) / (height - 1) if height > 1 else 1.0
    return np.array([[sx, 0, 0], [0, sy, 0.0]])


def is_identity(a: np.ndarray) -> bool:
    return bool(np.array_equal(a, np.array([[1.0, 0, 0], [0, 1.0, 0]])))


def transform_points(a: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return a[0, 0] * x + a[0, 1] * y + a[0, 2], a[1, 0] * x + a[1, 1] * y + a[1, 2]


# ---- worker-thread path (cv2 releases the GIL) ----

def normalization_coeffs(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) per RGB channel so that normalized = uint8 · alpha + beta."""
    m, s = np.asarray(mean, np.float64) * 255.0, np.asarray(std, np.float64) * 255.0
    return 1.0 / s, -m / s


def _buffer(scratch: dict | None, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 scratch array reused across frames of one worker thread (allocation and page faults cost more
    than the warp's arithmetic at these sizes)."""
    if scratch is None:
        return np.empty(shape, np.uint8)
    buf = scratch.get(name)
    if buf is None or buf.shape != shape:
        buf = scratch[name] = np.empty(shape, np.uint8)
    return buf


def warp_image_cv2(bgr: np.ndarray, a: np.ndarray, out: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
                   scratch: dict | None = None) -> None:
    """Decoded BGR uint8 (H, W, 3) → normalized RGB float32 written into out (3, Ho, Wo).

    The warp runs on uint8 BGRA (cv2's 4-channel bilinear warp is vectorized and ~2–3× faster than the 3-channel
    one), padding with the mean colour; then one pass per channel converts uint8 → normalized float32 straight into
    the output plane (R, G, B from planes 2, 1, 0: no colour conversion pass). `scratch` (a per-thread dict) keeps
    the uint8 intermediates between calls.
    """
    ho, wo = out.shape[1:]
    if is_identity(a) and (ho, wo) == bgr.shape[:2]:
        planes = cv2.split(bgr)
    else:
        pad = tuple(float(-b / al) for al, b in zip(alpha, beta, strict=True))  # RGB mean: 0 once normalized
        bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA, dst=_buffer(scratch, "bgra", (*bgr.shape[:2], 4)))
        warped = cv2.warpAffine(bgra, a, (wo, ho), dst=_buffer(scratch, "warped", (ho, wo, 4)),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=(pad[2], pad[1], pad[0], 0.0))
        planes = cv2.split(warped)
    for c in range(3):
        src = planes[2 - c]
        cv2.addWeighted(src, float(alpha[c]), src, 0.0, float(beta[c]), dst=out[c], dtype=cv2.CV_32F)


def warp_labels_cv2(stored: np.ndarray, a: np.ndarray, out: np.ndarray, lut: np.ndarray,
                    scratch: dict | None = None) -> None:
    """Stored labels (H, W) uint8 → training ids in out (Ho, Wo) (any integer dtype): nearest, IGNORE outside.

    The lookup table goes first, in one sequential pass: the block's labels are cold in cache by now and the
    rotated warp reads its source out of order, which costs more on cold memory than the extra pass (measured)."""
    ho, wo = out.shape
    train_ids = cv2.LUT(stored, lut, dst=_buffer(scratch, "train_ids", stored.shape))
    if is_identity(a) and (ho, wo) == stored.shape:
        np.copyto(out, train_ids)
        return
    warped = cv2.warpAffine(train_ids, a, (wo, ho), dst=_buffer(scratch, "labels", (ho, wo)),
                            flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE)
    np.copyto(out, warped)


# ---- device path (torch; CUDA in production, CPU in tests) ----

def _sampling_grid(a: torch.Tensor, src_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """grid_sample grid (B, Ho, Wo, 2) for source→output matrices a (B, 2, 3); align_corners=True coordinates."""
    ho, wo = out_hw
    hs, ws = src_hw
    full = torch.cat([a, a.new_tensor([0.0, 0.0, 1.0]).expand(a.shape[0], 1, 3)], 1)
    inv = torch.linalg.inv(full)[:, :2]  # output pixel → source pixel
    ys = torch.arange(ho, device=a.device, dtype=a.dtype)
    xs = torch.arange(wo, device=a.device, dtype=a.dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy, torch.ones_like(gx)], -1).reshape(1, -1, 3)  # (1, Ho·Wo, 3)
    src = pts @ inv.transpose(1, 2)  # (B, Ho·Wo, 2) in source pixels
    norm = torch.tensor([2.0 / max(ws - 1, 1), 2.0 / max(hs - 1, 1)], device=a.device, dtype=a.dtype)
    return (src * norm - 1.0).reshape(-1, ho, wo, 2)


def warp_batch_torch(images: torch.Tensor, labels: torch.Tensor, sizes: torch.Tensor, a: torch.Tensor,
                     out_hw: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 RGB (B, H, W, 3) and training-id labels (B, H, W) on any device → normalized float32 (B, 3, Ho, Wo)
    and int64 labels (B, Ho, Wo). Frames may be smaller than the (H, W) canvas: sizes (B, 2) are the real (h, w),
    and samples outside a frame's real extent read as padding (mean / IGNORE)."""
    dev = images.device
    m = torch.tensor(mean, device=dev, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=dev, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    x = (images.permute(0, 3, 1, 2).float() - m) / s
    lab = labels.long()
    hs, ws = images.shape[1:3]
    if out_hw == (hs, ws) and bool((a == a.new_tensor([[1.0, 0, 0], [0, 1.0, 0]])).all()):
        return x.contiguous(), lab
    grid = _sampling_grid(a.to(dev, torch.float64), (hs, ws), out_hw)
    # source pixel of each output pixel, to blank what falls outside a frame's own extent
    src = (grid + 1.0) / torch.tensor([2.0 / max(ws - 1, 1), 2.0 / max(hs - 1, 1)], device=dev, dtype=grid.dtype)
    h_real = sizes[:, 0].to(dev, grid.dtype).view(-1, 1, 1)
    w_real = sizes[:, 1].to(dev, grid.dtype).view(-1, 1, 1)
    sx, sy = src[..., 0], src[..., 1]
    inside = (sx >= -0.5) & (sx <= w_real - 0.5) & (sy >= -0.5) & (sy <= h_real - 0.5)
    g = grid.float()
    img = F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    # labels: sample (label − IGNORE) so that the zero padding reads as IGNORE
    lab = F.grid_sample((lab - IGNORE).unsqueeze(1).float(), g, mode="nearest", padding_mode="zeros",
                        align_corners=True).squeeze(1).round().long() + IGNORE
    img = img * inside.unsqueeze(1)
    lab = torch.where(inside, lab, torch.full_like(lab, IGNORE))
    return img, lab
