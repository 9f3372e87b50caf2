"""A second classifier beside the network: random convolution features and a ridge classifier, fitted in closed form.

A fixed bank of random dilated convolutions (never trained) turns each sequence into F numbers: for every
kernel, dilation and threshold, the fraction of valid time steps where the convolution's output lies above
the threshold. Each threshold lies between two adjacent sorted outputs on a training sequence. A ridge classifier on the
standardised features is then solved exactly (ridge_solve.py), its penalty chosen by leave-one-out error, and its
scores are scaled into logits by the temperature that minimises the leave-one-out log loss.

Multichannel data: each kernel and dilation sums a random subset of 1 to min(C, 9) channels, each channel through
its own random one of the 84 kernels. Had every channel the same kernel, the output would be that kernel applied
to the channels' sum, which cannot tell which of two channels leads the other (a circle drawn clockwise from
counter-clockwise); different kernels per channel can.

Up to DUAL_SAMPLES training samples the ridge is solved from the SVD of all their features; beyond that the
features stream through in chunks into a Gram matrix (memory in F^2, not N), and beyond MAX_SAMPLES a random
subset of that size is used, which the returned summary says (`subsampled_from`).

Shapes: B batch, T time steps, C channels, D dilations, M kernels (84), P thresholds per kernel and dilation,
F = D * M * P features, K classes.
"""

from __future__ import annotations

import contextlib
import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ridge_solve import PENALTIES, TEMPERATURES, solve_dual, solve_streamed

__all__ = ["RandomFeatureRidge", "dilations", "PENALTIES", "TEMPERATURES", "DUAL_SAMPLES", "MAX_SAMPLES"]

# every length-9 kernel with three weights of 2 and six of -1: they sum to zero, so an offset changes nothing
KERNELS = torch.tensor([[2.0 if i in c else -1.0 for i in range(9)] for c in itertools.combinations(range(9), 3)])  # (M, 9)
MAX_DILATIONS = 32
CHANNEL_KERNELS = True  # multichannel: a different random kernel on each channel a kernel sums (False: the same one)
CHUNK = 1 << 25  # elements of one threshold comparison
# Up to DUAL_SAMPLES training samples: the SVD solve, which costs N^2 F and holds N x F float64 (about 300 MB at
# 4000 x 10,000). Beyond: the streamed solve, N F^2 for the Gram matrix plus F^3 once for its eigendecomposition
# (800 MB per F x F float64 matrix at F = 10,000), and the features of LOO_SAMPLES rows computed twice.
DUAL_SAMPLES = 4000
MAX_SAMPLES = 25_000  # beyond this many, a random subset of this size fits the ridge (a note says so): docs/anytime.md


def dilations(length: int) -> list[int]:
    """Exponentially spaced dilations from 1 until the kernel's reach spans the sequence."""
    top = math.log2(max(1.0, (length - 1) / 8))
    return sorted({int(2 ** (top * i / (MAX_DILATIONS - 1))) for i in range(MAX_DILATIONS)})


