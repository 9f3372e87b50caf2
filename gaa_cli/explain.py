"""What a prediction depends on: an importance for every valid input step (and every input channel) of a
sequence, from the network's exact step-by-step decomposition of its logits.

The head sees the sum over stem steps of per-step features (`SequenceClassifier.per_step`): each step's share
of the mean over time, and what the Gaussian attention adds there (h * w for one layer over time). So the
network's logits are exactly

    logits_k = sum_t' C_k(t') + bias_k,    C_k(t') = head_k(P[t'])

1. Stem step t' supports the predicted class y by its contrast c(t') = C_y(t') - sum_k p_k C_k(t'), with p
   the network's probabilities (the first-order change of log p_y); its importance r(t') = max(c(t'), 0),
   normalised to sum to 1 over the valid stem steps.
2. Back to the input: one backward pass of sum_t' r(t') c(t') (r and p held fixed) gives the gradient of the
   supporting evidence with respect to each input value; importance(t) = max(sum_c x[t, c] grad[t, c], 0),
   normalised to sum to 1 over the sequence's valid steps. Inputs are normalised, so x = 0 is the training
   mean: gradient times input is the evidence a value carries against the mean. This carries the importance
   through the stem's stride and its receptive field (first convolution, dilated residual layers) as the
   network itself weighs them, to first order.
3. Channels (several input columns): c's importance is how much the predicted class's contrast logit drops
   when channel c is set to its training mean everywhere (one extra forward pass per channel), kept where
   positive and normalised to sum to 1.

A sequence with no supporting evidence at all gets uniform weights. Sequences never interact (BatchNorm is in
eval mode, the attention is per sequence), so an explanation, like a prediction, depends on its own sequence
only. The ridge half of a model has no attention: the map explains the network half, whose weight in the
prediction is the model's `blend`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .model import SequenceClassifier

__all__ = ["Explanation", "explain_batch", "normalise"]


@dataclass
class Explanation:
    probs: torch.Tensor  # (B, K) the model's probabilities (both halves, as predict reports them)
    steps: torch.Tensor  # (B, T) importance of each input step; 0 at padding; each row sums to 1
    stem: torch.Tensor  # (B, T') importance of each stem step (before mapping back); each row sums to 1
    channels: torch.Tensor | None  # (B, C) importance of each input channel, rows summing to 1; None for one channel


def normalise(r: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Rows of non-negative `r` scaled to sum to 1 over `valid`; uniform over `valid` where a row is all 0."""
    r = r * valid
    total = r.sum(1, keepdim=True)
    uniform = valid / valid.sum(1, keepdim=True).clamp_min(1)
    return torch.where(total > 0, r / total.clamp_min(1e-30), uniform)


def _contrast(per_step: torch.Tensor, head: torch.nn.Linear, predicted: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(B, T', F) per-step features -> (B, T') each step's contrast for the predicted class, in float32 even under
    autocast (mixed precision on a GPU): the contrasts are differences of nearly equal logits."""
    device_type = per_step.device.type
    with torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else contextlib.nullcontext():
        c = per_step.float() @ head.weight.float().T  # (B, T', K): C_k(t')
    return c.gather(2, predicted[:, None, None].expand(-1, c.shape[1], 1))[..., 0] - (c * p[:, None, :]).sum(-1)


def explain_batch(model: SequenceClassifier, x: torch.Tensor, mask: torch.Tensor) -> Explanation:
    """(B, T, C) normalised inputs, (B, T) mask -> their explanations (see the module docstring)."""
    model.eval()
    with torch.no_grad():
        probs = model.probabilities(x, mask)
        predicted = probs.argmax(1)
        p = torch.softmax(model(x, mask).float(), dim=-1)  # the network's own probabilities
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        per_step, valid = model.per_step(x, mask)
        contrast = _contrast(per_step, model.head, predicted, p)  # (B, T')
        stem = normalise(contrast.detach().clamp_min(0), valid.to(contrast.dtype))
        (stem * contrast).sum().backward()
    evidence = (x.grad * x.detach()).sum(-1)  # (B, T)
    steps = normalise(evidence.clamp_min(0), mask.to(evidence.dtype))
    channels = None
    if x.shape[2] > 1:
        with torch.no_grad():
            base = _contrast_logit(model, x.detach(), mask, predicted, p)
            drops = []
            for ch in range(x.shape[2]):
                occluded = x.detach().clone()
                occluded[:, :, ch] = 0  # the training mean
                drops.append(base - _contrast_logit(model, occluded, mask, predicted, p))
            channels = normalise(torch.stack(drops, 1).clamp_min(0), torch.ones_like(torch.stack(drops, 1)))
    return Explanation(probs, steps.detach(), stem.detach(), channels)


def _contrast_logit(model: SequenceClassifier, x: torch.Tensor, mask: torch.Tensor, predicted: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(B,) the predicted class's logit against the probability-weighted mean logit."""
    logits = model(x, mask).float()
    return logits.gather(1, predicted[:, None])[:, 0] - (logits * p).sum(1)
