"""Training the 3D teacher on a dataset's 3D labels: cross-entropy on voxels, 3D mIoU on held-out scenes."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cache_schema.labels import IGNORE, LabelSpace

from ..formats.records import SceneRecord
from .backends import get_ops, resolve_backend
from .checkpoint import checkpoint_sha256, save_teacher_checkpoint, sidecar_path
from .network import Res16UNet
from .sparse import SparseOps
from .teacher import MAX_STRIDE, TeacherConfig, check_points, prepare_colors
from .voxelize import rows_for_points, voxelize


@dataclasses.dataclass
class Augmentation:
    """Light 3D augmentation: random rotation about z, isotropic scaling, mirror in x."""

    rotate: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    flip: bool = True

    def __call__(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = points.astype(np.float64)
        if self.rotate:
            a = rng.uniform(0, 2 * math.pi)
            c, s = math.cos(a), math.sin(a)
            p = p @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T
        p = p * rng.uniform(*self.scale)
        if self.flip and rng.random() < 0.5:
            p[:, 0] = -p[:, 0]
        return p.astype(np.float32)


def spatial_crop(points: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``max_points`` points nearest (in xy) to a random point: a contiguous piece of the scene."""
    if max_points <= 0 or len(points) <= max_points:
        return np.arange(len(points))
    centre = points[rng.integers(len(points)), :2]
    d = ((points[:, :2] - centre) ** 2).sum(axis=1)
    return np.sort(np.argpartition(d, max_points - 1)[:max_points])


def _voxel_batch(points: np.ndarray, colors: np.ndarray, voxel_size: float, device: torch.device, dtype):
    vox = voxelize(points, voxel_size, align=MAX_STRIDE)
    feats = torch.as_tensor(prepare_colors(colors[vox.representative]), dtype=dtype, device=device)
    return vox, torch.as_tensor(vox.coords, device=device), feats


