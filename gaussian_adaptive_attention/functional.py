"""The numerical core: Gaussian adaptive attention over one axis, all heads at once.

Every function here works on a tensor already laid out as ``(P, H, N, Q)``:

    P   product of the dimensions before the normalised axis
    H   heads (each head owns one contiguous slice of the axis)
    N   positions per head (the slice length)
    Q   product of the dimensions after the normalised axis

so that a head's slice is ``x[p, h, :, q]`` and every reduction runs over
dim 2. Per-head parameters have shape ``(H, G)`` (G Gaussians per head).

Product mode (the original). With ``k_i = 1 / (2 c_i^2)`` the product of the G
Gaussians of a head is a single Gaussian in ``x``::

    log p = -sum_i k_i (x - mu - m_i)^2 / v - sum_i log(sqrt(2 pi) |c_i|)
          = -(A (x - mu - b)^2 + R) / v - K

with ``A = sum_i k_i``, ``b = sum_i k_i m_i / A``, ``R = sum_i k_i (m_i - b)^2``
and ``K = sum_i log(sqrt(2 pi) |c_i|)``. So the forward pass costs a fixed
number of elementwise passes whatever G is, and ``_GaussianProduct`` carries a
hand-derived backward for the same reason. Normalisation is done in log space
and honours the original's clamp: ``w = exp(log p - max(logsumexp(log p), log eps))``.

Mixture mode (the original's earlier design) is a plain autograd formula over
a trailing G dimension: ``p = sum_i softmax(logits)_i exp(-k_i (x - mu - m_i)^2 / v)``.

Validity: an optional bool ``valid`` (True = real position), broadcastable to
``(P, H, N, Q)``, removes positions from the statistics and the normalising sum
and gives them weight exactly 0. A slice with n valid positions uses the
unbiased variance over those n; n <= 1 defines the variance as 0 (then + eps).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "gaussian_product_attention",
    "gaussian_mixture_attention",
    "head_coefficients",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG2E = 1.0 / math.log(2.0)
_COMPILE_PLAIN_FORMULA = False  # under torch.compile: plain autograd formula instead of the Function


def _log_eps(eps: float) -> float:
    return math.log(eps) if eps > 0.0 else -math.inf


def head_coefficients(m: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Collapse each head's G Gaussians into the one Gaussian their product is.

    Args:
        m: mean offsets, shape (H, G).
        c: scales, shape (H, G); only ``c^2`` and ``|c|`` are used.

    Returns:
        ``(k, A, b, dm, R, K)``: ``k = 1 / (2 c^2)`` (H, G), ``A = sum k`` (H,),
        ``b = sum k m / A`` (H,), ``dm = m - b`` (H, G), ``R = sum k dm^2`` (H,)
        and ``K = sum log(sqrt(2 pi) |c|)`` (H,).
    """
    k = 0.5 / (c * c)  # (H, G)
    A = k.sum(-1)  # (H,)
    b = (k * m).sum(-1) / A  # (H,)
    dm = m - b[:, None]  # (H, G); completing the square this way keeps R >= 0
    R = (k * dm * dm).sum(-1)  # (H,)
    K = torch.log(c.abs()).sum(-1) + c.shape[-1] * _LOG_SQRT_2PI  # (H,)
    return k, A, b, dm, R, K


def _slice_statistics(
    x: Tensor, vf: Optional[Tensor], eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor | int]:
    """Mean and (unbiased variance + eps) over dim 2, over valid positions only.

    Plain autograd version, used by the mixture mode and under torch.compile.
    Returns ``(xz, mu, v, n)``: ``xz`` is x with invalid positions set to 0 (x
    itself when ``vf`` is None), ``mu`` and ``v`` have shape (P, H, 1, Q) and
    ``n`` is the valid count (an int when ``vf`` is None, else a tensor).
    """
    N = x.shape[2]
    if vf is None:
        mu = x.mean(2, keepdim=True)  # (P, H, 1, Q)
        if N == 1:  # a length-1 slice has no unbiased variance: define it as 0
            return x, mu, torch.zeros_like(mu) + eps, N
        xc = x - mu
        return x, mu, (xc * xc).sum(2, keepdim=True) / (N - 1) + eps, N
    n = vf.sum(2, keepdim=True)  # (P|1, H, 1, Q|1)
    xz = torch.where(vf > 0, x, 0.0)  # zeros keep NaN or inf padding out of the sums
    mu = xz.sum(2, keepdim=True) / n.clamp_min(1.0)
    xc = (xz - mu) * vf
    var = (xc * xc).sum(2, keepdim=True) / (n - 1.0).clamp_min(1.0)  # n <= 1 -> 0
    return xz, mu, var + eps, n


