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


def test_checkpoints_without_the_new_fields_rebuild_their_model() -> None:
    # a student_config_json and config_json as written before width/fusion existed
    old_student = json.dumps({"aux": True, "depth": 18, "feature_channels": C3D, "multitask_depth": False,
                              "norm": "dn", "num_classes": K, "pretrained": None}, sort_keys=True)
    old_cfg = load_config().to_dict()
    for key in ("width", "fusion"):
        del old_cfg["model"][key]
    state = make(fusion="linear").state_dict()  # the pre-issue-14 model's layout (see test_model_width)
    sc = student_config_from_json(old_student)
    assert (sc.fusion, sc.width) == ("linear", 1.0)
    Student(sc).load_state_dict(state)  # strict
    ckpt = Checkpoint(iteration=1, total_iters=2, config_json=json.dumps(old_cfg), student_config_json=old_student,
                      model=state)
    assert checkpoint_train_config(ckpt).model.fusion == "linear"
    new = make()
    assert student_config_from_json(json.dumps({**json.loads(old_student), "fusion": "conv"})).fusion == "conv"
    with pytest.raises(RuntimeError, match="fusion"):
        new.load_state_dict(state)
