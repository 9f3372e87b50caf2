"""The ridge classifier of the random-feature half, solved in closed form two ways with the same result.

Both standardise the features, fit one-vs-rest targets in {-1, 1} with an unpenalised intercept, choose the
penalty by leave-one-out squared error and then the logit temperature by leave-one-out log loss:

- `solve_dual`, for up to a few thousand samples: the SVD of the (N, F) standardised features, from the
  eigendecomposition of their (N, N) Gram matrix. Exact even
  when the fit nearly interpolates (N <= F), which is the usual case on small sets.
- `solve_streamed`, for any number of samples: the features arrive in chunks and are never all in memory.
  Pass one sums, in float64, their (F, F) Gram matrix and their (F, K) products with the targets; the solve
  uses the Gram matrix's eigendecomposition, so memory grows with F^2 and never with N. Pass two recomputes
  the features of up to LOO_SAMPLES random samples and gives each its exact leave-one-out scores under the
  full fit; the penalty and temperature are chosen on that sample of the leave-one-out error (an unbiased
  estimate of the mean over all N; all of them when N <= LOO_SAMPLES, and then the two solvers agree).

Shapes: N samples, F features, K classes, R directions kept, L penalties.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["PENALTIES", "TEMPERATURES", "LOO_SAMPLES", "RidgeSolution", "solve_dual", "solve_streamed"]

PENALTIES = [10.0**e for e in range(-3, 4)]  # ridge penalties tried
TEMPERATURES = [2.0**e for e in range(-2, 9)]  # logit scales tried
LOO_SAMPLES = 4000  # samples whose leave-one-out scores choose the penalty and temperature in the streamed solve
CHUNK_BYTES = 1 << 26  # float64 features of one chunk of the streamed solve


@dataclass
class RidgeSolution:
    center: torch.Tensor  # (F,) float64: the features' mean
    scale: torch.Tensor  # (F,) float64: their standard deviation (1 where they are constant)
    weight: torch.Tensor  # (F, K) float64, on standardised features
    bias: torch.Tensor  # (K,) float64
    penalty: float
    temperature: float
    loo_accuracy: float
    loo_samples: int  # how many samples the leave-one-out choice was made on


def _targets(y: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) labels -> (N, K) one-vs-rest targets in {-1, 1}, float64."""
    return F.one_hot(y.long(), k).double() * 2 - 1


def _choose(loo: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, smoothing: float) -> tuple[int, float, float]:
    """(L, N, K) leave-one-out scores per penalty -> (penalty index, temperature, leave-one-out accuracy)."""
    err = ((targets[None] - loo) ** 2).sum((1, 2))  # (L,)
    best = int(torch.argmin(err))  # the first of equal errors: the smallest penalty, as a loop with `<` picks
    tau = min(TEMPERATURES, key=lambda t: float(F.cross_entropy(t * loo[best], labels, label_smoothing=smoothing)))
    return best, tau, float((loo[best].argmax(1) == labels).double().mean())


def _scale(var: torch.Tensor) -> torch.Tensor:
    scale = var.clamp_min(0).sqrt()
    return torch.where(scale > 1e-6, scale, torch.ones_like(scale))


