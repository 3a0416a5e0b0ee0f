"""Losses: masked feature L2, depth, segmentation CE, semantic-aware adversarial loss, per-class sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stages.train.batch import Batch
from stages.train.losses import (
    LossWeights,
    SemanticAwareAdversarialLoss,
    depth_loss,
    feature_l2_loss,
    labels_at_cells,
    paired_objective,
    sample_per_class,
    segmentation_loss,
)
from stages.train.model.student import StudentOutput


def test_feature_l2_counts_covered_cells_only() -> None:
    torch.manual_seed(0)
    sim = torch.randn(2, 4, 3, 5, requires_grad=True)
    feats = torch.randn(2, 4, 3, 5)
    mask = torch.rand(2, 3, 5) > 0.5
    loss = feature_l2_loss(sim, feats, mask)
    m = mask.unsqueeze(1)
    expected = (((sim - feats) ** 2) * m).sum() / mask.sum()  # per cell: sum over channels; mean over cells
    assert torch.allclose(loss, expected)
    garbage = feats.clone()
    garbage[~m.expand_as(feats)] = float("nan")
    loss2 = feature_l2_loss(sim, garbage, mask)
    assert torch.equal(loss, loss2)
    loss2.backward()
    assert torch.isfinite(sim.grad).all()
    assert (sim.grad[~m.expand_as(sim)] == 0).all()


def test_feature_l2_with_no_coverage_is_zero() -> None:
    sim = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = feature_l2_loss(sim, torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()


def test_depth_loss_on_covered_cells() -> None:
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    depth = torch.tensor([[[2.0, 0.0], [1.0, 99.0]]])
    mask = torch.tensor([[[True, False], [True, False]]])
    assert depth_loss(pred, depth, mask, "l1").item() == (1 + 2) / 2
    assert depth_loss(pred, depth, mask, "l2").item() == (1 + 4) / 2


def test_segmentation_loss_ignore_and_aux() -> None:
    torch.manual_seed(0)
    logits, aux = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    labels = torch.randint(0, 4, (2, 3, 3))
    labels[0, 0] = 255
    valid = labels != 255
    ce = -F.log_softmax(logits, 1).gather(1, labels.clamp(max=3).unsqueeze(1))[:, 0][valid].mean()
    ce_aux = -F.log_softmax(aux, 1).gather(1, labels.clamp(max=3).unsqueeze(1))[:, 0][valid].mean()
    assert torch.allclose(segmentation_loss(logits, labels), ce)
    assert torch.allclose(segmentation_loss(logits, labels, aux), ce + 0.4 * ce_aux)
    all_ignored = torch.full((2, 3, 3), 255)
    assert segmentation_loss(logits, all_ignored, aux).item() == 0.0


def _constant_discriminators(loss: SemanticAwareAdversarialLoss, final_bias: list[float]) -> None:
    """Every D_c outputs the logit final_bias[c] whatever its input."""
    with torch.no_grad():
        for p in loss.discriminators.parameters():
            p.zero_()
        loss.discriminators.biases[-1][:, 0, 0] = torch.tensor(final_bias)


def test_adversarial_loss_hand_computed() -> None:
    adv = SemanticAwareAdversarialLoss(num_classes=3, in_channels=4)
    b0, b1 = 0.5, math.log(3.0)
    _constant_discriminators(adv, [b0, b1, -2.0])
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    real, real_c = torch.randn(2, 4), torch.tensor([0, 0])
    fake, fake_c = torch.randn(3, 4, requires_grad=True), torch.tensor([0, 1, 1])
    # Eq. 3 per class: class 0 has positives and a negative, class 1 negatives only, class 2 nothing
    l0 = -math.log(sig(b0)) - math.log(1 - sig(b0))
    l1 = -math.log(1 - sig(b1))
    assert math.isclose(adv.discriminator_loss(real, real_c, fake, fake_c).item(), (l0 + l1) / 2, rel_tol=1e-6)
    # Eq. 4, class-balanced: class 1's two samples count once
    g = (-math.log(sig(b0)) - math.log(sig(b1))) / 2
    gl = adv.generator_loss(fake, fake_c)
    assert math.isclose(gl.item(), g, rel_tol=1e-6)
    gl.backward()
    assert all(p.grad is None for p in adv.discriminators.parameters())


def test_adversarial_loss_is_finite_for_extreme_logits() -> None:
    adv = SemanticAwareAdversarialLoss(num_classes=2, in_channels=4)
    _constant_discriminators(adv, [200.0, -200.0])
    real, fake = torch.randn(2, 4), torch.randn(2, 4)
    c = torch.tensor([0, 1])
    d = adv.discriminator_loss(real, c, fake, c)
    g = adv.generator_loss(fake, c)
    assert torch.isfinite(d) and torch.isfinite(g)
    assert math.isclose(d.item(), (200.0 + 200.0) / 2, rel_tol=1e-6)  # class 0 fake judged real, class 1 real fake
    assert math.isclose(g.item(), 200.0 / 2, rel_tol=1e-6)


def test_adversarial_loss_trains_discriminators() -> None:
    torch.manual_seed(0)
    adv = SemanticAwareAdversarialLoss(num_classes=2, in_channels=4)
    real, fake = torch.randn(64, 4) + 2, torch.randn(64, 4) - 2
    c = torch.randint(0, 2, (64,))
    opt = torch.optim.Adam(adv.parameters(), lr=5e-2)
    first = None
    for _ in range(30):
        loss = adv.discriminator_loss(real, c, fake, c)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_sampling_caps_each_class() -> None:
    torch.manual_seed(0)
    feats = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    classes = torch.full((2, 4, 5), 255)
    classes[0, :, :] = 0  # 20 cells of class 0
    classes[1, 0, :2] = 2  # 2 cells of class 2
    x, c = sample_per_class(feats, classes, num_classes=3, max_per_class=5, generator=torch.Generator().manual_seed(1))
    assert x.shape == (7, 3) and torch.bincount(c, minlength=3).tolist() == [5, 0, 2]
    # every sampled vector is a real cell of its class
    flat = feats.permute(0, 2, 3, 1).reshape(-1, 3)
    for v, k in zip(x, c, strict=True):
        idx = (flat[:, 0] == v[0]).nonzero().item()
        assert classes.reshape(-1)[idx] == k and torch.equal(flat[idx], v)


def _adversarial_step(adv: SemanticAwareAdversarialLoss, real: torch.Tensor, fake: torch.Tensor, real_cls: torch.Tensor,
                fake_cls: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """One unpaired step's adversarial terms as the trainer computes them: losses and their gradients."""
    gen = torch.Generator().manual_seed(7)
    f = fake.detach().requires_grad_(True)
    fake_s, fc = adv.sample(f, fake_cls, generator=gen)
    real_s, rc = adv.sample(real, real_cls, generator=gen)
    adv.zero_grad()
    d = adv.discriminator_loss(real_s, rc, fake_s, fc)
    d.backward()
    g = adv.generator_loss(fake_s, fc)
    g.backward()
    return (d.detach(), g.detach(), f.grad, *(p.grad.clone() for p in adv.parameters()))


