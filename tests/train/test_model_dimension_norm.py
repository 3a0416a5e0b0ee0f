"""DimensionNorm: target statistics in train mode, running statistics in eval, DN2's tracked 2D statistics."""

from __future__ import annotations

import pytest
import torch

from stages.train.model.dimension_norm import DimensionNorm


def test_train_output_has_target_statistics() -> None:
    torch.manual_seed(0)
    dn = DimensionNorm(4)
    mean, var = torch.tensor([1.0, -2.0, 0.5, 3.0]), torch.tensor([4.0, 0.25, 1.0, 9.0])
    dn.set_target_stats(mean, var)
    x = torch.randn(8, 4, 10, 10) * 7 + 5  # far from the target
    y = dn.train()(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), mean, atol=1e-4)
    assert torch.allclose(y.var(dim=(0, 2, 3), unbiased=False).sqrt(), var.sqrt(), rtol=1e-3)


def test_deltas_modulate_after_target() -> None:
    dn = DimensionNorm(2)
    dn.set_target_stats([0.0, 1.0], [1.0, 4.0])
    with torch.no_grad():
        dn.delta_sigma.copy_(torch.tensor([2.0, 0.5]))
        dn.delta_mu.copy_(torch.tensor([1.0, -1.0]))
    y = dn.train()(torch.randn(4, 2, 6, 6))
    # Δσ ⊙ (σ̄ x̂ + μ̄) + Δμ: mean = Δσ μ̄ + Δμ, std = Δσ σ̄
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.tensor([1.0, -0.5]), atol=1e-4)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.tensor([2.0, 1.0]), rtol=1e-3)


def test_eval_uses_running_statistics() -> None:
    torch.manual_seed(0)
    dn = DimensionNorm(3, momentum=1.0)  # running stats = last batch's
    dn.set_target_stats(torch.zeros(3), torch.ones(3))
    x = torch.randn(4, 3, 5, 5) * 3 + 2
    dn.train()(x)
    assert torch.allclose(dn.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5)
    dn.eval()
    other = torch.randn(2, 3, 5, 5) * 0.1 - 10
    y = dn(other)
    expected = (other - dn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(dn.running_var.view(1, -1, 1, 1) + dn.eps)
    assert torch.allclose(y, expected, atol=1e-5)
    # and not the batch's own statistics: the eval output of this batch is far from zero mean
    assert y.mean() < -3


def test_tracked_target_follows_reference() -> None:
    torch.manual_seed(0)
    dn2 = DimensionNorm(3, target="tracked", target_channels=1, momentum=0.5)
    assert not bool(dn2.target_stats_set)
    f2d = torch.rand(2, 16, 5, 5) * 4  # mean 2, var 4/3, pooled over all channels
    y = dn2.train()(torch.randn(2, 3, 5, 5), reference=f2d)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), f2d.mean().expand(3), atol=1e-4)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), f2d.std(unbiased=False).expand(3), rtol=1e-3)
    assert bool(dn2.target_stats_set)
    assert torch.allclose(dn2.target_mean, 0.5 * f2d.mean().reshape(1), atol=1e-5)  # lerp from 0 by momentum
    # eval: no reference needed, running target used
    dn2.eval()
    y = dn2(torch.randn(2, 3, 5, 5))
    assert y.shape == (2, 3, 5, 5)


def test_target_stats_validation() -> None:
    dn = DimensionNorm(3)
    with pytest.raises(ValueError, match="3 channels"):
        dn.set_target_stats([0.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="non-negative"):
        dn.set_target_stats([0.0] * 3, [1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="no reference"):
        dn(torch.randn(2, 3, 2, 2), reference=torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match="target_channels"):
        DimensionNorm(3, target="tracked", target_channels=2)
    with pytest.raises(ValueError, match="needs the reference"):
        DimensionNorm(3, target="tracked").train()(torch.randn(2, 3, 2, 2))
