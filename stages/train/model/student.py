"""The student: PSPNet with the 3D-to-2D distillation branch (paper Figure 2, orange; Figure 3).

Shapes for a (B, 3, H, W) image, h = ceil(H/8), w = ceil(W/8), C3D = ``feature_channels`` (the cache's
teacher channels, e.g. 96), Cppm = 4096 (ResNet-50/101) or 1024 (18/34), and M, Conv1's width, = C3D when the
branch reads f2d or 512 when it reads the pyramid-pooling context:

    context (B,Cppm,h,w) ─► 3x3 conv+BN+ReLU ─► f2d (B,512,h,w) ─────────────────────────────┐
       │ branch_input="ppm"                       │ branch_input="f2d" (the default)          │
       └──────────────────────────────────────────┴► Conv1: 3x3 conv(→M)+BN+ReLU,             │
                                                      1x1 conv(M→C3D)                         │
            ─► DN1 (target μ̄3D, σ̄3D: the cache's global statistics)                           │
            ─► Conv2: 3x3 conv(C3D→C3D)+BN+ReLU, 1x1 conv(C3D→C3D)[, ReLU] ─► f3d_sim (B,C3D,h,w)│
            ─► DN2 (target μ̄2D, σ̄2D: statistics of f2d, pooled over its channels)              │
            ─► concat with f2d (B,512+C3D,h,w) ◄─────────────────────────────────────────────────┘
            ─► Conv3: 3x3 conv(512+C3D→512)+BN+ReLU            (``fusion="conv"``; "linear" skips it)
            ─► Dropout(0.1), 1x1 conv ─► logits (B,K,H,W)

``f3d_sim`` (before DN2) is what the paired L2 loss (Eq. 1) and the adversarial loss (Eq. 3-4) see; DN2 only
calibrates it for concatenation, without convolution ("its structure follows that of DN1, except that we do not
need any additional convolutional layer"). At inference the branch needs no 3D input: f3d_sim comes from the
image.

- ``branch_input``: where Conv1 reads. ``"f2d"`` (the default) is the paper's text: Figure 2 draws the branch from
  the 2D feature f2d and DN1 "transform[s] the input 2D feature". ``"ppm"`` is the authors' release: Conv1 reads
  the pyramid-pooling context with a 512-wide 3x3 conv. On PSPNet-50 at 473² the branch adds 42 % to the MACs
  reading the context against 1.2 % reading f2d (Conv3 adds another 6 % either way).
- ``fusion``: Figure 3 names Conv1 to Conv3 while the text describes only Conv1 and Conv2; the authors' release
  fuses the concatenation with a 3x3 conv+BN+ReLU before the classifier, our Conv3 (``"conv"``, the default).
  ``"linear"`` feeds the concatenation straight to dropout and the 1x1 classifier, so the calibrated f3d_sim
  reaches the logits only linearly (the model before issue #14; checkpoints without the field are that model).
- ``conv2_relu``: the paper does not say how Conv2 ends. The teacher's cached feature (block8 of the MinkUNet) is
  taken after a ReLU, so it is never negative; the release ends Conv2 with a ReLU, and so do we by default
  (``False``: a plain 1x1 conv, the model before issue #14). The Multitask model's depth output stays linear:
  one output channel behind a ReLU could die and stop the task.
- ``width``: a multiplier of PSPNet's widths (backbone, f2d, auxiliary head; the numbers above are width 1.0's)
  for cheap CPU runs of the same architecture; the branch's output stays C3D, the cached features' channels.
- ``feature_channels=0``: the PSPNet baseline, no branch.
- ``norm="bn"``: BatchNorm in place of both DNs, convolutions kept (Table 7 ablation).
- ``multitask_depth=True``: the Multitask baseline of Table 2 / Figure 4(a): the same branch predicts one channel
  of depth (output ``depth``) instead of simulating 3D features; BN is used in place of the DNs (there are no
  3D statistics to aim at) and the calibrated depth is concatenated to f2d like f3d_sim.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from stages.train.model.dimension_norm import DimensionNorm
from stages.train.model.pspnet import PSPNet, conv_bn_relu
from stages.train.model.resnet import load_pretrained, scaled_width

MULTITASK_HIDDEN = 96  # branch width of the Multitask baseline when the cache has no features


@dataclass
class StudentConfig:
    depth: int = 50
    num_classes: int = 20
    feature_channels: int = 96  # C3D; 0 = PSPNet baseline without the branch
    norm: Literal["dn", "bn"] = "dn"
    aux: bool = True
    multitask_depth: bool = False
    pretrained: Path | None = None  # ImageNet deep-stem ResNet state_dict; None = random init
    width: float = 1.0  # multiplier of the backbone, f2d and aux widths (pspnet.py); 1.0 = the paper's
    fusion: Literal["conv", "linear"] = "conv"  # Conv3 over concat(f2d, calibrated f3d_sim), or none
    branch_input: Literal["f2d", "ppm"] = "f2d"  # Conv1 reads f2d (the paper's text) or the PPM context (release)
    conv2_relu: bool = True  # Conv2 ends with a ReLU, as the teacher's post-ReLU features do (not for Multitask)

    def __post_init__(self) -> None:
        if self.norm not in ("dn", "bn"):
            raise ValueError(f"norm must be 'dn' or 'bn', got {self.norm!r}")
        if self.feature_channels < 0:
            raise ValueError(f"feature_channels must be >= 0, got {self.feature_channels}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.fusion not in ("conv", "linear"):
            raise ValueError(f"fusion must be 'conv' or 'linear', got {self.fusion!r}")
        if self.branch_input not in ("f2d", "ppm"):
            raise ValueError(f"branch_input must be 'f2d' or 'ppm', got {self.branch_input!r}")

    @property
    def has_branch(self) -> bool:
        return self.multitask_depth or self.feature_channels > 0


@dataclass
class StudentOutput:
    logits: torch.Tensor  # (B, K, H, W)
    aux_logits: torch.Tensor | None  # (B, K, H, W), training mode with aux only
    f2d: torch.Tensor  # (B, 512·width, H/8, W/8)
    f3d_sim: torch.Tensor | None  # (B, C3D, H/8, W/8), None for the baseline and the Multitask model
    depth: torch.Tensor | None = None  # (B, 1, H/8, W/8), Multitask model only


@dataclass
class ModelCost:
    """Deployed (eval-mode, no auxiliary head) cost at one input size; MACs of convolutions only."""

    image_size: tuple[int, int]
    params: int
    params_branch: int  # branch + what concatenating its output adds: Conv3, or the classifier's extra columns
    macs: int
    macs_branch: int

    @property
    def params_without_branch(self) -> int:
        return self.params - self.params_branch

    @property
    def macs_without_branch(self) -> int:
        return self.macs - self.macs_branch


class DistillationBranch(nn.Module):
    """Conv1 → DN1 → Conv2 → f3d_sim, and DN2 for calibrating it before concatenation (see module docstring)."""

    def __init__(self, in_channels: int, mid_channels: int, hidden: int, out_channels: int,
                 norm: Literal["dn", "bn"], out_relu: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(conv_bn_relu(in_channels, mid_channels), nn.Conv2d(mid_channels, hidden, 1))
        # the ReLU has no parameters: the state_dict is the same with and without it
        self.conv2 = nn.Sequential(conv_bn_relu(hidden, hidden), nn.Conv2d(hidden, out_channels, 1),
                                   *([nn.ReLU()] if out_relu else []))
        self.norm = norm
        if norm == "dn":
            self.dn1: nn.Module = DimensionNorm(hidden, target="fixed")
            self.dn2: nn.Module = DimensionNorm(out_channels, target="tracked", target_channels=1)
        else:
            self.dn1, self.dn2 = nn.BatchNorm2d(hidden), nn.BatchNorm2d(out_channels)

    def forward(self, source: torch.Tensor, f2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (f3d_sim, calibrated f3d_sim)."""
        if isinstance(self.dn1, DimensionNorm) and self.training and not bool(self.dn1.target_stats_set):
            raise RuntimeError("DN1 has no 3D target statistics: call Student.set_target_stats(mean, var) with the "
                               "cache's global feature statistics before training")
        f3d_sim = self.conv2(self.dn1(self.conv1(source)))
        calibrated = self.dn2(f3d_sim, f2d) if isinstance(self.dn2, DimensionNorm) else self.dn2(f3d_sim)
        return f3d_sim, calibrated


