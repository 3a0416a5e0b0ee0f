"""Semantic-aware discriminators {D_c} (paper §3.3, Appendix E).

One discriminator per category shared by the 2D and the 3D data, each six fully-connected layers
in→64→32→16→8→4→1 with LeakyReLU(0.2) after the first five and a sigmoid at the end (≈0.009M parameters each for
96 input channels). The K discriminators never share weights but run as one batched operation: layer l's weights
are stacked as (K, in, out); the samples are grouped by class into a zero-padded (K, n_max, in) tensor and every
layer is one ``torch.baddbmm``.

``shared=True`` is the ablation without semantics (Table 7): one discriminator for all categories. It is
class-agnostic by construction: ``logits``/``forward`` take no classes for it (passing some is an error), so no class
index can reach it; the loss (losses.py) feeds it one pool of features drawn without looking at classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (64, 32, 16, 8, 4, 1)


class SemanticAwareDiscriminators(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, shared: bool = False,
                 negative_slope: float = 0.2) -> None:
        super().__init__()
        self.num_classes, self.in_channels, self.shared = num_classes, in_channels, shared
        self.negative_slope = negative_slope
        k = 1 if shared else num_classes
        dims = (in_channels, *WIDTHS)
        pairs = zip(dims[:-1], dims[1:], strict=True)
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(k, a, b)) for a, b in pairs)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(k, 1, b)) for b in dims[1:])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default, per discriminator: U(-1/sqrt(in), 1/sqrt(in))
        for w, b in zip(self.weights, self.biases, strict=True):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def logits(self, features: torch.Tensor, classes: torch.Tensor | None = None,
               detach_params: bool = False) -> torch.Tensor:
        """Pre-sigmoid scores (M,) of D_{classes[m]}(features[m]), or of the shared D (which takes no classes);
        ``detach_params`` for the generator step (Eq. 4) so that the discriminators' gradients stay untouched."""
        if features.dim() != 2 or features.shape[1] != self.in_channels:
            raise ValueError(f"discriminator features must be (M, {self.in_channels}), got {tuple(features.shape)}")
        if self.shared:
            if classes is not None:
                raise ValueError("the shared discriminator is class-agnostic: it takes no classes")
            return self._layers(features.unsqueeze(0), detach_params)[0, :, 0]
        if classes is None or classes.shape != features.shape[:1]:
            got = None if classes is None else tuple(classes.shape)
            raise ValueError(f"per-class discriminators need classes of shape ({features.shape[0]},), got {got}")
        m = features.shape[0]
        if m == 0:
            return features.new_zeros(0)
        classes = classes.long()
        if bool(((classes < 0) | (classes >= self.num_classes)).any()):
            raise ValueError(f"discriminator classes must lie in 0..{self.num_classes - 1}")
        # group by class: slot (class, rank within class) in a padded (K, n_max, C) tensor
        order = torch.argsort(classes, stable=True)
        sorted_cls = classes[order]
        counts = torch.bincount(sorted_cls, minlength=self.num_classes)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(m, device=features.device) - starts[sorted_cls]
        x = features.new_zeros(self.num_classes, int(counts.max()), self.in_channels)
        x[sorted_cls, rank] = features[order]
        x = self._layers(x, detach_params)
        out = torch.empty_like(features[:, 0])
        out[order] = x[sorted_cls, rank, 0]
        return out

    def _layers(self, x: torch.Tensor, detach_params: bool) -> torch.Tensor:
        """The six layers on a (K, n, in) tensor, discriminator k on row k: (K, n, 1) pre-sigmoid scores."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if detach_params:
                w, b = w.detach(), b.detach()
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = F.leaky_relu(x, self.negative_slope)
        return x

    def forward(self, features: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Probabilities (M,) that each feature comes from the 3D network, judged by its class's discriminator
        (or by the shared one, which takes no classes)."""
        return torch.sigmoid(self.logits(features, classes))
