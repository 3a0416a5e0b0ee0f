"""Training the 3D teacher on a dataset's 3D labels: cross-entropy on voxels, 3D mIoU on held-out scenes.

A step is ``crops_per_step`` random spatial crops of training scenes, each rotated/scaled/mirrored and colour-
augmented, packed side by side into one sparse tensor (far enough apart that no convolution or pooling mixes two
of them, so BatchNorm sees them as one batch). The loss is the cross-entropy over *points*, each point scored by
its voxel's logits: exactly what the per-point 3D mIoU measures, so a voxel whose points disagree (a picture on a
wall, a chair leg on the floor: 22 % of the synthetic world's points at 5 cm) learns its majority, instead of a
coin toss (its first point's label) or nothing (ignored).
Each voxel's input is ``TeacherConfig.input_features``: its RGB, or RGB and the mean sub-voxel position of its
points (teacher.voxel_inputs), computed after augmentation exactly as extraction computes it. With a point head
(``TeacherConfig.point_head``, network.PointHead) each point is scored from its voxel's feature and its own position
and colour, in training and in the validation score alike.
The learning rate warms up linearly, then decays with the poly policy; SGD (momentum 0.9, SpatioTemporal-
Segmentation's recipe), Adam or AdamW. Every ``eval_every`` steps the held-out scenes are scored, which gives
the learning curve (validation 3D mIoU against training seconds) in the sidecar.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from cache_schema.labels import IGNORE, LabelSpace, sqrt_inverse_weights

from ..formats.records import SceneRecord
from .backends import get_ops, resolve_backend
from .checkpoint import checkpoint_sha256, save_teacher_checkpoint, sidecar_path
from .network import Res16UNet
from .sparse import SparseOps
from .teacher import MAX_STRIDE, TeacherConfig, check_points, point_inputs, voxel_inputs
from .voxelize import Voxelization, rows_for_points, voxelize

OPTIMIZERS = ("sgd", "adam", "adamw")
VOXEL_TARGETS = ("points", "first", "ignore-mixed")
CLASS_WEIGHTS = ("none", "sqrt-inverse")


@dataclasses.dataclass
class Augmentation:
    """Light 3D augmentation: random rotation about z, isotropic scaling, mirror in x."""

    rotate: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    flip: bool = True

    @classmethod
    def off(cls) -> Augmentation:
        return cls(rotate=False, scale=(1.0, 1.0), flip=False)

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


@dataclasses.dataclass
class ColorAugmentation:
    """MinkowskiNet's chromatic augmentation, on 0-255 RGB: per crop, a brightness/contrast scale and a shift of
    each channel (chromatic translation); per point, Gaussian jitter. Off: colours pass through unchanged."""

    enabled: bool = True
    scale: tuple[float, float] = (0.8, 1.2)
    translation: float = 0.1  # ± this fraction of 255 per channel and crop
    jitter: float = 0.03  # standard deviation per point and channel, as a fraction of 255

    def __call__(self, colors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = np.asarray(colors, dtype=np.float32)
        if not self.enabled:
            return c
        c = c * np.float32(rng.uniform(*self.scale))
        c = c + (rng.uniform(-self.translation, self.translation, 3) * 255).astype(np.float32)
        if self.jitter > 0:
            c = c + rng.normal(0.0, self.jitter * 255, c.shape).astype(np.float32)
        return np.clip(c, 0, 255)


@dataclasses.dataclass
class TeacherTrainConfig:
    """How the teacher learns. The defaults are what reached the synthetic world's targets on a 2-core CPU (see
    the README); they are also a sound start on real scans, where the paper's teacher trains far longer."""

    steps: int = 0  # optimisation steps; 0 = epochs × ceil(training scenes / crops_per_step)
    epochs: float = 5.0
    crops_per_step: int = 2  # over all processes (each of N processes draws crops_per_step / N)
    max_points: int = 30000  # points per crop (0 = whole scenes)
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    power: float = 0.9  # poly decay after the warm-up
    voxel_targets: str = "points"  # points | first | ignore-mixed (see the module docstring)
    class_weights: str = "none"  # none | sqrt-inverse: classes weighted by 1/sqrt(point frequency), mean 1
    eval_every: int = 0  # steps between validation scores (0: at the end only)
    seed: int = 0
    geometry: Augmentation = dataclasses.field(default_factory=Augmentation)
    color: ColorAugmentation = dataclasses.field(default_factory=ColorAugmentation)

    def __post_init__(self) -> None:
        if self.voxel_targets not in VOXEL_TARGETS:
            raise ValueError(f"voxel_targets must be one of {VOXEL_TARGETS}, got {self.voxel_targets!r}")
        if self.class_weights not in CLASS_WEIGHTS:
            raise ValueError(f"class_weights must be one of {CLASS_WEIGHTS}, got {self.class_weights!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.crops_per_step < 1 or self.steps < 0 or self.epochs <= 0 or self.lr <= 0:
            raise ValueError(f"invalid teacher training config: crops_per_step={self.crops_per_step}, "
                             f"steps={self.steps}, epochs={self.epochs}, lr={self.lr}")

    def total_steps(self, scenes: int) -> int:
        return self.steps or max(1, math.ceil(self.epochs * math.ceil(scenes / self.crops_per_step)))

    def lr_factor(self, step: int, total: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, total - self.warmup_steps)
        return max(0.0, 1 - (step - self.warmup_steps) / span) ** self.power


def spatial_crop(points: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``max_points`` points nearest (in xy) to a random point: a contiguous piece of the scene."""
    if max_points <= 0 or len(points) <= max_points:
        return np.arange(len(points))
    centre = points[rng.integers(len(points)), :2]
    d = ((points[:, :2] - centre) ** 2).sum(axis=1)
    return np.sort(np.argpartition(d, max_points - 1)[:max_points])


def pack_crops(crops: Sequence[np.ndarray], voxel_size: float) -> np.ndarray:
    """Crops placed side by side along x, each starting at a multiple of the network's largest stride and
    ``4 × MAX_STRIDE`` voxels after the previous one ends: no kernel (reach: one cell of the coarsest grid) and no
    pooling cell spans two crops, so the packed tensor computes each crop as if alone, with shared BatchNorm."""
    cell = MAX_STRIDE * voxel_size
    out, x0 = [], 0.0
    for p in crops:
        q = p - p.min(axis=0)
        q[:, 0] += x0
        out.append(q)
        x0 = (math.floor(float(q[:, 0].max()) / cell) + 1 + 4) * cell
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 3), np.float32)


def voxel_targets(train_ids: np.ndarray, vox: Voxelization, ignore_mixed: bool) -> np.ndarray:
    """One training id per voxel: its representative point's, or IGNORE where ``ignore_mixed`` and the voxel's
    labelled points disagree (unlabelled points never make a voxel mixed)."""
    target = train_ids[vox.representative].astype(np.int64)
    if not ignore_mixed:
        return target
    ids = train_ids.astype(np.int64)
    labelled = ids != IGNORE
    lo = np.full(len(vox.coords), np.iinfo(np.int64).max)
    hi = np.full(len(vox.coords), -1)
    np.minimum.at(lo, vox.point_voxel[labelled], ids[labelled])
    np.maximum.at(hi, vox.point_voxel[labelled], ids[labelled])
    mixed = (hi >= 0) & (lo != hi)
    target[mixed] = IGNORE
    return target


def class_weights(train_ids: Sequence[np.ndarray], num_classes: int, kind: str) -> np.ndarray | None:
    """Loss weight per training id: None for ``none``; for ``sqrt-inverse`` 1/sqrt(point frequency), scaled so
    that the average point weighs 1 (mIoU counts a rare class as much as the wall; the plain loss does not).
    Classes absent from training keep weight 1."""
    if kind == "none":
        return None
    counts = np.zeros(num_classes, np.float64)
    for ids in train_ids:
        counts += np.bincount(ids[ids != IGNORE].astype(np.int64), minlength=num_classes)[:num_classes]
    return sqrt_inverse_weights(counts)


def _voxel_batch(points: np.ndarray, colors: np.ndarray, cfg: TeacherConfig, device: torch.device, dtype):
    vox = voxelize(points, cfg.voxel_size, align=MAX_STRIDE)
    feats = torch.as_tensor(voxel_inputs(points, colors, vox, cfg.voxel_size, cfg.input_features), dtype=dtype,
                            device=device)
    return vox, torch.as_tensor(vox.coords, device=device), feats


def _point_logits(net: Res16UNet, ops: SparseOps, x, vox: Voxelization, points: np.ndarray, colors: np.ndarray,
                  cfg: TeacherConfig, device: torch.device) -> torch.Tensor:
    """(N, classes) logits of every point: its voxel's, plus the point head's where the network has one."""
    block8 = net(ops, x, layer="block8")
    # backends may reorder rows: points reach theirs through block8's coordinates
    rows = torch.as_tensor(rows_for_points(vox.point_coords, 1, ops.coordinates(block8).cpu().numpy()),
                           device=device)
    inputs = (torch.as_tensor(point_inputs(points, colors, cfg.voxel_size), device=device)
              if net.point_head is not None else None)
    return net.point_logits(ops, block8, rows, inputs)


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


def _scores(conf: np.ndarray, label_space: LabelSpace) -> dict:
    miou, ious = miou_from_confusion(conf)
    total = conf.sum()
    return {"miou": miou, "iou": dict(zip(label_space.names, ious, strict=True)),
            "accuracy": float(np.trace(conf) / total) if total else 0.0, "points": int(total)}


@torch.no_grad()
def evaluate_scenes(net: Res16UNet, ops: SparseOps, scenes: Sequence[SceneRecord], label_space: LabelSpace,
                    cfg: TeacherConfig, device: torch.device, *, with_confusion: bool = False) -> dict:
    """Per-point 3D mIoU (each point takes its voxel's prediction, or the point head's). ``with_confusion``: also
    ``confusion``, the (classes × classes) point counts, rows = ground truth, columns = prediction."""
    net.eval()
    n = label_space.num_classes
    conf = np.zeros((n, n), np.int64)
    dtype = next(net.parameters()).dtype
    for sc in scenes:
        check_points(sc.points, sc.colors, where=f"scene {sc.name}")
        if len(sc.points) == 0:
            continue
        vox, coords, feats = _voxel_batch(sc.points, sc.colors, cfg, device, dtype)
        pred = _point_logits(net, ops, ops.from_voxels(coords, feats), vox, sc.points, sc.colors, cfg,
                             device).argmax(dim=1).cpu().numpy()
        conf += _confusion(pred, label_space.to_train_ids(sc.labels), n)
    return _scores(conf, label_space) | ({"confusion": conf.tolist()} if with_confusion else {})


def voxel_ceiling(scenes: Sequence[SceneRecord], label_space: LabelSpace, voxel_size: float) -> dict:
    """What a classifier of voxels can score at most: every point given its voxel's majority label (ignored points
    do not vote), scored like ``evaluate_scenes``. A teacher at its ceiling in a class needs smaller voxels or a
    point head there, not more training."""
    n = label_space.num_classes
    conf = np.zeros((n, n), np.int64)
    for sc in scenes:
        if len(sc.points) == 0:
            continue
        vox = voxelize(sc.points, voxel_size, align=MAX_STRIDE)
        ids = label_space.to_train_ids(sc.labels)
        keep = ids != IGNORE
        votes = np.zeros((len(vox.coords), n), np.int64)
        np.add.at(votes, (vox.point_voxel[keep], ids[keep].astype(np.int64)), 1)
        conf += _confusion(votes.argmax(axis=1)[vox.point_voxel], ids, n)
    return _scores(conf, label_space)


def training_backend(device: str = "cpu") -> str:
    """`auto` for training: spconv where it imports and runs on `device` (run on one thread it is deterministic and
    still ~3x faster than MinkowskiEngine on two here), else MinkowskiEngine (its CPU backward is ~5x faster than
    the pure-torch one), else torch."""
    from .backends import resolve_backend

    for name in ("spconv", "minkowski"):
        try:
            return resolve_backend(name, device)
        except RuntimeError:
            continue
    return "torch"


@contextmanager
def _training_threads(backend: str, device: torch.device, world: int) -> Iterator[None]:
    """spconv's multithreaded CPU kernels race (see backend_spconv), its backward included: it trains on one thread
    per process (several processes, `--processes`, use the other cores). Other backends share the cores."""
    if device.type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1 if backend == "spconv" else max(1, n // world))
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _world() -> tuple[int, int]:
    """(rank, world size) of the process group the caller set up (one process: (0, 1))."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Data parallelism by hand: one all-reduce of every gradient, flattened (a sum of two is exact either way
    round, so two processes train exactly as reproducibly as one)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset: offset + g.numel()].view_as(g)
        offset += g.numel()