def test_shared_discriminator_sees_no_class_information(monkeypatch) -> None:
    torch.manual_seed(0)
    real, fake = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    cls = torch.randint(0, 3, (2, 5, 6))
    cls[0, 0] = 255  # unusable cells stay unusable under any relabelling
    valid = cls != 255
    perm = torch.tensor([2, 0, 1])
    relabelled = [cls, torch.where(valid, perm[cls.clamp(max=2)], cls), torch.where(valid, 0, cls)]
    shared = SemanticAwareAdversarialLoss(num_classes=3, in_channels=4, shared=True, max_per_class=8)
    seen: list = []
    logits = shared.discriminators.logits
    monkeypatch.setattr(shared.discriminators, "logits", lambda x, c=None, **kw: seen.append(c) or logits(x, c, **kw))
    ref = _adversarial_step(shared, real, fake, cls, cls)
    for other in relabelled[1:]:  # real and fake relabelled independently: nothing changes
        got = _adversarial_step(shared, real, fake, other, relabelled[1])
        assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    assert seen and all(c is None for c in seen)  # no class index ever reached the discriminator
    torch.manual_seed(0)
    per_class = SemanticAwareAdversarialLoss(num_classes=3, in_channels=4, max_per_class=8)
    a, b = (_adversarial_step(per_class, real, fake, c, c)[0] for c in relabelled[:2])
    assert not torch.equal(a, b)  # the per-class discriminators do see the classes (the check above can fail)


