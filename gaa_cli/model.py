"""The sequence classifier: a dilated convolutional stem, a GaussianBlock, pooling, a linear head.

Shapes: B batch, T time steps, C input channels, W stem width, K classes,
T' = ceil(T / stride) steps after the stem.
The model takes normalised inputs and returns logits; it never touches files.

The GaussianBlock computes x + sum_l x * w_l, with attention weights w_l that sum to one
over the valid steps (norm axis: time). Summing what the block adds over time is a
learned Gaussian attention pooling; it sits beside plain mean pooling before the head.

`probabilities` weighs the network's class probabilities against those of a ridge classifier on
random convolution features (random_features.py), which training solves before the network's first
step; the weight (`blend`) is chosen on held-out predictions.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gaussian_adaptive_attention import GaussianBlock

from .config import ModelConfig
from .random_features import RandomFeatureRidge

__all__ = ["SequenceClassifier", "MIN_LENGTH"]

MIN_LENGTH = 2  # the attention's statistics over time need two steps


class ConvLayer(nn.Module):
    """Conv -> BatchNorm -> ReLU over (B, W, T), re-zeroing padded steps; residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, stride=stride, dilation=dilation, padding=dilation * (kernel_size // 2))
        self.norm = nn.BatchNorm1d(c_out)
        self.residual = c_in == c_out and stride == 1

    def forward(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # h: (B, W_in, T_in), keep: (B, 1, T_out) float
        z = F.relu(self.norm(self.conv(h)))[..., : keep.shape[-1]] * keep  # (B, W, T_out)
        return z + h if self.residual else z


class SequenceClassifier(nn.Module):
    """Classifies (B, T, C) sequences with a (B, T) validity mask into K classes."""

    def __init__(self, cfg: ModelConfig, channels: int, n_classes: int) -> None:
        super().__init__()
        assert cfg.width is not None and cfg.stride is not None, "resolve the config before building the model"
        w, k = cfg.width, cfg.kernel_size
        self.cfg = cfg
        self.inp = ConvLayer(channels, w, k, stride=cfg.stride)
        self.stem = nn.ModuleList(ConvLayer(w, w, k, dilation=2 ** (i + 1)) for i in range(cfg.stem_layers))
        axes = {"time": [1], "features": [2], "both": [1, 2]}[cfg.gaa_axes]
        n = cfg.gaa_layers
        if n == 0:
            self.gaa = None  # the ablation: identity instead of the block
        elif cfg.attention == "dot":  # the paper's comparison: dot-product self-attention in the same place, same width
            self.gaa = nn.ModuleList(nn.MultiheadAttention(w, cfg.gaa_heads, batch_first=True) for _ in range(n))
        else:
            self.gaa = GaussianBlock([axes[i % len(axes)] for i in range(n)], [cfg.gaa_heads] * n, [cfg.gaa_gaussians] * n, n, mixture=cfg.gaa_mixture)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * w, n_classes)
        self.ridge = RandomFeatureRidge(cfg.ridge_features, cfg.ridge_length or 1, channels, n_classes) if cfg.ridge_features else None
        self.register_buffer("blend", torch.tensor(0.5))  # the network's weight against the ridge's (see probabilities)

    def attend(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The GaussianBlock's layers with their residuals: (B, T', W), valid (B, T', 1) -> (B, T', W).

        Heads split the channels, never time: a layer over time sees each head's channel group along its own
        T'-long block of the axis, (B, H*T', W/H), so every head attends over a whole sequence and its padded
        steps are masked out. A prediction then never depends on how far a batch is padded.
        """
        b, t, w = h.shape
        heads = self.cfg.gaa_heads
        if self.cfg.attention == "dot":
            for layer in self.gaa:
                out, _ = layer(h, h, h, key_padding_mask=~valid[:, :, 0], need_weights=False)  # (B, T', W)
                h = torch.where(valid, out + h, h)
            return h
        for layer in self.gaa.layers:
            if layer.norm_axis == 1:  # over time
                z = h.reshape(b, t, heads, w // heads).transpose(1, 2).reshape(b, heads * t, w // heads)  # (B, H*T', W/H)
                out = layer(z, mask=valid.repeat(1, heads, 1))  # mask (B, H*T', 1)
                out = out.reshape(b, heads, t, w // heads).transpose(1, 2).reshape(b, t, w)  # (B, T', W)
            else:  # over the channels of each step; head h takes the h-th group of them
                out = layer(h, mask=valid)
            h = torch.where(valid, out + h, h)  # the block's residual; padded steps pass through
        return h

    def per_step(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, C), (B, T) -> (P, m): the pooled features of every stem step, P (B, T', 2W), whose sum over
        time is what the head sees, and the stem's validity mask m (B, T').

        The first W features are the step's share of the mean over time, h / n; the other W what the attention
        adds at that step (gaa(h) - h, which is h * w for one layer over time; divided by n over features). So
        the logits are exactly sum_t head(P[:, t]) + bias: explain.py decomposes them step by step.
        """
        mask = mask[:, :: self.cfg.stride]  # (B, T')
        keep = mask[:, None, :].to(x.dtype)  # (B, 1, T')
        h = self.inp(x.transpose(1, 2), keep)  # (B, W, T')
        for layer in self.stem:
            h = layer(h, keep)
        h = h.transpose(1, 2)  # (B, T', W); padded steps are 0
        n = mask.sum(1).clamp_min(1).to(h.dtype)[:, None, None]  # (B, 1, 1)
        if self.gaa is not None:
            added = self.attend(h, mask[:, :, None]) - h  # (B, T', W), 0 at padded steps
            if self.cfg.gaa_axes == "features":
                added = added / n
        else:
            added = torch.zeros_like(h)
        return torch.cat([h / n, added], dim=2), mask  # (B, T', 2W)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: (B, T, C), mask: (B, T) bool -> logits (B, K)
        per_step, _ = self.per_step(x, mask)
        return self.head(self.drop(per_step.sum(1)))

    def probabilities(self, x: torch.Tensor, mask: torch.Tensor, part: str = "both") -> torch.Tensor:
        """(B, T, C), (B, T) -> class probabilities (B, K).

        `both`: the network's and, once it is fitted, the ridge's, weighted `blend` : 1 - `blend` (training chooses
        the weight on held-out predictions); `network` or `ridge`: one half alone.
        """
        ridge = self.ridge is not None and self.ridge.fitted
        if part == "ridge" or (part == "both" and ridge and float(self.blend) == 0.0):  # the ridge alone: no network pass
            assert ridge, "this model has no fitted ridge"
            return torch.softmax(self.ridge(x, mask), dim=-1)
        p = torch.softmax(self(x, mask).float(), dim=-1)
        if part == "both" and ridge:
            p = self.blend * p + (1 - self.blend) * torch.softmax(self.ridge(x, mask), dim=-1)
        return p