class _GaussianProduct(torch.autograd.Function):
    """Product-mode attention with a hand-derived backward (see module docstring).

    ``apply(x, vf, eps, residual, *ms, *cs)`` with x of shape (P, H, N, Q), vf
    None or a 0/1 float validity mask broadcastable to x, and H mean-offset
    tensors then H scale tensors of shape (G,). Returns ``(out, w)``:
    ``out = x * w`` (``x + x * w`` when ``residual``) with invalid positions
    passed through unchanged, and ``w`` the weights (not differentiable).

    Written for eager speed: a fixed number of passes over x whatever G is,
    buffers reused in place, exp2 instead of exp (about 3x cheaper on CPU),
    no bool tensors on the common path (bool kernels are slow on CPU).
    """

    @staticmethod
    def forward(ctx, x: Tensor, vf: Optional[Tensor], eps: float, residual: bool, traced: bool, *params: Tensor):
        P, H, N, Q = x.shape
        m = torch.stack(params[:H])  # (H, G)
        c = torch.stack(params[H:])  # (H, G)
        k, A, b, dm, R, K = head_coefficients(m, c)
        A4, b4, R4, K4 = (t.view(1, H, 1, 1) for t in (A, b, R, K))
        log_eps = _log_eps(eps)
        # Data-dependent shortcuts only where a host sync is free: eager on CPU.
        eager_cpu = not traced and x.device.type == "cpu"

        # Statistics over the valid positions of each slice.
        if vf is None:
            xz, n = x, N
            mu = x.mean(2, keepdim=True)  # (P, H, 1, Q)
        else:
            n = vf.sum(2, keepdim=True)  # (P|1, H, 1, Q|1)
            xz = x * vf if eager_cpu else torch.where(vf > 0, x, 0.0)
            mu = xz.sum(2, keepdim=True) / n.clamp_min(1.0)
            if eager_cpu and not bool(torch.isfinite(mu).all()):
                # x * 0 is NaN for NaN or inf padding: exclude such entries exactly.
                xz = torch.where(vf > 0, x, 0.0)
                mu = xz.sum(2, keepdim=True) / n.clamp_min(1.0)
        d = xz - mu  # (P, H, N, Q), becomes x - mu - b below
        if vf is not None:
            d = d.mul_(vf)
        buf = d * d
        if isinstance(n, int):
            var = buf.sum(2, keepdim=True) / (n - 1) if n > 1 else torch.zeros_like(mu)
        else:
            var = buf.sum(2, keepdim=True) / (n - 1.0).clamp_min(1.0)  # n <= 1 -> 0
        v = var + eps  # (P, H, 1, Q)
        alpha = -A4 / v  # log p = alpha d^2 + bound
        bound = -R4 / v - K4  # max over x of log p
        d = d.sub_(b4)

        if eager_cpu:
            # Shift by the bound (no extra pass); base 2 is ~3x cheaper than exp on CPU.
            shift = None
            t = torch.mul(d, alpha * _LOG2E, out=buf).mul_(d).exp2_()
            if vf is not None:
                t.mul_(vf)
            s = t.sum(2, keepdim=True)  # (P, H, 1, Q)
            # That can underflow a whole slice whose log-sum-exp is finite (tiny c,
            # many Gaussians): then redo with the max as the shift.
            low = s < math.sqrt(torch.finfo(x.dtype).tiny)  # ~1e-19 in float32
            if vf is not None:
                low = low & (n > 0)
            if bool(low.any()):
                logt = torch.mul(d, alpha, out=buf).mul_(d)
                shift = _masked_amax(logt, vf)
                t = logt.sub_(shift).exp_()
                if vf is not None:
                    t.mul_(vf)
                s = t.sum(2, keepdim=True)
        else:
            logt = d * alpha * d
            shift = _masked_amax(logt, vf)
            t = torch.exp(logt - shift)
            if vf is not None:
                t = t * vf
            s = t.sum(2, keepdim=True)
        top = bound if shift is None else bound + shift  # log p = log(t) + top
        lse = top + torch.log(s)  # (P, H, 1, Q); -inf for a slice with no valid position
        active = lse > log_eps  # clamp inactive: w is a softmax
        # exp(top - max(lse, log eps)), written so that the common case is exact
        scale = torch.where(active, s.reciprocal(), torch.exp(top - log_eps))
        scale = torch.where(s > 0, scale, 0.0)
        w = t.mul_(scale)  # (P, H, N, Q)

        if residual:
            out = torch.addcmul(x, xz, w)  # invalid positions: x + 0
        elif vf is None:
            out = x * w
        else:
            out = torch.addcmul(xz * w, x, 1.0 - vf)  # invalid positions: x

        n_t = n if isinstance(n, Tensor) else None
        ctx.save_for_backward(xz, w, d, alpha, v, active, vf, n_t, k, A, b, dm, R, c)
        ctx.n = n if isinstance(n, int) else None
        ctx.residual = residual
        ctx.mark_non_differentiable(w)
        if not traced:
            ctx.set_materialize_grads(False)  # no zero-filled gradient for w
        return out, w

    @staticmethod
    def backward(ctx, gout: Optional[Tensor], _gw: Optional[Tensor]):
        xz, w, d, alpha, v, active, vf, n_t, k, A, b, dm, R, c = ctx.saved_tensors
        H = xz.shape[1]
        if gout is None:
            return (None,) * (5 + 2 * H)
        A4, b4, R4 = (t.view(1, H, 1, 1) for t in (A, b, R))
        n = ctx.n if ctx.n is not None else n_t

        # Two full-size buffers: gx (the answer) and ge (scratch).
        gx = gout * w  # the x * w path; the other terms are added below
        ge = gx * xz  # dL/dw * w
        S = ge.sum(2, keepdim=True)  # (P, H, 1, Q)
        # dL/d(log p): a softmax backward where the clamp is inactive, else w dL/dw
        ge = ge.addcmul_(w, torch.where(active, -S, 0.0))
        # Its sum over the slice: S (1 - sum w), and sum w == 1 where inactive.
        S0 = torch.where(active, 0.0, S)
        ge = ge.mul_(d)  # dL/d(log p) * d
        S1 = ge.sum(2, keepdim=True)
        gx = gx.addcmul_(ge, 2.0 * alpha)  # through d (d log p / dd = 2 alpha d)
        S2 = ge.mul_(d).sum(2, keepdim=True)

        # log p = -(A d^2 + R) / v - K with d = x - mu - b, v = var + eps
        gv = (A4 * S2 + R4 * S0) / (v * v)  # dL/dv per slice
        gmu = -2.0 * alpha * S1  # dL/dmu per slice (also dL/db)
        if isinstance(n, int):
            beta1 = gv * (2.0 / (n - 1)) if n > 1 else torch.zeros_like(gv)
            beta0 = gmu / n + beta1 * b4
        else:
            beta1 = torch.where(n > 1, 2.0 * gv / (n - 1.0).clamp_min(1.0), 0.0)
            beta0 = gmu / n.clamp_min(1.0) + beta1 * b4
        gx = gx.addcmul_(d, beta1)  # through the variance (x - mu = d + b)
        gx = gx.add_(beta0)  # through the mean and b
        if vf is not None:
            gx = gx.mul_(vf)
            if not ctx.residual:
                gx = gx.addcmul_(gout, 1.0 - vf)  # invalid positions: out = x
        if ctx.residual:
            gx = gx.add_(gout)

        # Per-head coefficient gradients, then back to (m, c).
        red = [0, 2, 3]
        gA = -(S2 / v).sum(red)  # (H,)
        gb = gmu.sum(red)
        gR = -(S0 / v).sum(red)
        gK = -S0.sum(red)
        gA, gb, gR, gK = (t.reshape(H, 1) for t in (gA, gb, gR, gK))
        A2 = A.view(H, 1)
        gk = gA + gb * dm / A2 + gR * dm * dm  # (H, G)
        gm = gb * k / A2 + 2.0 * gR * k * dm
        gc = -gk / (c * c * c) + gK / c
        return (gx, None, None, None, None, *gm.unbind(0), *gc.unbind(0))


