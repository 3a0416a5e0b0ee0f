"""The student's objectives (paper §3.1 Eq. 1-2, §3.3 Eq. 3-4) and their weights.

- ``segmentation_loss``: softmax cross-entropy (Eq. 2), pixels labelled 255 ignored, plus 0.4 × the auxiliary
  head's cross-entropy (PSPNet).
- ``feature_l2_loss`` (L_p, Eq. 1): ||f3D_i − f3D_sim_i||² **summed over the C3D channels** and **averaged over
  the covered cells i** of the batch (Eq. 1 sums over cells; averaging makes the 0.03 weight independent of
  coverage and batch size; the authors' released code normalises the same way). 0 when no cell is covered.
- ``depth_loss``: the Multitask baseline's depth regression on covered cells (L2 by default, the same form as
  L_p with the branch output swapped for depth; or L1).
- ``SemanticAwareAdversarialLoss``: Eq. 3 (discriminators: real 3D features of class c positive, f3D_sim at
  cells of class c negative) and Eq. 4 (generator Φ2D: make D_c say "3D"), written with logits
  (``softplus``) for numerical stability. Each class's samples are averaged first and the classes then averaged,
  so a rare class weighs as much as the wall; at most ``max_per_class`` samples per class and batch are used.
  With ``shared=True`` (Table 7's baseline without semantics) nothing is per class: one pool of 2D and one of 3D
  features, each drawn uniformly from the usable cells (at most ``max_per_class`` × classes, the per-class
  sampler's ceiling), one mean over the positives plus one over the negatives, and no class index reaches the
  discriminator. The cells a class map marks usable (a valid training id) are the same in both variants, so the
  ablation differs in semantics only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cache_schema.labels import IGNORE
from stages.train.batch import Batch
from stages.train.config import LossWeights
from stages.train.model.discriminators import SemanticAwareDiscriminators
from stages.train.model.student import StudentOutput


def _check_grid(name: str, x: torch.Tensor, mask: torch.Tensor) -> None:
    if x.dim() != 4 or mask.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"{name}: expected (B,C,h,w) and a (B,h,w) mask, got {tuple(x.shape)} and "
                         f"{tuple(mask.shape)}")


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, aux_logits: torch.Tensor | None = None,
                      aux_weight: float = 0.4, class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over non-ignored pixels (+ ``aux_weight`` × the auxiliary one); 0 if all are ignored.
    ``class_weight``: a loss weight per class (the paper: none), as ``F.cross_entropy``'s ``weight``."""
    if labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    labels = labels.long()
    if not bool((labels != IGNORE).any()):
        zero = logits.sum() * 0.0  # keeps the graph, avoids CE's 0/0 = NaN
        return zero if aux_logits is None else zero + aux_logits.sum() * 0.0
    loss = _cross_entropy(logits, labels, class_weight)
    if aux_logits is not None:
        loss = loss + aux_weight * _cross_entropy(aux_logits, labels, class_weight)
    return loss


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``F.cross_entropy`` over (B,K,H,W) logits; those laid out channels-last (the training upsampling's) are read
    as (B·H·W, K) rows, the same loss without PyTorch's strided log-softmax over the class dimension."""
    rows = logits.permute(0, 2, 3, 1)
    if rows.is_contiguous():
        return F.cross_entropy(rows.reshape(-1, logits.shape[1]), labels.reshape(-1), weight=weight,
                               ignore_index=IGNORE)
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE)


