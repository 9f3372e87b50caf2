"""A second classifier beside the network: random convolution features and a ridge classifier, fitted in closed form.

A fixed bank of random dilated convolutions (never trained) turns each sequence into F numbers: for every
kernel, dilation and threshold, the fraction of valid time steps where the convolution's output lies above
the threshold. Each threshold lies between two adjacent sorted outputs on a training sequence. A ridge classifier on the
standardised features is then solved exactly, its penalty chosen by leave-one-out error, and its scores are
scaled into logits by the temperature that minimises the leave-one-out log loss.

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

__all__ = ["RandomFeatureRidge", "dilations", "FIT_SAMPLES"]

# every length-9 kernel with three weights of 2 and six of -1: they sum to zero, so an offset changes nothing
KERNELS = torch.tensor([[2.0 if i in c else -1.0 for i in range(9)] for c in itertools.combinations(range(9), 3)])  # (M, 9)
MAX_DILATIONS = 32
PENALTIES = [10.0**e for e in range(-3, 4)]  # ridge penalties tried
TEMPERATURES = [2.0**e for e in range(-2, 9)]  # logit scales tried
CHUNK = 1 << 25  # elements of one threshold comparison
FIT_SAMPLES = 2000  # at most this many training samples fit the ridge (the exact solve grows with their square)


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
        self.register_buffer("channel_mix", torch.ones(d, m, channels))  # which channels each kernel sums
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
        w = self.kernels[:, None, :].double() * self.channel_mix[i][:, :, None].double()  # (M, C, 9)
        return F.conv1d(x.double(), w, padding=4 * d, dilation=d).float()


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
        if n > FIT_SAMPLES:
            keep = torch.randperm(n, generator=gen)[:FIT_SAMPLES]
            x, mask, y = x[keep], mask[keep], y[keep]
            n = FIT_SAMPLES
        if c > 1:  # each kernel sums a random subset of 1 to min(C, 9) channels
            sizes = torch.randint(1, min(c, 9) + 1, (d, m, 1), generator=gen)
            ranks = torch.rand(d, m, c, generator=gen).argsort(-1).argsort(-1)
            self.channel_mix.copy_((ranks < sizes).float())
        # thresholds: random quantiles of one random training sequence's outputs, per kernel and dilation
        pick = torch.randint(n, (d,), generator=gen)
        levels = torch.rand(d, m, p, generator=gen) * 0.9 + 0.05
        for i in range(d):
            j = int(pick[i])
            z = self._conv((x[j : j + 1] * mask[j : j + 1, :, None]).transpose(1, 2).float().to(dev), i)[0]  # (M, T)
            z = z[:, mask[j].to(dev)].sort(dim=-1).values  # (M, T_j)
            at = (levels[i].to(dev) * (z.shape[-1] - 1)).long().clamp_max(z.shape[-1] - 2)  # (M, P)
            self.thresholds[i] = (z.gather(1, at) + z.gather(1, at + 1)) / 2  # between two outputs, never tied with one
        feats = self.transform(x.to(dev), mask.to(dev)).cpu().double()  # (N, F); transform bounds its own memory
        center, scale = feats.mean(0), feats.std(0, unbiased=False)
        scale = torch.where(scale > 1e-6, scale, torch.ones_like(scale))
        a = (feats - center) / scale  # (N, F)
        k = self.weight.shape[1]
        targets = F.one_hot(y.cpu().long(), k).double() * 2 - 1  # (N, K) in {-1, 1}
        offset = targets.mean(0)
        u, s, vt = torch.linalg.svd(a, full_matrices=False)  # a = u diag(s) vt
        rank = s > s[0] * 1e-10  # centring leaves one direction (all ones) with s = 0: it belongs to the intercept
        u, s, vt = u[:, rank], s[rank], vt[rank]  # (N, R), (R,), (R, F)
        centred = targets - offset
        uy = u.T @ centred  # (R, K)
        # With more features than samples the fit nearly interpolates: 1 - hat and the residuals are ~1e-7.
        # Both are written as (what lies outside u's span) + (what the penalty leaves), never as 1 - (almost 1).
        outside = centred - u @ uy, 1 - 1 / n - (u**2).sum(1)  # (N, K), (N,): ~0 when N <= F
        best = None
        for lam in PENALTIES:
            left = lam / (s**2 + lam)  # (R,) the share of each direction the penalty removes
            residual = outside[0] + u @ (left[:, None] * uy)  # (N, K) targets - fitted values
            one_minus_hat = (outside[1] + u**2 @ left).clamp_min(1e-12)  # (N,) intercept included
            loo = targets - residual / one_minus_hat[:, None]  # leave-one-out scores
            err = float(((targets - loo) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, lam, loo)
        _, lam, loo = best
        w = vt.T @ ((s / (s**2 + lam))[:, None] * uy)  # (F, K)
        labels = y.cpu().long()
        tau = min(TEMPERATURES, key=lambda t: float(F.cross_entropy(t * loo, labels, label_smoothing=smoothing)))
        self.center.copy_(center.float())
        self.scale.copy_(scale.float())
        self.weight.copy_(w.float())
        self.bias.copy_(offset.float())
        self.temperature.fill_(tau)
        return {"samples": n, "penalty": lam, "temperature": tau, "loo_accuracy": float((loo.argmax(1) == labels).double().mean())}