def _masked_amax(t: Tensor, vf: Optional[Tensor]) -> Tensor:
    """Max over dim 2 of the valid entries; 0 for a slice with none."""
    if vf is not None:
        t = t.masked_fill(vf == 0, -math.inf)
    mx = t.amax(2, keepdim=True)
    return torch.where(torch.isfinite(mx), mx, 0.0)


def _gaussian_product_autograd(
    x: Tensor, vf: Optional[Tensor], eps: float, residual: bool, m: Tensor, c: Tensor
) -> tuple[Tensor, Tensor]:
    """Product mode as a plain autograd formula (same maths as ``_GaussianProduct``)."""
    H = x.shape[1]
    _, A, b, _, R, K = head_coefficients(m, c)
    A4, b4, R4, K4 = (t.view(1, H, 1, 1) for t in (A, b, R, K))
    xz, mu, v, _ = _slice_statistics(x, vf, eps)
    d = xz - (mu + b4)
    logp = -(A4 * d * d + R4) / v - K4  # (P, H, N, Q)
    return _normalise(x, xz, logp, vf, eps, residual)


def _normalise(
    x: Tensor, xz: Tensor, logp: Tensor, vf: Optional[Tensor], eps: float, residual: bool
) -> tuple[Tensor, Tensor]:
    """``w = exp(log p - max(logsumexp(log p), log eps))`` over dim 2, then the output."""
    if vf is not None:
        logp = logp.masked_fill(vf == 0, -math.inf)
    lse = torch.logsumexp(logp, dim=2, keepdim=True)  # (P, H, 1, Q)
    w = torch.exp(logp - lse.clamp_min(_log_eps(eps)))
    if residual:
        out = x + xz * w
    elif vf is None:
        out = x * w
    else:
        out = torch.where(vf > 0, xz * w, x)
    return out, w.detach()


