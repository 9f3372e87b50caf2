"""The sequence classifier: a convolutional stem, a GaussianBlock, masked pooling, a linear head.

Shapes: B batch, T time steps, C input channels, W stem width, K classes.
The model takes normalised inputs and returns logits; it never touches files.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gaussian_adaptive_attention import GaussianBlock

from .config import ModelConfig

__all__ = ["SequenceClassifier", "MIN_LENGTH"]

MIN_LENGTH = 2  # the attention's variance over time needs two steps


class ConvLayer(nn.Module):
    """A dilated, residual 1-D convolution that keeps padded steps at zero."""

    def __init__(self, width: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel_size, dilation=dilation, padding="same")
        self.norm = nn.GroupNorm(1, width)

    def forward(self, h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # h: (B, W, T), keep: (B, 1, T) float
        return h + F.gelu(self.norm(self.conv(h))) * keep


class SequenceClassifier(nn.Module):
    """Classifies (B, T, C) sequences with a (B, T) validity mask into K classes."""

    def __init__(self, cfg: ModelConfig, channels: int, n_classes: int) -> None:
        super().__init__()
        assert cfg.width is not None, "resolve the config before building the model"
        w = cfg.width
        self.cfg = cfg
        self.inp = nn.Conv1d(channels, w, cfg.kernel_size, padding="same")
        self.stem = nn.ModuleList(ConvLayer(w, cfg.kernel_size, 2**i) for i in range(cfg.stem_layers))
        axes = {"time": [1], "features": [2], "both": [1, 2]}[cfg.gaa_axes]
        norm_axes = [axes[i % len(axes)] for i in range(cfg.gaa_layers)]
        self.gaa = (
            GaussianBlock(
                norm_axes,
                [cfg.gaa_heads] * cfg.gaa_layers,
                [cfg.gaa_gaussians] * cfg.gaa_layers,
                cfg.gaa_layers,
                mixture=cfg.gaa_mixture,
            )
            if cfg.gaa_layers > 0
            else None
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * w, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: (B, T, C), mask: (B, T) bool
        keep = mask[:, None, :].to(x.dtype)  # (B, 1, T)
        h = self.inp(x.transpose(1, 2)) * keep  # (B, W, T)
        for layer in self.stem:
            h = layer(h, keep)
        h = h.transpose(1, 2)  # (B, T, W)
        if self.gaa is not None:
            h = self.gaa(h, mask=mask[:, :, None])  # (B, T, W)
        valid = mask[:, :, None]  # (B, T, 1)
        n = valid.sum(1).clamp_min(1)  # (B, 1)
        mean = (h * valid).sum(1) / n  # (B, W)
        top = h.masked_fill(~valid, float("-inf")).amax(1)  # (B, W)
        return self.head(self.drop(torch.cat([mean, top], dim=1)))  # (B, K)
