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


def _dn_rank(rank: int, world: int, port: int, x: torch.Tensor, ref: torch.Tensor, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        dn1, dn2 = DimensionNorm(3), DimensionNorm(3, target="tracked", target_channels=1)
        dn1.set_target_stats([1.0, 2.0, 3.0], [1.0, 4.0, 9.0])
        dn1.sync = dn2.sync = True
        part = slice(rank * 2, rank * 2 + 2)  # each process holds 2 of the 4 samples
        xi = x[part].clone().requires_grad_(True)
        y1 = dn1.train()(xi)
        y2 = dn2.train()(xi.detach(), reference=ref[part])
        (y1 * torch.arange(1.0, 4.0).view(1, 3, 1, 1)).square().sum().backward()
        torch.save({"y1": y1.detach(), "y2": y2, "grad": xi.grad, "rm": dn1.running_mean, "rv": dn1.running_var,
                    "tm": dn2.target_mean, "tv": dn2.target_var}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sync_under_ddp_equals_the_whole_batch(tmp_path) -> None:
    """Two gloo processes with half the batch each and `sync = True` give exactly what one process gets on the
    whole batch: outputs, input gradients, running statistics and DN2's tracked reference statistics."""
    import socket

    import torch.multiprocessing as mp

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 5, 6, generator=gen) * 3 + 1
    ref = torch.randn(4, 8, 5, 6, generator=gen) * 2 - 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dn_rank, args=(2, port, x, ref, str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    dn1, dn2 = DimensionNorm(3), DimensionNorm(3, target="tracked", target_channels=1)
    dn1.set_target_stats([1.0, 2.0, 3.0], [1.0, 4.0, 9.0])
    xw = x.clone().requires_grad_(True)
    y1 = dn1.train()(xw)
    y2 = dn2.train()(x, reference=ref)
    (y1 * torch.arange(1.0, 4.0).view(1, 3, 1, 1)).square().sum().backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        part = slice(rank * 2, rank * 2 + 2)
        torch.testing.assert_close(got["y1"], y1.detach()[part], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["y2"], y2[part], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["grad"], xw.grad[part], atol=1e-4, rtol=1e-4)
        for k, want in (("rm", dn1.running_mean), ("rv", dn1.running_var), ("tm", dn2.target_mean),
                        ("tv", dn2.target_var)):
            torch.testing.assert_close(got[k], want, atol=1e-5, rtol=1e-5)
