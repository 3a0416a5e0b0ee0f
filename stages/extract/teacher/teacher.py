"""The 3D teacher as stage one uses it: points and colours in, one feature vector per point out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .backends import get_ops, resolve_backend
from .checkpoint import checkpoint_sha256, load_state_dict_strict, read_state_dict
from .network import FEATURE_LAYERS, Res16UNet
from .sparse import SparseOps
from .voxelize import Voxelization, rows_for_points, voxelize

MAX_STRIDE = 16  # Res16UNet's deepest tensor stride


@dataclass
class TeacherConfig:
    architecture: str = "Res16UNet34C"
    voxel_size: float = 0.02  # metres (the paper's 2 cm)
    layer: str = "block8"  # the 96-channel penultimate feature
    backend: str = "auto"
    device: str = "cpu"
    num_classes: int = 20
    # What each voxel's input holds: "color" (MinkowskiNet's ScanNet input: its first point's RGB) or
    # "color+offset" (also the mean position of its points inside the voxel, -0.5..0.5 per axis: the sub-voxel
    # geometry a coarse grid otherwise loses, e.g. a picture 2 cm proud of its wall at 8 cm voxels).
    input_features: str = "color"
    # a per-point classifier over the voxel network (network.PointHead; ours, not the paper's): it changes the
    # teacher's 3D predictions, not the features stage one caches (block8, one per voxel)
    point_head: bool = False

    def __post_init__(self) -> None:
        if self.input_features not in INPUT_FEATURES:
            raise ValueError(f"unknown input_features {self.input_features!r}; choose one of {list(INPUT_FEATURES)}")

    @property
    def in_channels(self) -> int:
        return INPUT_FEATURES[self.input_features]


INPUT_FEATURES: dict[str, int] = {"color": 3, "color+offset": 6}  # kind -> input channels


def prepare_colors(colors: np.ndarray) -> np.ndarray:
    """MinkowskiEngine's ScanNet input convention: rgb / 255 - 0.5."""
    return np.asarray(colors, dtype=np.float32) / 255.0 - 0.5


def voxel_inputs(points: np.ndarray, colors: np.ndarray, vox: Voxelization, voxel_size: float,
                 kind: str = "color") -> np.ndarray:
    """(M, C) float32 input features of ``vox``'s voxels (see ``TeacherConfig.input_features``)."""
    rgb = prepare_colors(colors[vox.representative])
    if kind == "color":
        return rgb
    if kind != "color+offset":
        raise ValueError(f"unknown input_features {kind!r}; choose one of {list(INPUT_FEATURES)}")
    q = np.asarray(points, dtype=np.float64) / voxel_size  # the same arithmetic as voxelize's floor
    local = q - np.floor(q) - 0.5
    m = len(vox.coords)
    counts = np.bincount(vox.point_voxel, minlength=m).astype(np.float64)
    mean = np.stack([np.bincount(vox.point_voxel, weights=local[:, k], minlength=m) for k in range(3)], axis=1)
    return np.concatenate([rgb, (mean / counts[:, None]).astype(np.float32)], axis=1)


def point_inputs(points: np.ndarray, colors: np.ndarray, voxel_size: float) -> np.ndarray:
    """(N, POINT_INPUTS) float32: each point's own position inside its voxel (-0.5..0.5 per axis, the arithmetic
    of voxelize's floor) and its RGB as the network reads colours (``network.PointHead``'s input)."""
    q = np.asarray(points, dtype=np.float64) / voxel_size
    return np.concatenate([(q - np.floor(q) - 0.5).astype(np.float32), prepare_colors(colors)], axis=1)