class Student(nn.Module):
    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        if config.multitask_depth:
            hidden, out = config.feature_channels or MULTITASK_HIDDEN, 1
        else:
            hidden = out = config.feature_channels
        self.pspnet = PSPNet(config.depth, config.num_classes, extra_channels=out if config.has_branch else 0,
                             aux=config.aux, width=config.width, fuse=config.fusion == "conv")
        if config.branch_input == "ppm":  # the release: a 512-wide Conv1 over the wide context
            source, mid = self.pspnet.ppm.out_channels, scaled_width(512, config.width)
        else:
            source, mid = self.pspnet.f2d_channels, hidden
        self.branch = DistillationBranch(
            source, mid, hidden, out, "bn" if config.multitask_depth else config.norm,
            out_relu=config.conv2_relu and not config.multitask_depth) if config.has_branch else None
        if config.pretrained is not None:
            load_pretrained(self.pspnet.backbone, config.pretrained)

    def set_target_stats(self, mean: torch.Tensor | list[float], var: torch.Tensor | list[float]) -> None:
        """Give DN1 the cache's global 3D feature statistics (per channel mean and variance)."""
        if self.branch is None or not isinstance(self.branch.dn1, DimensionNorm):
            raise ValueError("this student has no DN1 (baseline, --norm bn or Multitask): no target statistics")
        self.branch.dn1.set_target_stats(mean, var)

    @property
    def needs_target_stats(self) -> bool:
        return (self.branch is not None and isinstance(self.branch.dn1, DimensionNorm)
                and not bool(self.branch.dn1.target_stats_set))

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(pretrained backbone, newly initialised head+branch): PSPNet trains the second at 10x the LR."""
        backbone = list(self.pspnet.backbone.parameters())
        ids = {id(p) for p in backbone}
        return backbone, [p for p in self.parameters() if id(p) not in ids]

    def forward(self, image: torch.Tensor) -> StudentOutput:
        size = (image.shape[-2], image.shape[-1])
        feats = self.pspnet.encode(image)
        f3d_sim = calibrated = depth = None
        if self.branch is not None:
            source = feats.context if self.config.branch_input == "ppm" else feats.f2d
            sim, calibrated = self.branch(source, feats.f2d)
            if self.config.multitask_depth:
                depth = sim
            else:
                f3d_sim = sim
        logits = self.pspnet.classify(feats.f2d, size, calibrated)
        aux = self.pspnet.auxiliary(feats.layer3, size) if self.training else None
        return StudentOutput(logits=logits, aux_logits=aux, f2d=feats.f2d, f3d_sim=f3d_sim, depth=depth)

    def cost(self, image_size: tuple[int, int] = (473, 473)) -> ModelCost:
        """Parameters and convolution MACs of the deployed model, with and without the branch.

        Counted on a meta-device copy, so it is cheap at any size and leaves this model untouched.
        """
        with torch.device("meta"):
            model = Student(replace(self.config, pretrained=None)).eval()
        deployed = [(n, p) for n, p in model.named_parameters() if not n.startswith("pspnet.aux_head")]
        params = sum(p.numel() for _, p in deployed)
        added = ("branch.", "pspnet.fusion.")  # what distillation adds to PSPNet (the baseline has neither)
        params_branch = sum(p.numel() for n, p in deployed if n.startswith(added))
        # without Conv3 the branch widens the 1x1 classifier instead: its extra input columns
        extra = model.pspnet.extra_channels * self.config.num_classes if model.pspnet.fusion is None else 0
        macs = {"total": 0, "branch": 0}

        def count(name: str):
            def hook(module: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
                per_out = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
                n = out.numel() // out.shape[0] * per_out
                macs["total"] += n
                if name.startswith(added):
                    macs["branch"] += n
            return hook

        handles = [m.register_forward_hook(count(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            model(torch.empty(1, 3, *image_size, device="meta"))
        for h in handles:
            h.remove()
        cells = -(-image_size[0] // 8) * -(-image_size[1] // 8)
        return ModelCost(image_size=image_size, params=params, params_branch=params_branch + extra,
                         macs=macs["total"], macs_branch=macs["branch"] + extra * cells)