def gaussian_product_attention(
    x: Tensor,
    vf: Optional[Tensor],
    mean_offsets: Sequence[Tensor],
    scales: Sequence[Tensor],
    eps: float,
    residual: bool = False,
) -> tuple[Tensor, Tensor]:
    """Product-mode Gaussian adaptive attention on a ``(P, H, N, Q)`` tensor.

    Args:
        x: input laid out as (P, H, N, Q); normalised over dim 2.
        vf: None, or a 0/1 float mask broadcastable to x (1 = real position).
        mean_offsets: H tensors of shape (G,), one per head.
        scales: H tensors of shape (G,), one per head (the original's ``c``).
        eps: added to the variance, and lower clamp of the normalising sum.
        residual: return ``x + x * w`` instead of ``x * w``.

    Returns:
        ``(out, w)``, both shaped like x; ``w`` is detached. Invalid positions
        have ``w == 0`` and ``out == x``.
    """
    assert x.dim() == 4 and len(mean_offsets) == len(scales) == x.shape[1]
    traced = torch.compiler.is_compiling()
    if traced and _COMPILE_PLAIN_FORMULA:
        m = torch.stack(list(mean_offsets))  # (H, G)
        c = torch.stack(list(scales))
        return _gaussian_product_autograd(x, vf, eps, residual, m, c)
    return _GaussianProduct.apply(x, vf, eps, residual, traced, *mean_offsets, *scales)


def gaussian_mixture_attention(
    x: Tensor,
    vf: Optional[Tensor],
    mean_offsets: Tensor,
    scales: Tensor,
    logits: Tensor,
    eps: float,
    residual: bool = False,
) -> tuple[Tensor, Tensor]:
    """Mixture-mode Gaussian adaptive attention on a ``(P, H, N, Q)`` tensor.

    ``p = sum_i softmax(logits)_i exp(-(x - mu - m_i)^2 / (2 c_i^2 v))`` (no
    normalising constant), then the same clamped normalisation as product mode.

    Args:
        x: input laid out as (P, H, N, Q); normalised over dim 2.
        vf: None, or a 0/1 float mask broadcastable to x (1 = real position).
        mean_offsets: shape (H, G).
        scales: shape (H, G).
        logits: mixture logits, shape (H, G).
        eps: added to the variance, and lower clamp of the normalising sum.
        residual: return ``x + x * w`` instead of ``x * w``.

    Returns:
        ``(out, w)`` as for :func:`gaussian_product_attention`.
    """
    H, G = mean_offsets.shape
    xz, mu, v, _ = _slice_statistics(x, vf, eps)
    m5 = mean_offsets.view(1, H, 1, 1, G)
    k5 = (0.5 / (scales * scales)).view(1, H, 1, 1, G)
    logpi5 = torch.log_softmax(logits, dim=-1).view(1, H, 1, 1, G)
    d = xz.unsqueeze(-1) - mu.unsqueeze(-1) - m5  # (P, H, N, Q, G)
    logp = torch.logsumexp(logpi5 - k5 * d * d / v.unsqueeze(-1), dim=-1)  # (P, H, N, Q)
    return _normalise(x, xz, logp, vf, eps, residual)
