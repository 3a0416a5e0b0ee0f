"""Semantic-aware discriminators: the batched evaluation equals a per-class loop; shared variant; gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stages.train.model.discriminators import SemanticAwareDiscriminators


def reference(d: SemanticAwareDiscriminators, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """One sample at a time through its own discriminator's six layers."""
    out = []
    for m in range(x.shape[0]):
        k = 0 if d.shared else int(classes[m])
        h = x[m]
        for i, (w, b) in enumerate(zip(d.weights, d.biases, strict=True)):
            h = h @ w[k] + b[k, 0]
            if i < len(d.weights) - 1:
                h = F.leaky_relu(h, 0.2)
        out.append(torch.sigmoid(h[0]))
    return torch.stack(out)


def test_architecture_matches_appendix_e() -> None:
    d = SemanticAwareDiscriminators(20, 96)
    assert [tuple(w.shape[1:]) for w in d.weights] == [(96, 64), (64, 32), (32, 16), (16, 8), (8, 4), (4, 1)]
    per_disc = sum(p.numel() for p in d.parameters()) // 20
    assert per_disc == 8993  # "each discriminator only has 0.009M parameters"


def test_batched_equals_per_class_loop() -> None:
    torch.manual_seed(0)
    d = SemanticAwareDiscriminators(7, 12).double()
    x = torch.randn(101, 12, dtype=torch.float64)
    classes = torch.randint(0, 7, (101,))
    classes[:5] = 3  # imbalance; class 6 may be absent
    classes[classes == 6] = 2
    p = d(x, classes)
    assert p.shape == (101,) and ((p > 0) & (p < 1)).all()
    assert torch.allclose(p, reference(d, x, classes), atol=1e-6)


def test_float32_close_to_reference() -> None:
    torch.manual_seed(1)
    d = SemanticAwareDiscriminators(4, 8)
    x, classes = torch.randn(30, 8), torch.randint(0, 4, (30,))
    assert torch.allclose(d(x, classes), reference(d, x, classes), atol=1e-6)


def test_discriminators_do_not_share_weights() -> None:
    torch.manual_seed(0)
    d = SemanticAwareDiscriminators(3, 8)
    x = torch.randn(1, 8).expand(3, 8)
    p = d(x, torch.tensor([0, 1, 2]))
    assert len(set(p.tolist())) == 3


def test_shared_variant_takes_no_classes() -> None:
    torch.manual_seed(0)
    d = SemanticAwareDiscriminators(5, 8, shared=True)
    assert d.weights[0].shape[0] == 1
    x = torch.randn(20, 8)
    a = d(x)
    assert torch.allclose(a, reference(d, x, torch.zeros(20, dtype=torch.long)), atol=1e-6)
    with pytest.raises(ValueError, match="class-agnostic"):
        d(x, torch.randint(0, 5, (20,)))
    with pytest.raises(ValueError, match="need classes"):
        SemanticAwareDiscriminators(5, 8)(x)
    assert d(torch.zeros(0, 8)).shape == (0,)


def test_gradients_and_detached_parameters() -> None:
    torch.manual_seed(0)
    d = SemanticAwareDiscriminators(3, 8)
    x = torch.randn(10, 8, requires_grad=True)
    c = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
    d.logits(x, c, detach_params=True).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.parameters())
    d.logits(x, c).sum().backward()
    assert all(p.grad is not None for p in d.parameters())


def test_empty_input() -> None:
    d = SemanticAwareDiscriminators(3, 8)
    assert d(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)).shape == (0,)