def test_shared_loss_is_one_mean_per_pool() -> None:
    adv = SemanticAwareAdversarialLoss(num_classes=2, in_channels=2, shared=True)
    with torch.no_grad():  # D's logit is the first input channel (for positive inputs)
        for w, b in zip(adv.discriminators.weights, adv.discriminators.biases, strict=True):
            w.zero_()
            b.zero_()
            w[0, 0, 0] = 1.0
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731  softplus
    real = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [3.0, 0]])
    fake = torch.tensor([[2.0, 0]])
    want = (3 * sp(-1.0) + sp(-3.0)) / 4 + sp(2.0)  # not class-balanced: the three 1s outweigh the 3
    assert math.isclose(adv.discriminator_loss(real, None, fake, None).item(), want, rel_tol=1e-6)
    assert math.isclose(adv.generator_loss(fake, None).item(), sp(-2.0), rel_tol=1e-6)
    assert adv.discriminator_loss(real[:0], None, fake, None).item() == pytest.approx(sp(2.0))


def test_shared_sampling_draws_one_uniform_pool() -> None:
    feats = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    classes = torch.full((2, 4, 5), 255)
    classes[0] = 0  # 20 cells of class 0
    classes[1, 0, :2] = 2  # 2 cells of class 2
    adv = SemanticAwareAdversarialLoss(num_classes=3, in_channels=3, shared=True, max_per_class=3)
    x, c = adv.sample(feats, classes, generator=torch.Generator().manual_seed(1))
    flat = feats.permute(0, 2, 3, 1).reshape(-1, 3)
    usable = set(torch.nonzero((classes < 3).reshape(-1)).squeeze(1).tolist())
    rows = [int((flat[:, 0] == v[0]).nonzero()) for v in x]
    assert c is None and x.shape == (9, 3) and len(set(rows)) == 9 and set(rows) <= usable  # 3 x 3 classes
    x, _ = SemanticAwareAdversarialLoss(3, 3, shared=True, max_per_class=10).sample(feats, classes)
    assert sorted(int((flat[:, 0] == v[0]).nonzero()) for v in x) == sorted(usable)  # fewer usable than the cap


def test_labels_at_cells() -> None:
    labels = torch.arange(17 * 17).reshape(1, 17, 17)
    cells = labels_at_cells(labels, (3, 3))
    assert cells[0, 1, 2].item() == labels[0, 8, 16].item()


def test_paired_objective_weights() -> None:
    torch.manual_seed(0)
    out = StudentOutput(logits=torch.randn(1, 3, 16, 16), aux_logits=None, f2d=torch.zeros(1, 512, 2, 2),
                        f3d_sim=torch.randn(1, 4, 2, 2))
    batch = Batch(image=torch.zeros(1, 3, 16, 16), labels=torch.randint(0, 3, (1, 16, 16)),
                  features=torch.randn(1, 4, 2, 2), feature_mask=torch.tensor([[[True, False], [True, True]]]),
                  feature_labels=torch.zeros(1, 2, 2, dtype=torch.long), depth=torch.zeros(1, 2, 2),
                  index=torch.zeros(1, dtype=torch.long))
    w = LossWeights()
    terms = paired_objective(out, batch, w)
    assert torch.allclose(terms.total, terms.seg + 0.03 * terms.paired)
    assert terms.depth is None and set(terms.scalars()) == {"total", "seg", "paired"}


@pytest.mark.parametrize("weighted", [False, True])
def test_segmentation_loss_is_the_same_for_channels_last_logits(weighted: bool) -> None:
    """The training upsampling hands the loss channels-last logits, read as (pixels, K) rows: the same loss and
    gradient as PyTorch's cross-entropy over NCHW logits, ignored pixels and class weights included."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, 9)
    labels = torch.randint(0, 5, (2, 7, 9))
    labels[0, :3] = 255
    weight = torch.rand(5) + 0.5 if weighted else None
    a = logits.clone().requires_grad_()
    b = logits.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert b.permute(0, 2, 3, 1).is_contiguous()  # the rows path is taken
    la = segmentation_loss(a, labels, a * 0.5, class_weight=weight)
    lb = segmentation_loss(b, labels, b * 0.5, class_weight=weight)
    expected = (F.cross_entropy(logits, labels, weight=weight, ignore_index=255)
                + 0.4 * F.cross_entropy(logits * 0.5, labels, weight=weight, ignore_index=255))
    assert torch.allclose(la, expected, atol=1e-6) and torch.allclose(lb, expected, atol=1e-6)
    la.backward()
    lb.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-7)
