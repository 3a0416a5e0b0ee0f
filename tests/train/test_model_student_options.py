"""The student's architecture options (issue #14): each one's shapes, parameter count and effect on the forward,
and checkpoints written before an option existed rebuilding the model they hold."""

from __future__ import annotations

import json

import pytest
import torch

from stages.train.checkpoint import Checkpoint
from stages.train.config import load_config
from stages.train.model.student import Student, StudentConfig
from stages.train.trainer import checkpoint_train_config, student_config_from_json

C3D, K = 8, 5


def make(**kw) -> Student:
    torch.manual_seed(0)
    s = Student(StudentConfig(depth=18, num_classes=K, feature_channels=kw.pop("feature_channels", C3D), **kw))
    if s.needs_target_stats:
        s.set_target_stats(torch.zeros(C3D), torch.ones(C3D))
    return s


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_conv3_fuses_the_concatenation() -> None:
    conv, linear = make(fusion="conv"), make(fusion="linear")
    assert linear.pspnet.fusion is None and linear.pspnet.classifier[1].in_channels == 512 + C3D
    assert conv.pspnet.fusion[0].kernel_size == (3, 3) and conv.pspnet.fusion[0].in_channels == 512 + C3D
    assert conv.pspnet.classifier[1].in_channels == 512
    # Conv3 = 3x3 conv (no bias) + BN; the classifier loses its C3D extra input columns
    assert n_params(conv) - n_params(linear) == (512 + C3D) * 512 * 9 + 2 * 512 - C3D * K
    assert make(fusion="conv", feature_channels=0).pspnet.fusion is None  # the baseline stays plain PSPNet
    out = conv.train()(torch.randn(2, 3, 33, 33))
    assert out.logits.shape == (2, K, 33, 33) and out.f3d_sim.shape == (2, C3D, 5, 5)


@pytest.mark.parametrize("fusion", ["conv", "linear"])
def test_fusion_decides_whether_f3d_sim_reaches_the_logits_linearly(fusion: str) -> None:
    head = make(fusion=fusion).pspnet.eval()
    for m in head.modules():  # non-trivial BN statistics, so Conv3's ReLU cuts somewhere
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
    torch.manual_seed(1)
    f2d, a, b = torch.randn(1, 512, 4, 4), torch.randn(1, C3D, 4, 4), torch.randn(1, C3D, 4, 4)
    with torch.no_grad():
        logits = [head.classify(f2d, (4, 4), e) for e in (a, b, a + b, torch.zeros_like(a))]
    additive = torch.allclose(logits[0] + logits[1], logits[2] + logits[3], atol=1e-4)
    assert additive == (fusion == "linear")


def test_branch_input_ppm_reads_the_context_with_a_512_wide_conv1() -> None:
    f2d, ppm = make(branch_input="f2d"), make(branch_input="ppm")
    assert ppm.pspnet.ppm.out_channels == 1024  # ResNet-18: 512 + 4 x 128
    conv1 = ppm.branch.conv1
    assert (conv1[0][0].in_channels, conv1[0][0].out_channels, conv1[1].out_channels) == (1024, 512, C3D)
    assert (f2d.branch.conv1[0][0].in_channels, f2d.branch.conv1[0][0].out_channels) == (512, C3D)
    conv1_ppm = 1024 * 512 * 9 + 2 * 512 + 512 * C3D + C3D
    conv1_f2d = 512 * C3D * 9 + 2 * C3D + C3D * C3D + C3D
    assert n_params(ppm) - n_params(f2d) == conv1_ppm - conv1_f2d
    assert make(branch_input="ppm", width=0.5).branch.conv1[0][0].out_channels == 256  # 512 x width
    mt = make(branch_input="ppm", multitask_depth=True, feature_channels=0)
    assert mt(torch.randn(2, 3, 33, 33)).depth.shape == (2, 1, 5, 5)


@pytest.mark.parametrize("branch_input", ["f2d", "ppm"])
def test_branch_input_decides_what_f3d_sim_depends_on(branch_input: str) -> None:
    s = make(branch_input=branch_input).eval()
    fixed = torch.randn(2, 512, 5, 5)
    s.pspnet.bottleneck.register_forward_hook(lambda _m, _i, _o: fixed)  # f2d no longer depends on the image
    with torch.no_grad():
        a, b = (s(torch.randn(2, 3, 33, 33)).f3d_sim for _ in range(2))
    assert torch.equal(a, b) == (branch_input == "f2d")


def test_conv2_relu_makes_f3d_sim_non_negative_like_the_teacher_features() -> None:
    relu, plain = make(conv2_relu=True), make(conv2_relu=False)
    assert isinstance(relu.branch.conv2[-1], torch.nn.ReLU) and isinstance(plain.branch.conv2[-1], torch.nn.Conv2d)
    assert {k: v.shape for k, v in relu.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    x = torch.randn(2, 3, 33, 33)
    a, b = relu(x).f3d_sim, plain(x).f3d_sim
    assert a.min() >= 0 and b.min() < 0
    assert torch.equal(a, b.clamp_min(0))  # same weights (same seed): the ReLU is the only difference
    depth = make(conv2_relu=True, multitask_depth=True, feature_channels=0)
    assert isinstance(depth.branch.conv2[-1], torch.nn.Conv2d)  # Multitask's depth regression stays linear


def test_checkpoints_without_the_new_fields_rebuild_their_model() -> None:
    # a student_config_json and config_json as written before width/fusion existed
    old_student = json.dumps({"aux": True, "depth": 18, "feature_channels": C3D, "multitask_depth": False,
                              "norm": "dn", "num_classes": K, "pretrained": None}, sort_keys=True)
    old_cfg = load_config().to_dict()
    for key in ("width", "fusion", "branch_input", "conv2_relu"):
        del old_cfg["model"][key]
    state = make(fusion="linear", conv2_relu=False).state_dict()  # the pre-issue-14 layout (test_model_width)
    sc = student_config_from_json(old_student)
    assert (sc.fusion, sc.width, sc.branch_input, sc.conv2_relu) == ("linear", 1.0, "f2d", False)
    Student(sc).load_state_dict(state)  # strict
    ckpt = Checkpoint(iteration=1, total_iters=2, config_json=json.dumps(old_cfg), student_config_json=old_student,
                      model=state)
    model = checkpoint_train_config(ckpt).model
    assert (model.fusion, model.branch_input, model.conv2_relu) == ("linear", "f2d", False)
    new = make()
    assert student_config_from_json(json.dumps({**json.loads(old_student), "fusion": "conv"})).fusion == "conv"
    with pytest.raises(RuntimeError, match="fusion"):
        new.load_state_dict(state)
