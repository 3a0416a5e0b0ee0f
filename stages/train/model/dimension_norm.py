"""Dimension normalization (paper §3.2, Table 1, Figure 3).

    x̂   = (x - μ_B) / sqrt(σ²_B + eps)                  batch statistics per channel over N, H, W (like BN;
                                                        running statistics, momentum 0.1, in eval mode)
    out = Δσ ⊙ (σ̄_target · x̂ + μ̄_target) + Δμ          Δσ initialised to 1, Δμ to 0 (learnable)

The target statistics (μ̄, σ̄ = sqrt(var + eps)) are what makes DN differ from BN's free affine γ, β:

- **DN1** (``target="fixed"``): the 3D feature's global statistics (μ̄3D, σ̄3D), precomputed over the whole cache
  and given with ``set_target_stats(mean, var)``. They are buffers, so a checkpoint carries them and inference
  (which has no 3D input) uses the same values as training.
- **DN2** (``target="tracked"``): the 2D feature f2d's statistics (μ̄2D, σ̄2D). They are not constants: in train
  mode ``forward(x, reference=f2d)`` uses the (detached) statistics of the current f2d and updates running
  estimates of them (momentum 0.1); in eval mode the running estimates are used, so inference does not depend on
  the test batch. f2d has 512 channels while DN2 calibrates the C3D-channel f3d_sim, so the student builds DN2
  with ``target_channels=1``: one mean and variance pooled over all of f2d's channels, broadcast over C3D.
  (The released code used such scalar 2D statistics too, but as fixed numbers read from a file.)

Under DistributedDataParallel each process sees a slice of the batch. With ``sync = True`` (the trainer sets it with
``model.sync_bn``) the batch statistics of x — and DN2's reference statistics — are all-reduced over the processes,
so the statistics are those of the whole batch, as with SyncBatchNorm; unlike SyncBatchNorm this works on any
backend (gloo on CPU too). The reduction of x's sums is differentiable (its backward all-reduces too), so the
gradient is the whole batch's as well.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum of every process's upstream gradient (y = Σ_r x_r)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g


def _global_moments(t: torch.Tensor, dims: tuple[int, ...], channels: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean, biased variance (float64) and value count of ``t`` over ``dims``, summed over all DDP
    processes; differentiable (the backward all-reduces the gradient too)."""
    td = t.double()
    count = td.new_tensor([t.numel() // channels])
    local = torch.cat([td.sum(dims).reshape(-1), (td * td).sum(dims).reshape(-1), count])
    stats = _AllReduceSum.apply(local)
    n = stats[-1]
    mean = stats[:channels] / n
    return mean, (stats[channels:2 * channels] / n - mean * mean).clamp_min(0), n


class DimensionNorm(nn.Module):
    """DN: batch-normalise ``x`` and re-scale it to target statistics, then apply learnable offsets Δσ, Δμ."""

    def __init__(self, num_channels: int, target: Literal["fixed", "tracked"] = "fixed",
                 target_channels: int | None = None, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if target not in ("fixed", "tracked"):
            raise ValueError(f"DimensionNorm target must be 'fixed' or 'tracked', got {target!r}")
        ct = num_channels if target_channels is None else target_channels
        if ct not in (1, num_channels):
            raise ValueError(f"target_channels must be 1 or {num_channels}, got {ct}")
        self.num_channels, self.target, self.target_channels = num_channels, target, ct
        self.eps, self.momentum = eps, momentum
        self.sync = False  # all-reduce batch statistics over DDP processes (see the module docstring)
        self.delta_sigma = nn.Parameter(torch.ones(num_channels))
        self.delta_mu = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.register_buffer("target_mean", torch.zeros(ct))
        self.register_buffer("target_var", torch.ones(ct))
        # False until set_target_stats (fixed) or the first training batch (tracked): lets callers refuse a
        # DN1 that would silently run with the placeholder 0/1 statistics
        self.register_buffer("target_stats_set", torch.tensor(False))

    def set_target_stats(self, mean: torch.Tensor | list[float], var: torch.Tensor | list[float]) -> None:
        """Set μ̄ and σ̄² (the cache's global feature mean and variance for DN1)."""
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        var_t = torch.as_tensor(var, dtype=torch.float32).flatten()
        if mean_t.numel() != self.target_channels or var_t.numel() != self.target_channels:
            raise ValueError(f"target statistics need {self.target_channels} channels, got mean "
                             f"{mean_t.numel()} and var {var_t.numel()}")
        if not (torch.isfinite(mean_t).all() and torch.isfinite(var_t).all()) or (var_t < 0).any():
            raise ValueError("target statistics must be finite with a non-negative variance")
        self.target_mean.copy_(mean_t)
        self.target_var.copy_(var_t)
        self.target_stats_set.fill_(True)

    def _reference_stats(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Mean and biased variance of ``reference`` per target channel (pooled over all when 1), detached, and the
        number of values per channel they come from (over all processes under `sync`)."""
        ref = reference.detach().float()
        if self.target_channels != 1 and ref.shape[1] != self.target_channels:
            raise ValueError(f"reference has {ref.shape[1]} channels, DimensionNorm tracks {self.target_channels}")
        if self.sync and _distributed():
            dims = (0, 1, 2, 3) if self.target_channels == 1 else (0, 2, 3)
            with torch.no_grad():
                mean, var, n = _global_moments(ref, dims, self.target_channels)
            return mean.float(), var.float(), int(n)
        n = ref.numel() // self.target_channels
        if self.target_channels == 1:
            return ref.mean().reshape(1), ref.var(unbiased=False).reshape(1), n
        return ref.mean(dim=(0, 2, 3)), ref.var(dim=(0, 2, 3), unbiased=False), n

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x̂ with batch statistics (all-reduced under `sync`) in training, running statistics in eval."""
        if not (self.training and self.sync and _distributed()):
            return F.batch_norm(x, self.running_mean, self.running_var, None, None, self.training, self.momentum,
                                self.eps)
        mean, var, n = _global_moments(x, (0, 2, 3), self.num_channels)  # gradients reach every process's slice
        with torch.no_grad():
            self.running_mean.lerp_(mean.float(), self.momentum)
            self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).float(), self.momentum)
        inv = torch.rsqrt(var + self.eps).to(x.dtype).view(1, -1, 1, 1)
        return (x - mean.to(x.dtype).view(1, -1, 1, 1)) * inv

    def forward(self, x: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"DimensionNorm expects (N, {self.num_channels}, H, W), got {tuple(x.shape)}")
        if self.target == "fixed" and reference is not None:
            raise ValueError("a fixed-target DimensionNorm (DN1) takes no reference feature")
        mean, var = self.target_mean, self.target_var
        if self.target == "tracked" and self.training:
            if reference is None:
                raise ValueError("a tracked-target DimensionNorm (DN2) needs the reference feature f2d in training")
            mean, var, n = self._reference_stats(reference)
            with torch.no_grad():
                self.target_mean.lerp_(mean, self.momentum)
                self.target_var.lerp_(var * n / max(n - 1, 1), self.momentum)  # unbiased, as BN's running_var
                self.target_stats_set.fill_(True)
        if self.training:
            self.num_batches_tracked.add_(1)
        x_hat = self._normalize(x)
        scale = (self.delta_sigma * torch.sqrt(var + self.eps)).view(1, -1, 1, 1)
        shift = (self.delta_sigma * mean + self.delta_mu).view(1, -1, 1, 1)
        return x_hat * scale + shift

    def extra_repr(self) -> str:
        return f"{self.num_channels}, target={self.target}, target_channels={self.target_channels}"