class _CropSampler:
    """Draws the crops of a step: scenes in shuffled passes, a random spatial crop of each, augmented."""

    def __init__(self, scenes: Sequence[SceneRecord], label_space: LabelSpace, recipe: TeacherTrainConfig,
                 rng: np.random.Generator, crops: int):
        self.scenes, self.recipe, self.rng, self.crops = scenes, recipe, rng, crops
        self.train_ids = [label_space.to_train_ids(s.labels) for s in scenes]
        self.order: list[int] = []

    def _next_scene(self) -> int:
        if not self.order:
            self.order = [int(i) for i in self.rng.permutation(len(self.scenes))]
        return self.order.pop()

    def step(self, voxel_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(points, colours 0-255, training ids) of one step's packed crops."""
        r, rng = self.recipe, self.rng
        pts, cols, ids = [], [], []
        for _ in range(self.crops):
            i = self._next_scene()
            sc = self.scenes[i]
            idx = spatial_crop(sc.points, r.max_points, rng)
            pts.append(r.geometry(sc.points[idx], rng))
            cols.append(r.color(sc.colors[idx], rng))
            ids.append(self.train_ids[i][idx])
        return pack_crops(pts, voxel_size), np.concatenate(cols), np.concatenate(ids)


def train_teacher(scenes: Sequence[SceneRecord], val_scenes: Sequence[SceneRecord], label_space: LabelSpace,
                  cfg: TeacherConfig, recipe: TeacherTrainConfig | None = None, *, out: Path,
                  progress: bool = True, extra_scenes: int = 0) -> dict:
    """Train Res16UNet (+ ``final`` classifier to ``label_space``) and save it in the canonical layout.

    Writes ``out`` (state_dict) and its sidecar ``out.json`` (config, recipe, learning curve, final per-class
    validation IoU). ``extra_scenes``: how many of ``scenes`` are 3D-only extra rooms (recorded). Returns the
    sidecar's content.

    Under an initialised process group (gloo; ``pipeline`` starts one for ``--processes N``) every process draws
    its own crops (seeded by rank), gradients are averaged, and rank 0 alone scores and writes.
    """
    recipe = recipe or TeacherTrainConfig()
    if not scenes:
        raise ValueError("train_teacher needs at least one training scene")
    for sc in list(scenes) + list(val_scenes):
        check_points(sc.points, sc.colors, where=f"scene {sc.name}")
        if len(sc.labels) != len(sc.points):
            raise ValueError(f"scene {sc.name}: {len(sc.labels)} labels for {len(sc.points)} points")
    cfg = dataclasses.replace(cfg, num_classes=label_space.num_classes)
    rank, world = _world()
    if recipe.crops_per_step % world:
        raise ValueError(f"crops_per_step {recipe.crops_per_step} is not divisible by the {world} processes")
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng([recipe.seed, rank])
    device = torch.device(cfg.device)
    backend = resolve_backend(cfg.backend if cfg.backend != "auto" else training_backend(cfg.device),
                              cfg.device)
    ops = get_ops(backend, cfg.device)
    if cfg.point_head and recipe.voxel_targets != "points":
        raise ValueError(f"a point head learns from points: voxel_targets {recipe.voxel_targets!r} gives it none")
    net = Res16UNet(cfg.in_channels, cfg.num_classes, cfg.architecture, point_head=cfg.point_head)
    net.reset_parameters(recipe.seed)
    net.to(device)
    params = list(net.parameters())
    if recipe.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=0.9,
                                                     weight_decay=recipe.weight_decay)
    elif recipe.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    total = recipe.total_steps(len(scenes))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: recipe.lr_factor(s, total))
    sampler = _CropSampler(scenes, label_space, recipe, rng, recipe.crops_per_step // world)
    val_scenes = val_scenes if rank == 0 else []
    weights = class_weights(sampler.train_ids, cfg.num_classes, recipe.class_weights)
    weight_t = torch.as_tensor(weights, dtype=torch.float32, device=device) if weights is not None else None
    curve: list[dict] = []
    losses: list[float] = []
    train_seconds = 0.0
    t_start = time.perf_counter()
    bar = tqdm(total=total, desc="train-teacher", unit="step", file=sys.stderr, disable=not progress or rank > 0)
    with _training_threads(backend, device, world):
        for step in range(total):
            t0 = time.perf_counter()
            net.train()
            pts, cols, ids = sampler.step(cfg.voxel_size)
            vox, coords, feats = _voxel_batch(pts, cols, cfg, device, torch.float32)
            x = ops.from_voxels(coords, feats)
            if recipe.voxel_targets == "points":
                logits = _point_logits(net, ops, x, vox, pts, cols, cfg, device)
                aligned = torch.as_tensor(ids.astype(np.int64), device=device)
            else:
                out_t = net(ops, x, layer="final")
                # backends may reorder rows: targets reach their rows through the output coordinates
                rows = rows_for_points(vox.coords, 1, ops.coordinates(out_t).cpu().numpy())
                logits = ops.features(out_t)[torch.as_tensor(rows, device=device)]
                aligned = torch.as_tensor(voxel_targets(ids, vox, recipe.voxel_targets == "ignore-mixed"),
                                          device=device)
            if bool((aligned != IGNORE).any()):
                loss = F.cross_entropy(logits, aligned, weight=weight_t, ignore_index=IGNORE)
            else:  # nothing labelled in these crops: a zero loss keeps every process in step
                loss = logits.sum() * 0.0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                _average_gradients(params, world)
            opt.step()
            losses.append(float(loss.detach()))
            sched.step()
            train_seconds += time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}" if losses else "-")
            last = step + 1 == total
            if val_scenes and ((recipe.eval_every and (step + 1) % recipe.eval_every == 0) or last):
                val = evaluate_scenes(net, ops, val_scenes, label_space, cfg, device)
                window = losses[-(recipe.eval_every or total):]
                curve.append({"step": step + 1, "seconds": round(train_seconds, 2),
                              "loss": float(np.mean(window)) if window else None,
                              "lr": float(sched.get_last_lr()[0]), "val_miou": val["miou"],
                              "val_accuracy": val["accuracy"]})
                bar.set_postfix(loss=f"{losses[-1]:.3f}" if losses else "-", val_miou=f"{100 * val['miou']:.1f}")
    bar.close()
    if rank > 0:
        return {}
    final_val = val if val_scenes else None
    if not val_scenes:
        curve.append({"step": total, "seconds": round(train_seconds, 2),
                      "loss": float(np.mean(losses[-50:])) if losses else None, "lr": float(sched.get_last_lr()[0])})
    out = Path(out)
    save_teacher_checkpoint(net.state_dict(), out)
    report = {
        "checkpoint": str(out), "checkpoint_sha256": checkpoint_sha256(out),
        "config": dataclasses.asdict(cfg) | {"backend": backend},
        "recipe": dataclasses.asdict(recipe),
        "label_space": label_space.to_json(),
        "train_scenes": [s.name for s in scenes], "extra_scenes": extra_scenes,
        "val_scenes": [s.name for s in val_scenes],
        "steps": total, "seed": recipe.seed, "curve": curve,
        "seconds": round(train_seconds, 2), "wall_seconds": round(time.perf_counter() - t_start, 2),
        "final_loss": curve[-1]["loss"] if curve else None,
        "val": final_val,
    }
    sidecar_path(out).write_text(json.dumps(report, indent=2))
    return report