def solve_dual(feats: torch.Tensor, y: torch.Tensor, k: int, smoothing: float = 0.0) -> RidgeSolution:
    """(N, F) float64 features and (N,) labels -> the solution, from the SVD of the standardised features."""
    n = len(feats)
    center = feats.mean(0)
    scale = _scale(feats.var(0, unbiased=False))
    a = (feats - center) / scale  # (N, F)
    targets, labels = _targets(y, k), y.long()
    offset = targets.mean(0)
    # a = u diag(s) v^T from the eigendecomposition of the (N, N) a a^T = u diag(s^2) u^T: an order of magnitude
    # faster than the SVD of the wide (N, F) matrix. Directions with s^2 below 1e-12 of the largest are dropped:
    # centring leaves one (all ones) with s = 0, which belongs to the intercept; any other such direction is
    # penalised away by the smallest penalty anyway (s^2 / (s^2 + 1e-3) ~ 0), and dropping it does the same.
    e, q = torch.linalg.eigh(a @ a.T)  # ascending
    rank = e > e[-1] * 1e-12
    u, s = q[:, rank], e[rank].sqrt()  # (N, R), (R,)
    centred = targets - offset
    uy = u.T @ centred  # (R, K)
    # With more features than samples the fit nearly interpolates: 1 - hat and the residuals are ~1e-7.
    # Both are written as (what lies outside u's span) + (what the penalty leaves), never as 1 - (almost 1).
    outside, outside_hat = centred - u @ uy, 1 - 1 / n - (u**2).sum(1)  # (N, K), (N,): ~0 when N <= F
    loo = []
    for lam in PENALTIES:
        left = lam / (s**2 + lam)  # (R,) the share of each direction the penalty removes
        residual = outside + u @ (left[:, None] * uy)  # (N, K) targets - fitted values
        one_minus_hat = (outside_hat + u**2 @ left).clamp_min(1e-12)  # (N,) intercept included
        loo.append(targets - residual / one_minus_hat[:, None])  # leave-one-out scores
    best, tau, acc = _choose(torch.stack(loo), targets, labels, smoothing)
    lam = PENALTIES[best]
    w = a.T @ (u @ ((1 / (s**2 + lam))[:, None] * uy))  # (F, K) = v diag(s / (s^2 + lam)) u^T centred, v = a^T u / s
    return RidgeSolution(center, scale, w, offset, lam, tau, acc, n)


def solve_streamed(
    features: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor, n_features: int, k: int, gen: torch.Generator,
    smoothing: float = 0.0,
) -> RidgeSolution:
    """The same solution from `features(rows)`, the (len(rows), F) float64 features of the samples at those
    indices, called on chunks of rows: twice over LOO_SAMPLES of them at most, once over the rest.
    """
    n = len(y)
    targets, labels = _targets(y, k), y.long()
    rows = max(1, CHUNK_BYTES // (8 * n_features))
    total = torch.zeros(n_features, dtype=torch.float64)  # (F,) sum of features
    gram = torch.zeros(n_features, n_features, dtype=torch.float64)  # (F, F) sum of f f^T
    cross = torch.zeros(n_features, k, dtype=torch.float64)  # (F, K) sum of f t^T
    for idx in torch.arange(n).split(rows):
        f = features(idx)  # (b, F)
        total += f.sum(0)
        gram.addmm_(f.T, f)
        cross.addmm_(f.T, targets[idx])
    center = total / n
    offset = targets.mean(0)
    gram.addr_(center, center, alpha=-n)  # centred: sum of (f - mean)(f - mean)^T
    scale = _scale(gram.diagonal() / n)
    gram /= scale[:, None]
    gram /= scale[None, :]  # A^T A of the standardised features A
    cross = (cross - n * center[:, None] * offset[None, :]) / scale[:, None]  # (F, K) A^T (targets - offset)
    e, v = torch.linalg.eigh(gram)  # A^T A = v diag(e) v^T; e are the squared singular values of A
    del gram
    e = e.clamp_min(0)
    z = v.T @ cross  # (F, K)
    inv = torch.stack([1 / (e + lam) for lam in PENALTIES])  # (L, F)
    # pass two: exact leave-one-out scores of a random sample of rows under the full fit, for every penalty
    pick = torch.randperm(n, generator=gen)[:LOO_SAMPLES].sort().values if n > LOO_SAMPLES else torch.arange(n)
    loo = []
    for idx in pick.split(rows):
        p = ((features(idx) - center) / scale) @ v  # (b, F) the samples in the eigenbasis
        fitted = torch.einsum("bf,lf,fk->lbk", p, inv, z) + offset  # (L, b, K)
        hat = 1 / n + (p**2) @ inv.T  # (b, L) intercept included
        t = targets[idx]
        loo.append(t - (t - fitted) / (1 - hat).T.clamp_min(1e-12)[:, :, None])  # (L, b, K)
    best, tau, acc = _choose(torch.cat(loo, 1), targets[pick], labels[pick], smoothing)
    w = v @ (inv[best][:, None] * z)  # (F, K)
    return RidgeSolution(center, scale, w, offset, PENALTIES[best], tau, acc, len(pick))
