"""The trainer's CUDA paths: mixed-precision steps (bf16; fp16 with its GradScaler) stay finite and learn, the run
reports its peak GPU memory, and SyncBatchNorm with DimensionNorm's all-reduce under DDP (NCCL) computes what plain
BatchNorm computes on the same batch. Run by `make gpu-check`; skipped without CUDA (see conftest.CUDA_STANDIN)."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
from conftest import require_real_cuda
from torch import nn

from stages.train.config import CONFIG_DIR, apply_overrides, load_config
from stages.train.model.dimension_norm import DimensionNorm
from stages.train.model.student import Student, StudentConfig
from stages.train.trainer import Trainer

pytestmark = pytest.mark.cuda


def _trainer(cache, out, device: torch.device, amp: str, iters: int) -> Trainer:
    cfg = apply_overrides(load_config(CONFIG_DIR / "tiny.yaml"),
                          {"log.progress": False, "schedule.iters": iters, "device": str(device), "amp": amp,
                           "optim.lr": 0.02})
    return Trainer(cfg, cache, out)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_steps_are_finite_and_learn(make_cache, tmp_path, cuda_device, amp):
    if amp == "fp16":
        require_real_cuda("fp16 autocast with a GradScaler")
    cache = make_cache("cache", scenes=2, frames=4, h=96, w=128, channels=8)
    # fp16: the GradScaler starts at 2**16 and skips the steps whose gradients overflow while it halves its scale
    iters = 3 if amp == "bf16" else 12
    trainer = _trainer(cache, tmp_path / "run", cuda_device, amp, iters)
    assert trainer.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    with torch.no_grad(), trainer._autocast():  # the forward really runs in the reduced precision
        low = trainer.model(torch.randn(2, 3, 65, 65, device=cuda_device))
    assert low.f2d.dtype == trainer.amp_dtype
    # training upsamples the logits in float32 (pspnet.upsample_bilinear), whatever autocast says
    assert low.logits.dtype == torch.float32
    before = {k: v.detach().clone() for k, v in trainer.student.named_parameters()}
    result = trainer.run()
    assert result.iterations == iters
    with open(result.log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == iters and all(math.isfinite(float(r["loss"])) and math.isfinite(float(r["paired"]))
                                  for r in rows)
    changed = [k for k, v in trainer.student.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert len(changed) > len(before) // 2  # the steps were applied (an fp16 overflow would have skipped them)
    assert all(torch.isfinite(v).all() for v in trainer.student.parameters())
    if amp == "fp16":
        assert 0 < trainer.scaler.get_scale() <= 2.0**16  # halved on overflow, never grown in 12 steps
    if cuda_device.type == "cuda":
        assert result.peak_gpu_memory_mb is not None and result.peak_gpu_memory_mb > 1
    else:
        assert result.peak_gpu_memory_mb is None


def test_sync_batchnorm_under_ddp_equals_plain_batchnorm(tmp_path):
    """One process in an NCCL group: SyncBatchNorm's and DimensionNorm's all-reduced statistics are the batch's own,
    so outputs and gradients must equal the unsynchronized model's (up to the kernels' float rounding)."""
    require_real_cuda("SyncBatchNorm over NCCL")
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device())
    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = Student(StudentConfig(depth=18, num_classes=20, feature_channels=8)).to(device)
        plain.set_target_stats(torch.zeros(8), torch.ones(8))
        synced = copy.deepcopy(plain)
        for m in synced.modules():
            if isinstance(m, DimensionNorm):
                m.sync = True
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(synced)
        assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) > 10
        model = nn.parallel.DistributedDataParallel(synced, device_ids=[device.index])
        x = torch.randn(4, 3, 65, 65, device=device)
        a, b = plain.train()(x), model.train()(x)
        for name in ("logits", "aux_logits", "f3d_sim"):
            u, v = getattr(a, name), getattr(b, name)
            rel = ((u - v).norm() / u.norm()).item()
            assert rel < 5e-3, (name, rel)
        (a.logits.square().mean() + a.f3d_sim.square().mean()).backward()
        (b.logits.square().mean() + b.f3d_sim.square().mean()).backward()
        ga = torch.cat([p.grad.flatten() for _, p in sorted(plain.named_parameters()) if p.grad is not None])
        gb = torch.cat([p.grad.flatten() for _, p in sorted(synced.named_parameters()) if p.grad is not None])
        assert ga.shape == gb.shape and ga.norm() > 0
        assert ((ga - gb).norm() / ga.norm()).item() < 1e-2
    finally:
        dist.destroy_process_group()