class RandomFeatureRidge(nn.Module):
    """Random-convolution features of (B, T, C) sequences with a (B, T) mask, and a linear classifier on them.

    Every tensor is a buffer (nothing here is trained by gradient); `fit` fills them from the training set.
    Until then `fitted` is false and the logits are zero.
    """

    def __init__(self, features: int, length: int, channels: int, n_classes: int) -> None:
        super().__init__()
        self.dilations = dilations(length)
        d, m = len(self.dilations), len(KERNELS)
        p = max(1, features // (d * m))
        n_feat = d * m * p
        self.register_buffer("kernels", KERNELS.clone())  # (M, 9)
        self.register_buffer("channel_mix", torch.ones(d, m, channels))  # which channels each kernel sums, and how (_weights)
        self.register_buffer("thresholds", torch.zeros(d, m, p))
        self.register_buffer("center", torch.zeros(n_feat))
        self.register_buffer("scale", torch.ones(n_feat))
        self.register_buffer("weight", torch.zeros(n_feat, n_classes))
        self.register_buffer("bias", torch.zeros(n_classes))
        self.register_buffer("temperature", torch.zeros(()))  # 0 = not fitted

    @property
    def fitted(self) -> bool:
        return bool(self.temperature > 0)

    def _conv(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """(B, C, T) -> (B, M, T): every kernel at dilation i over its mix of channels, zeros beyond the ends.

        In float64, where sums of float32 values times the weights 2, -1 (and 0 or 1 for the channel mix) are
        exact, so that no output depends on the order of the sum: conv1d's algorithm, and so the last bit of
        a float32 result, changes with the batch's size, and a threshold drawn between two equal outputs must
        compare the same way whatever else is in the batch.
        """
        d = self.dilations[i]
        return F.conv1d(x.double(), self._weights(i), padding=4 * d, dilation=d).float()

    def _weights(self, i: int) -> torch.Tensor:
        """(M, C, 9) float64 weights at dilation i: on channel c, kernel m applies KERNELS[(m + mix - 1) % M],
        where mix = channel_mix[i, m, c] >= 1, and nothing where mix = 0."""
        mix = self.channel_mix[i].long()  # (M, C)
        m = len(self.kernels)
        which = (torch.arange(m, device=mix.device)[:, None] + mix - 1) % m  # (M, C) kernel index per channel
        return self.kernels.double()[which] * (mix > 0)[:, :, None]  # (M, C, 9)


    def transform(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, C), (B, T) -> (B, F): the fraction of valid steps above each threshold."""
        b, t, _ = x.shape
        d, m, p = self.thresholds.shape
        rows = max(1, CHUNK // (m * p * t))  # bounds the (rows, M, P, T) comparison below
        if b > rows:
            return torch.cat([self.transform(x[i : i + rows], mask[i : i + rows]) for i in range(0, b, rows)])
        xc = (x * mask[:, :, None]).transpose(1, 2).float()  # (B, C, T), padded steps 0
        valid = mask.sum(1).clamp_min(1).float()[:, None, None]  # (B, 1, 1)
        count = torch.int16 if t < 2**15 else torch.int32
        out = []
        for i in range(d):
            z = self._conv(xc, i).masked_fill(~mask[:, None, :], -math.inf)  # (B, M, T); padded steps are never above
            above = (z[:, :, None, :] > self.thresholds[i][None, :, :, None]).view(torch.uint8).sum(-1, dtype=count)  # (B, M, P)
            out.append((above / valid).flatten(1))  # (B, M * P)
        return torch.cat(out, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, C), (B, T) -> logits (B, K), in float32 even under a caller's autocast (mixed precision): the
        features are fractions of steps above thresholds, and the linear map was solved in float64."""
        no_autocast = torch.autocast(x.device.type, enabled=False) if x.device.type in ("cpu", "cuda") else contextlib.nullcontext()
        with no_autocast:
            f = (self.transform(x.float(), mask) - self.center) / self.scale  # (B, F)
            return self.temperature * (f @ self.weight + self.bias)

    @torch.no_grad()
    def fit(self, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, gen: torch.Generator, smoothing: float = 0.0) -> dict:
        """Draw the channel mixes and thresholds from (N, T, C) training data, then solve the ridge classifier.

        Returns what was chosen: samples used, penalty, temperature and the leave-one-out accuracy.
        """
        n, _, c = x.shape
        d, m, p = self.thresholds.shape
        dev = self.thresholds.device
        total = n
        if n > MAX_SAMPLES:
            keep = torch.randperm(n, generator=gen)[:MAX_SAMPLES].sort().values
            x, mask, y = x[keep], mask[keep], y[keep]
            n = MAX_SAMPLES
        if c > 1:  # each kernel sums a random subset of 1 to min(C, 9) channels, each through a random one of the kernels
            sizes = torch.randint(1, min(c, 9) + 1, (d, m, 1), generator=gen)
            ranks = torch.rand(d, m, c, generator=gen).argsort(-1).argsort(-1)
            shifts = torch.randint(m, (d, m, c), generator=gen) if CHANNEL_KERNELS else torch.zeros(d, m, c, dtype=torch.long)
            self.channel_mix.copy_((ranks < sizes) * (1 + shifts))
        # thresholds: random quantiles of one random training sequence's outputs, per kernel and dilation
        pick = torch.randint(n, (d,), generator=gen)
        levels = torch.rand(d, m, p, generator=gen) * 0.9 + 0.05
        for i in range(d):
            j = int(pick[i])
            z = self._conv((x[j : j + 1] * mask[j : j + 1, :, None]).transpose(1, 2).float().to(dev), i)[0]  # (M, T)
            z = z[:, mask[j].to(dev)].sort(dim=-1).values  # (M, T_j)
            at = (levels[i].to(dev) * (z.shape[-1] - 1)).long().clamp_max(z.shape[-1] - 2)  # (M, P)
            self.thresholds[i] = (z.gather(1, at) + z.gather(1, at + 1)) / 2  # between two outputs, never tied with one
        k = self.weight.shape[1]
        if n <= DUAL_SAMPLES:
            feats = self.transform(x.to(dev), mask.to(dev)).cpu().double()  # (N, F); transform bounds its own memory
            sol = solve_dual(feats, y.cpu(), k, smoothing)
        else:  # the features of a chunk of rows at a time: memory grows with F^2, never with N
            sol = solve_streamed(lambda rows: self.transform(x[rows].to(dev), mask[rows].to(dev)).cpu().double(),
                                 y.cpu(), self.center.numel(), k, gen, smoothing)
        center, scale, w, offset, tau = sol.center, sol.scale, sol.weight, sol.bias, sol.temperature
        self.center.copy_(center.float())
        self.scale.copy_(scale.float())
        self.weight.copy_(w.float())
        self.bias.copy_(offset.float())
        self.temperature.fill_(tau)
        summary = {"samples": n, "penalty": sol.penalty, "temperature": tau, "loo_accuracy": sol.loo_accuracy}
        if n < total:
            summary["subsampled_from"] = total
        if sol.loo_samples < n:
            summary["loo_samples"] = sol.loo_samples
        return summary