def feature_l2_loss(f3d_sim: torch.Tensor, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_p: per covered cell the squared L2 distance over channels, averaged over covered cells (0 if none)."""
    _check_grid("feature_l2_loss", f3d_sim, mask)
    if features.shape != f3d_sim.shape:
        raise ValueError(f"cached features {tuple(features.shape)} do not match f3d_sim {tuple(f3d_sim.shape)}")
    covered = mask.bool().unsqueeze(1)
    # the target is f3d_sim itself off the covered cells: an uncovered cell's cached value (0, or garbage, even
    # NaN) can reach neither the loss nor its gradient
    target = torch.where(covered, features.to(f3d_sim.dtype), f3d_sim.detach())
    return ((f3d_sim - target) ** 2).sum() / covered.sum().clamp_min(1).to(f3d_sim.dtype)


def depth_loss(pred: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Multitask baseline: L2 (or L1) between predicted (B,1,h,w) and cached (B,h,w) depth on covered cells."""
    _check_grid("depth_loss", pred, mask)
    if pred.shape[1] != 1 or depth.shape != mask.shape:
        raise ValueError(f"depth_loss: prediction {tuple(pred.shape)} vs depth {tuple(depth.shape)}")
    if kind not in ("l1", "l2"):
        raise ValueError(f"depth loss kind must be 'l1' or 'l2', got {kind!r}")
    p = pred[:, 0]
    diff = p - torch.where(mask.bool(), depth.to(p.dtype), p.detach())  # uncovered cells: exactly 0, no gradient
    err = diff.abs() if kind == "l1" else diff**2
    return err.sum() / mask.sum().clamp_min(1).to(err.dtype)


def labels_at_cells(labels: torch.Tensor, grid: tuple[int, int], stride: int = 8) -> torch.Tensor:
    """Pixel labels (B,H,W) read at the stride grid's cells (cell (i,j) = pixel (stride·i, stride·j))."""
    out = labels[:, ::stride, ::stride]
    if out.shape[1:] != grid:
        raise ValueError(f"labels {tuple(labels.shape)} give a {tuple(out.shape[1:])} grid, expected {grid}")
    return out


def sample_per_class(features: torch.Tensor, classes: torch.Tensor, num_classes: int, max_per_class: int,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature vectors of a (B,C,h,w) map at cells whose class (B,h,w) is a valid id, at most ``max_per_class``
    of each class drawn uniformly; returns ((M,C), (M,))."""
    _check_grid("sample_per_class", features, classes)
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    cls = classes.reshape(-1).long()
    idx = torch.nonzero((cls >= 0) & (cls < num_classes)).squeeze(1)
    if idx.numel() == 0:
        return flat[:0], cls[:0]
    idx = idx[torch.randperm(idx.numel(), generator=generator, device="cpu").to(idx.device)]
    order = torch.argsort(cls[idx], stable=True)  # a random order within each class
    idx = idx[order]
    c = cls[idx]
    counts = torch.bincount(c, minlength=num_classes)
    rank = torch.arange(idx.numel(), device=idx.device) - (torch.cumsum(counts, 0) - counts)[c]
    keep = idx[rank < max_per_class]
    return flat[keep], cls[keep]


def sample_uniform(features: torch.Tensor, usable: torch.Tensor, max_samples: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Feature vectors (M, C) of a (B,C,h,w) map at up to ``max_samples`` cells where ``usable`` (B,h,w), drawn
    uniformly without replacement and without regard to any class."""
    _check_grid("sample_uniform", features, usable)
    flat = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    idx = torch.nonzero(usable.reshape(-1)).squeeze(1)
    pick = torch.randperm(idx.numel(), generator=generator, device="cpu")[:max_samples]
    return flat[idx[pick.to(idx.device)]]


def _class_balanced_mean(per_sample: torch.Tensor, classes: torch.Tensor, num_classes: int) -> tuple[
        torch.Tensor, torch.Tensor]:
    """Per-class means of ``per_sample`` (K,) and the mask of classes that have samples."""
    sums = per_sample.new_zeros(num_classes).index_add(0, classes, per_sample)
    counts = torch.bincount(classes, minlength=num_classes).to(per_sample.dtype)
    return sums / counts.clamp_min(1), counts > 0


class SemanticAwareAdversarialLoss(nn.Module):
    """SAAL: the discriminators {D_c} and the two objectives of the alternating training (Eq. 3, Eq. 4); with
    ``shared`` the class-agnostic ablation (one D, one pool of samples; the classes below are then ``None``)."""

    def __init__(self, num_classes: int, in_channels: int, shared: bool = False, max_per_class: int = 256) -> None:
        super().__init__()
        self.num_classes, self.max_per_class, self.shared = num_classes, max_per_class, shared
        self.discriminators = SemanticAwareDiscriminators(num_classes, in_channels, shared=shared)

    def sample(self, features: torch.Tensor, classes: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Samples of a (B,C,h,w) map at cells with a valid class (B,h,w): per class, or (shared) one uniform pool
        whose classes are dropped here, before anything reaches the discriminator."""
        if not self.shared:
            return sample_per_class(features, classes, self.num_classes, self.max_per_class, generator)
        usable = (classes >= 0) & (classes < self.num_classes)
        return sample_uniform(features, usable, self.max_per_class * self.num_classes, generator), None

    def discriminator_loss(self, real: torch.Tensor, real_classes: torch.Tensor | None, fake: torch.Tensor,
                           fake_classes: torch.Tensor | None) -> torch.Tensor:
        """Eq. 3: −log D_c(f3D) for real 3D features, −log(1 − D_c(f3D_sim)) for simulated ones (detached, Φ2D
        fixed). Per class c: mean over its negatives + mean over its positives; then the mean over classes
        that have any sample (shared: the mean over the positives + the mean over the negatives). 0 (with a
        graph) when there are none."""
        pos = F.softplus(-self.discriminators.logits(real, real_classes))  # −log σ(z)
        neg = F.softplus(self.discriminators.logits(fake.detach(), fake_classes))  # −log(1 − σ(z))
        if self.shared:
            if pos.numel() + neg.numel() == 0:
                return sum(p.sum() for p in self.discriminators.parameters()) * 0.0
            return sum(t.mean() for t in (pos, neg) if t.numel())
        pos_mean, has_pos = _class_balanced_mean(pos, real_classes.long(), self.num_classes)
        neg_mean, has_neg = _class_balanced_mean(neg, fake_classes.long(), self.num_classes)
        present = has_pos | has_neg
        if not bool(present.any()):
            return sum(p.sum() for p in self.discriminators.parameters()) * 0.0
        return (pos_mean + neg_mean)[present].mean()

    def generator_loss(self, fake: torch.Tensor, fake_classes: torch.Tensor | None) -> torch.Tensor:
        """Eq. 4: −log D_c(f3D_sim) for simulated features of class c, class-balanced (shared: a plain mean);
        gradients reach f3D_sim only (the discriminators' parameters are used detached)."""
        if fake.shape[0] == 0:
            return fake.sum() * 0.0
        per = F.softplus(-self.discriminators.logits(fake, fake_classes, detach_params=True))
        if self.shared:
            return per.mean()
        means, present = _class_balanced_mean(per, fake_classes.long(), self.num_classes)
        return means[present].mean()


@dataclass
class LossTerms:
    total: torch.Tensor
    seg: torch.Tensor  # including the weighted auxiliary term
    paired: torch.Tensor | None = None
    depth: torch.Tensor | None = None

    def scalars(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in vars(self).items() if v is not None}


def paired_objective(out: StudentOutput, batch: Batch, weights: LossWeights,
                     class_weight: torch.Tensor | None = None) -> LossTerms:
    """L = seg·L_s (+aux) + paired·L_p (distillation) or + depth·L_depth (Multitask) for a paired batch."""
    seg = segmentation_loss(out.logits, batch.labels, out.aux_logits, weights.aux, class_weight)
    total = weights.seg * seg
    paired = depth = None
    if out.f3d_sim is not None:
        paired = feature_l2_loss(out.f3d_sim, batch.features, batch.feature_mask)
        total = total + weights.paired * paired
    if out.depth is not None:
        depth = depth_loss(out.depth, batch.depth, batch.feature_mask, weights.depth_kind)
        total = total + weights.depth * depth
    return LossTerms(total=total, seg=seg, paired=paired, depth=depth)