def check_points(points: np.ndarray, colors: np.ndarray, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(points)
    colors = np.asarray(colors)
    at = f" ({where})" if where else ""
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (N, 3){at}, got {points.shape}")
    if colors.shape != points.shape:
        raise ValueError(f"colors must be (N, 3) like points {points.shape}{at}, got {colors.shape}")
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise ValueError(f"{int(bad.sum())} of {len(points)} points have NaN/Inf coordinates{at}; "
                         f"first at index {int(np.flatnonzero(bad)[0])}")
    return points, colors


class Teacher:
    """A Res16UNet on one backend, in eval mode, mapping per-voxel features back to points."""

    def __init__(self, net: Res16UNet, ops: SparseOps, cfg: TeacherConfig, checkpoint_id: str):
        if cfg.layer not in FEATURE_LAYERS:
            raise ValueError(f"unknown feature layer {cfg.layer!r}; choose one of {list(FEATURE_LAYERS)}")
        self.net = net.eval()
        self.ops = ops
        self.cfg = cfg
        self.channels: int = net.channels[cfg.layer]
        self.info: dict = {"architecture": cfg.architecture, "backend": ops.name, "checkpoint_sha256": checkpoint_id,
                           "voxel_size": float(cfg.voxel_size), "feature_layer": cfg.layer,
                           "channels": self.channels, "input_features": cfg.input_features}

    @torch.no_grad()
    def point_features(self, points: np.ndarray, colors: np.ndarray) -> np.ndarray:
        """(N, 3) float32 metres, (N, 3) uint8 RGB -> (N, C) float32 features of ``cfg.layer``."""
        points, colors = check_points(points, colors)
        if len(points) == 0:  # also keeps MinkowskiEngine away from an empty coordinate map
            return np.zeros((0, self.channels), np.float32)
        vox = voxelize(points, self.cfg.voxel_size, align=MAX_STRIDE)
        dtype = next(self.net.parameters()).dtype
        device = torch.device(self.cfg.device)
        feats = torch.as_tensor(voxel_inputs(points, colors, vox, self.cfg.voxel_size, self.cfg.input_features),
                                dtype=dtype, device=device)
        coords = torch.as_tensor(vox.coords, device=device)
        out = self.net(self.ops, self.ops.from_voxels(coords, feats), layer=self.cfg.layer)
        layer_coords = self.ops.coordinates(out).cpu().numpy()
        layer_feats = self.ops.features(out).float().cpu().numpy()
        rows = rows_for_points(vox.point_coords, self.ops.tensor_stride(out), layer_coords)
        return np.ascontiguousarray(layer_feats[rows], dtype=np.float32)


def build_network(cfg: TeacherConfig) -> Res16UNet:
    return Res16UNet(cfg.in_channels, cfg.num_classes, cfg.architecture, point_head=cfg.point_head)


def load_teacher(cfg: TeacherConfig, checkpoint: Path | None = None, *, init: str = "checkpoint",
                 seed: int = 0) -> Teacher:
    """A ready teacher. ``init="checkpoint"`` loads ``checkpoint`` strictly; ``init="random"`` draws
    deterministic weights from ``seed`` (debugging, benchmarks), recorded as ``random:<seed>``."""
    if init == "random":
        net = build_network(cfg)
        net.reset_parameters(seed)
        checkpoint_id = f"random:{seed}"
    elif init == "checkpoint":
        if checkpoint is None:
            raise ValueError("load_teacher(init='checkpoint') needs a checkpoint path (or use init='random')")
        state = read_state_dict(Path(checkpoint))
        # the classifier's width is the checkpoint's (a ScanNet teacher has 20 classes, an S3DIS one 13): features
        # are read before `final`, so any labelled teacher serves any dataset; every other key stays strict
        final = state.get("final.kernel")
        if final is not None and final.ndim == 2 and final.shape[1] != cfg.num_classes:
            cfg = dataclasses.replace(cfg, num_classes=int(final.shape[1]))
        # so is its input: the first kernel's width says which features it was trained on
        first = state.get("conv0p1s1.kernel")
        if first is not None and first.ndim >= 2:
            kinds = [k for k, c in INPUT_FEATURES.items() if c == int(first.shape[-2])]
            if not kinds:
                raise ValueError(f"{checkpoint}: conv0p1s1 takes {int(first.shape[-2])} input channels; known "
                                 f"inputs: {INPUT_FEATURES}")
            cfg = dataclasses.replace(cfg, input_features=kinds[0])
        # and whether it scores points with a head of its own (its weights come with it; features skip it)
        cfg = dataclasses.replace(cfg, point_head=any(k.startswith("point_head.") for k in state))
        net = build_network(cfg)
        load_state_dict_strict(net, state, source=str(checkpoint))
        checkpoint_id = checkpoint_sha256(Path(checkpoint))
    else:
        raise ValueError(f"init must be 'checkpoint' or 'random', got {init!r}")
    backend = resolve_backend(cfg.backend, cfg.device)
    net = net.to(cfg.device)
    return Teacher(net, get_ops(backend, cfg.device), cfg, checkpoint_id)
