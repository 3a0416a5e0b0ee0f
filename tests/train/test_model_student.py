"""Student shapes, variants, checkpoint round trip of DN statistics, deployed cost."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from stages.train.model.dimension_norm import DimensionNorm
from stages.train.model.student import Student, StudentConfig

C3D = 8


def make(depth: int = 18, **kw) -> Student:
    torch.manual_seed(0)
    cfg = StudentConfig(depth=depth, num_classes=5, feature_channels=kw.pop("feature_channels", C3D), **kw)
    s = Student(cfg)
    if s.needs_target_stats:
        s.set_target_stats(torch.linspace(-1, 1, C3D), torch.linspace(0.5, 2, C3D))
    return s


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_shapes_train_and_eval(depth: int) -> None:
    s = make(depth)
    x = torch.randn(2, 3, 65, 65)
    out = s.train()(x)
    assert out.logits.shape == (2, 5, 65, 65)
    assert out.aux_logits is not None and out.aux_logits.shape == (2, 5, 65, 65)
    assert out.f2d.shape == (2, 512, 9, 9)  # output stride 8: ceil(65/8)
    assert out.f3d_sim is not None and out.f3d_sim.shape == (2, C3D, 9, 9)
    assert out.depth is None
    with torch.no_grad():
        ev = s.eval()(x)
    assert ev.logits.shape == (2, 5, 65, 65) and ev.aux_logits is None
    assert ev.f3d_sim is not None and ev.f3d_sim.shape == (2, C3D, 9, 9)


def test_output_stride_is_8_on_non_multiple_sizes() -> None:
    s = make().eval()
    with torch.no_grad():
        out = s(torch.randn(1, 3, 48, 64))
    assert out.f2d.shape[-2:] == (6, 8) and out.f3d_sim.shape[-2:] == (6, 8)
    assert out.logits.shape[-2:] == (48, 64)


def test_baseline_has_no_branch() -> None:
    s = make(feature_channels=0)
    assert s.branch is None and not s.needs_target_stats
    assert not any(n.startswith("branch") for n, _ in s.named_parameters())
    assert s.pspnet.classifier[1].in_channels == 512
    out = s(torch.randn(2, 3, 33, 33))
    assert out.f3d_sim is None and out.depth is None and out.logits.shape == (2, 5, 33, 33)
    with pytest.raises(ValueError, match="no DN1"):
        s.set_target_stats([0.0], [1.0])


def test_distilled_classifier_takes_f2d_and_calibrated_f3d_sim() -> None:
    s = make()
    assert s.pspnet.fusion[0].in_channels == 512 + C3D and s.pspnet.classifier[1].in_channels == 512
    assert make(fusion="linear").pspnet.classifier[1].in_channels == 512 + C3D
    assert isinstance(s.branch.dn1, DimensionNorm) and isinstance(s.branch.dn2, DimensionNorm)
    assert s.branch.dn1.target == "fixed" and s.branch.dn2.target == "tracked"


def test_segmentation_gradient_reaches_branch() -> None:
    s = make()
    out = s(torch.randn(2, 3, 33, 33))
    out.logits.sum().backward()
    assert s.branch.conv1[1].weight.grad is not None and s.branch.conv1[1].weight.grad.abs().sum() > 0
    assert s.branch.dn1.delta_sigma.grad is not None


def test_bn_variant_replaces_both_dns_and_keeps_convs() -> None:
    s = make(norm="bn")
    assert isinstance(s.branch.dn1, torch.nn.BatchNorm2d) and isinstance(s.branch.dn2, torch.nn.BatchNorm2d)
    assert not s.needs_target_stats
    dn = make()
    conv_shapes = [p.shape for n, p in dn.branch.named_parameters() if n.startswith(("conv1", "conv2"))]
    assert conv_shapes == [p.shape for n, p in s.branch.named_parameters() if n.startswith(("conv1", "conv2"))]
    out = s(torch.randn(2, 3, 33, 33))
    assert out.f3d_sim.shape == (2, C3D, 5, 5)


def test_multitask_predicts_one_depth_channel() -> None:
    s = make(multitask_depth=True, feature_channels=0)
    out = s(torch.randn(2, 3, 33, 33))
    assert out.f3d_sim is None and out.depth is not None and out.depth.shape == (2, 1, 5, 5)
    assert s.pspnet.fusion[0].in_channels == 513  # the same Conv3 as the distilled student


def test_training_without_target_stats_is_refused() -> None:
    torch.manual_seed(0)
    s = Student(StudentConfig(depth=18, num_classes=5, feature_channels=C3D))
    assert s.needs_target_stats
    with pytest.raises(RuntimeError, match="set_target_stats"):
        s(torch.randn(2, 3, 33, 33))


def test_checkpoint_carries_dn_statistics() -> None:
    s = make()
    s(torch.randn(2, 3, 33, 33))  # one training step's worth of running statistics
    state = s.state_dict()
    for key in ("branch.dn1.target_mean", "branch.dn1.target_var", "branch.dn2.target_mean",
                "branch.dn2.target_var", "branch.dn1.running_mean"):
        assert key in state
    assert torch.allclose(state["branch.dn1.target_mean"], torch.linspace(-1, 1, C3D))
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = Student(StudentConfig(depth=18, num_classes=5, feature_channels=C3D))
    assert fresh.needs_target_stats
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert not fresh.needs_target_stats
    for key in ("branch.dn1.target_mean", "branch.dn1.target_var", "branch.dn2.target_mean", "branch.dn2.target_var"):
        assert torch.equal(fresh.state_dict()[key], state[key])
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x).logits, s.eval()(x).logits, atol=1e-5)


@pytest.mark.parametrize("fusion", ["conv", "linear"])
def test_cost_counts_the_branch(fusion: str) -> None:
    s = make(fusion=fusion)
    cost = s.cost((65, 65))
    base = make(feature_channels=0, fusion=fusion).cost((65, 65))
    assert cost.params_without_branch == base.params
    assert cost.macs_without_branch == base.macs
    # what the branch adds to PSPNet: itself, and Conv3 or the classifier's extra input columns
    added = sum(p.numel() for p in s.pspnet.fusion.parameters()) if fusion == "conv" else C3D * 5
    assert cost.params_branch == sum(p.numel() for p in s.branch.parameters()) + added
    assert cost.macs_branch > 0 and base.params_branch == 0


def test_parameter_groups_partition_the_model() -> None:
    s = make()
    backbone, head = s.parameter_groups()
    assert len(backbone) + len(head) == len(list(s.parameters()))
    assert {id(p) for p in backbone}.isdisjoint({id(p) for p in head})
    assert any(p is s.branch.dn1.delta_sigma for p in head)


@pytest.mark.parametrize("grid,size", [((13, 13), (97, 97)), ((4, 7), (25, 49)), ((5, 6), (30, 31)),
                                       ((1, 3), (9, 17))])
def test_training_upsampling_is_bilinear_with_aligned_corners(grid: tuple[int, int], size: tuple[int, int]) -> None:
    """The training path's matrix-product upsampling is F.interpolate(bilinear, align_corners=True): the same
    values and gradients, float32 out whatever the input's dtype and autocast, laid out channels-last."""
    from stages.train.model.pspnet import upsample_bilinear

    torch.manual_seed(0)
    x = torch.randn(2, 3, *grid, dtype=torch.float64)
    a = x.clone().requires_grad_()
    b = x.float().contiguous(memory_format=torch.channels_last).requires_grad_()
    ref = F.interpolate(a, size, mode="bilinear", align_corners=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = upsample_bilinear(b, size)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert out.permute(0, 2, 3, 1).is_contiguous()
    assert torch.allclose(out.double(), ref, atol=1e-5)
    g = torch.randn_like(ref)
    (ref * g).sum().backward()
    (out * g.float()).sum().backward()
    assert torch.allclose(b.grad.double(), a.grad, atol=1e-4)


def test_training_and_evaluation_logits_agree() -> None:
    """Training upsamples with matrix products, evaluation with F.interpolate: without dropout and with BatchNorm's
    running statistics both modes give the same logits."""
    torch.manual_seed(0)
    model = Student(StudentConfig(depth=18, width=0.25, feature_channels=0))
    model.eval()
    x = torch.randn(2, 3, 41, 57)
    with torch.no_grad():
        ref = model(x).logits
        model.train()
        for m in model.modules():  # keep the running statistics and drop dropout: the modes differ in upsampling only
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout2d)):
                m.eval()
        out = model(x)
    assert torch.allclose(out.logits, ref, atol=1e-5)
    assert out.aux_logits is not None and out.aux_logits.shape == ref.shape