def _confusion(pred: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    keep = target != IGNORE
    return np.bincount(target[keep].astype(np.int64) * n + pred[keep], minlength=n * n).reshape(n, n)


def miou_from_confusion(conf: np.ndarray) -> tuple[float, list[float | None]]:
    """Mean IoU over classes that occur in prediction or ground truth; per-class IoU (None = absent)."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    ious: list[float | None] = [float(t / u) if u > 0 else None for t, u in zip(tp, union, strict=True)]
    present = [i for i in ious if i is not None]
    return (float(np.mean(present)) if present else 0.0), ious


@torch.no_grad()
def evaluate_scenes(net: Res16UNet, ops: SparseOps, scenes: Sequence[SceneRecord], label_space: LabelSpace,
                    voxel_size: float, device: torch.device) -> dict:
    """Per-point 3D mIoU (each point takes its voxel's prediction)."""
    net.eval()
    n = label_space.num_classes
    conf = np.zeros((n, n), np.int64)
    dtype = next(net.parameters()).dtype
    for sc in scenes:
        check_points(sc.points, sc.colors, where=f"scene {sc.name}")
        if len(sc.points) == 0:
            continue
        vox, coords, feats = _voxel_batch(sc.points, sc.colors, voxel_size, device, dtype)
        out = net(ops, ops.from_voxels(coords, feats), layer="final")
        rows = rows_for_points(vox.point_coords, 1, ops.coordinates(out).cpu().numpy())
        pred = ops.features(out).argmax(dim=1).cpu().numpy()[rows]
        conf += _confusion(pred, label_space.to_train_ids(sc.labels), n)
    miou, ious = miou_from_confusion(conf)
    total = conf.sum()
    return {"miou": miou, "iou": dict(zip(label_space.names, ious, strict=True)),
            "accuracy": float(np.trace(conf) / total) if total else 0.0, "points": int(total)}


def training_backend(device: str = "cpu") -> str:
    """`auto` for training: MinkowskiEngine where it imports and runs on `device` (its CPU backward is ~5x faster
    than the pure-torch one here), else torch. Never spconv: its multithreaded CPU kernels are not deterministic
    (see backend_spconv)."""
    from .backends import resolve_backend

    try:
        return resolve_backend("minkowski", device)
    except RuntimeError:
        return "torch"


def train_teacher(scenes: Sequence[SceneRecord], val_scenes: Sequence[SceneRecord], label_space: LabelSpace,
                  cfg: TeacherConfig, *, epochs: int, lr: float, seed: int, out: Path, progress: bool = True,
                  max_points: int = 0, optimizer: str = "sgd", weight_decay: float = 1e-4,
                  augment: Augmentation | None = None) -> dict:
    """Train Res16UNet (+ ``final`` classifier to ``label_space``) and save it in the canonical layout.

    One scene (or its ``max_points`` crop) per step; SGD with momentum and a poly learning-rate decay (as in
    SpatioTemporalSegmentation) or Adam. Writes ``out`` (state_dict) and ``out`` + ``.json`` (metrics, config,
    history). Returns the sidecar's content.
    """
    if not scenes:
        raise ValueError("train_teacher needs at least one training scene")
    for sc in list(scenes) + list(val_scenes):
        check_points(sc.points, sc.colors, where=f"scene {sc.name}")
        if len(sc.labels) != len(sc.points):
            raise ValueError(f"scene {sc.name}: {len(sc.labels)} labels for {len(sc.points)} points")
    cfg = dataclasses.replace(cfg, num_classes=label_space.num_classes)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch.device(cfg.device)
    backend = resolve_backend(cfg.backend if cfg.backend != "auto" else training_backend(cfg.device),
                              cfg.device)
    ops = get_ops(backend, cfg.device)
    net = Res16UNet(cfg.in_channels, cfg.num_classes, cfg.architecture)
    net.reset_parameters(seed)
    net.to(device)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9,
                                                     weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    total_steps = max(1, epochs * len(scenes))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / total_steps) ** 0.9)
    augment = augment or Augmentation()
    history: list[dict] = []
    t0 = time.perf_counter()
    bar = tqdm(total=total_steps, desc="train-teacher", unit="step", file=sys.stderr, disable=not progress)
    for epoch in range(epochs):
        net.train()
        losses = []
        for i in rng.permutation(len(scenes)):
            sc = scenes[int(i)]
            idx = spatial_crop(sc.points, max_points, rng)
            pts = augment(sc.points[idx], rng)
            vox, coords, feats = _voxel_batch(pts, sc.colors[idx], cfg.voxel_size, device, torch.float32)
            target = torch.as_tensor(label_space.to_train_ids(sc.labels[idx][vox.representative]).astype(np.int64),
                                     device=device)
            x = ops.from_voxels(coords, feats)
            out_t = net(ops, x, layer="final")
            # backends may reorder rows: align targets through the output coordinates
            rows = torch.as_tensor(rows_for_points(vox.coords, 1, ops.coordinates(out_t).cpu().numpy()),
                                   device=device)
            aligned = torch.full_like(target, IGNORE)
            aligned[rows] = target
            if bool((aligned != IGNORE).any()):
                loss = F.cross_entropy(ops.features(out_t), aligned, ignore_index=IGNORE)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}" if losses else "-")
        entry: dict = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else None,
                       "lr": float(sched.get_last_lr()[0])}
        if val_scenes:
            entry["val"] = evaluate_scenes(net, ops, val_scenes, label_space, cfg.voxel_size, device)
        history.append(entry)
    bar.close()
    out = Path(out)
    save_teacher_checkpoint(net.state_dict(), out)
    report = {
        "checkpoint": str(out), "checkpoint_sha256": checkpoint_sha256(out),
        "config": dataclasses.asdict(cfg) | {"backend": backend},
        "label_space": label_space.to_json(),
        "train_scenes": [s.name for s in scenes], "val_scenes": [s.name for s in val_scenes],
        "epochs": epochs, "lr": lr, "optimizer": optimizer, "seed": seed, "max_points": max_points,
        "history": history, "seconds": time.perf_counter() - t0,
        "val": history[-1].get("val") if history else None,
    }
    sidecar_path(out).write_text(json.dumps(report, indent=2))
    return report
