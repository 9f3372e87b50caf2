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

Validity: an optional 0/1 float mask ``vf`` (1 = real position), broadcastable
to ``(P, H, N, Q)``, removes positions from the statistics and the normalising
sum and gives them weight exactly 0; they come out unchanged. A slice with n
valid positions uses the unbiased variance over those n; n <= 1 defines the
variance as 0 (then + eps).

What follows is the PyTorch path. On the CPU, for float32 and float64, the
modules run the product mode through the fused kernels instead (``kernels.cpp``
as custom ops, ``_fused.py``; the choice is made in one place,
``attention.attend_layers``); this path serves everything else, and every call
where the kernels are switched off or cannot be built.

Two formulations of the product mode share one ``autograd.Function``: the eager
CPU one shifts the log-sum-exp by the analytic maximum of log p (no extra pass)
and falls back to the data maximum only for slices that underflow; the
branch-free one (under ``torch.compile`` and on other devices) always shifts by
the data maximum and keeps every step a plain tensor operation.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "gaussian_product_attention",
    "gaussian_mixture_attention",
    "head_coefficients",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG2E = 1.0 / math.log(2.0)
# Slices whose shifted sum falls below this are redone with the max as the shift.
_UNDERFLOW = {torch.float32: 1e-19, torch.float64: 1e-154}
_MV_MAX_N = 64  # Q == 1 slices up to this length are summed with torch.mv on CPU
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


def _slice_sum(t: Tensor, ones: Optional[Tensor]) -> Tensor:
    """Sum over dim 2 of a (P, H, N, Q) tensor, keeping the dim.

    With ``ones`` (only given for Q == 1 and short slices on CPU) the rows are
    summed by a matrix-vector product, about twice as fast as ``sum`` there.
    """
    if ones is None:
        return t.sum(2, keepdim=True)
    P, H, N, _ = t.shape
    return torch.mv(t.reshape(P * H, N), ones).view(P, H, 1, 1)


class _GaussianProduct(torch.autograd.Function):
    """Product-mode attention with a hand-derived backward (see module docstring).

    ``apply(x, vf, eps, residual, traced, m, c)`` with x of shape (P, H, N, Q),
    vf None or a 0/1 float validity mask broadcastable to x, and the mean
    offsets and scales m, c of shape (H, G). Returns
    ``(out, w)``: ``out = x * w`` (``x + x * w`` when ``residual``) with invalid
    positions passed through unchanged, and ``w`` the weights (not
    differentiable). ``traced`` (under torch.compile) avoids data-dependent
    branches and ``out=`` buffers.

    Written for eager speed: a fixed number of passes over x whatever G is
    (8 elementwise + 3 reductions forward, 9 + 3 backward), buffers reused in
    place, exp2 instead of exp (about 3x cheaper on CPU), no bool tensors on the
    common path (bool kernels are slow on CPU) and few per-slice operations.
    """

    @staticmethod
    def forward(ctx, x: Tensor, vf: Optional[Tensor], eps: float, residual: bool, traced: bool, m: Tensor, c: Tensor):
        P, H, N, Q = x.shape
        k, A, b, dm, R, K = head_coefficients(m, c)
        b4, K4 = b.view(1, H, 1, 1), K.view(1, H, 1, 1)
        log_eps = _log_eps(eps)
        # Data-dependent shortcuts only where a host sync is free: eager on CPU.
        eager_cpu = not traced and x.device.type == "cpu"
        ones = x.new_ones(N) if eager_cpu and Q == 1 and N <= _MV_MAX_N and x.is_contiguous() else None

        # Statistics over the valid positions of each slice.
        if vf is None:
            xz, n = x, N
            mu = _slice_sum(x, ones).mul_(1.0 / N)  # (P, H, 1, Q)
        else:
            n = vf.sum(2, keepdim=True)  # (P|1, H, 1, Q|1)
            inv_n = n.clamp_min(1.0).reciprocal_()
            xz = x * vf if eager_cpu else torch.where(vf > 0, x, 0.0)
            mu = _slice_sum(xz, ones).mul_(inv_n)
            if eager_cpu and not bool(torch.isfinite(mu).all()):
                # x * 0 is NaN for NaN or inf padding: exclude such entries exactly.
                xz = torch.where(vf > 0, x, 0.0)
                mu = xz.sum(2, keepdim=True).mul_(inv_n)
        d = xz - mu  # (P, H, N, Q), becomes x - mu - b below
        if vf is not None:
            d.mul_(vf)
        buf = d * d
        if isinstance(n, int):
            v = _slice_sum(buf, ones).mul_(1.0 / (n - 1)) if n > 1 else torch.zeros_like(mu)
        else:
            v = _slice_sum(buf, ones).div_((n - 1.0).clamp_min(1.0))  # n <= 1 -> 0
        v = v.add_(eps)  # (P, H, 1, Q): variance + eps
        # d = x - mu - b, recomputed into the same buffer: subtracting a per-slice
        # tensor is ~4x faster on CPU than broadcasting b over (1, H, 1, 1)
        d = torch.sub(xz, mu.add_(b4), out=d) if eager_cpu else xz - (mu + b4)
        if vf is not None:
            d.mul_(vf)
        # log p = -(A d^2 + R) / v - K = alpha d^2 + top, with top the max over x
        top = (-R).view(1, H, 1, 1).div(v).sub_(K4)  # (P, H, 1, Q)

        if eager_cpu:
            # Shift by top (no extra pass); base 2 is ~3x cheaper than exp on CPU.
            alpha2 = (-_LOG2E * A).view(1, H, 1, 1).div(v)
            t = torch.mul(d, alpha2, out=buf).mul_(d).exp2_()
            if vf is not None:
                t.mul_(vf)
            s = _slice_sum(t, ones)  # (P, H, 1, Q)
            if float(s.amin()) < _UNDERFLOW[x.dtype]:
                # A whole slice underflowed although its log-sum-exp may be finite
                # (tiny c, many Gaussians): shift those slices by their max instead.
                low = s < _UNDERFLOW[x.dtype]
                if vf is not None:
                    low = low & (n > 0)
                if bool(low.any()):
                    logt = torch.mul(d, (-A).view(1, H, 1, 1).div(v), out=buf).mul_(d)
                    if vf is not None:
                        logt.masked_fill_(vf == 0, -math.inf)
                    shift = torch.where(low, _finite_amax(logt), 0.0)
                    t = logt.sub_(shift).exp_()
                    s = t.sum(2, keepdim=True)
                    top = top + shift
        else:
            logt = d * ((-A).view(1, H, 1, 1) / v) * d
            if vf is not None:
                logt = logt.masked_fill(vf == 0, -math.inf)
            shift = _finite_amax(logt)
            t = torch.exp(logt - shift)  # 0 at invalid positions
            s = t.sum(2, keepdim=True)
            top = top + shift
        # w = t exp(top - max(logsumexp, log eps)) = t / max(s, exp(log eps - top))
        floor = torch.exp(log_eps - top)
        active = s > floor  # clamp inactive: w is a softmax
        scale = torch.maximum(s, floor).clamp_min_(torch.finfo(x.dtype).tiny).reciprocal_()
        w = t.mul_(scale)  # (P, H, N, Q); 0 where s == 0 (no valid position)

        if residual:
            out = torch.addcmul(x, xz, w)  # invalid positions: x + 0
        elif vf is None:
            out = x * w
        else:
            out = torch.addcmul(xz * w, x, 1.0 - vf)  # invalid positions: x

        n_t = n if isinstance(n, Tensor) else None
        ctx.save_for_backward(xz, w, d, v, active, vf, n_t, k, A, b, dm, R, c, x, m)
        ctx.n = n if isinstance(n, int) else None
        ctx.eps = eps
        ctx.residual = residual
        ctx.ones = ones
        ctx.traced = traced
        ctx.mark_non_differentiable(w)
        if not traced:
            ctx.set_materialize_grads(False)  # no zero-filled gradient for w
        return out, w

    @staticmethod
    def backward(ctx, gout: Optional[Tensor], _gw: Optional[Tensor]):
        xz, w, d, v, active, vf, n_t, k, A, b, dm, R, c, x, m = ctx.saved_tensors
        H = xz.shape[1]
        if gout is None:
            return (None,) * 7
        if torch.is_grad_enabled():
            # create_graph=True: the gradient must be differentiable itself, so it
            # comes from autograd over the plain formula (this backward works in place)
            return _differentiable_backward(ctx, gout, x, vf, m, c)
        n = ctx.n if ctx.n is not None else n_t
        inv_v = v.reciprocal()  # (P, H, 1, Q)
        two_alpha = (-2.0 * A).view(1, H, 1, 1) * inv_v  # d(log p)/dd = 2 alpha d

        need_gx = ctx.needs_input_grad[0]
        if ctx.traced:
            # One fused reduction pass for a compiler: S1 and S2 below expand
            # ge = u - S w (where the clamp is inactive) into sums of u and w.
            u = gout * w * xz  # dL/dw * w
            ud = u * d
            wd = w * d
            S, Sud, Sud2, Swd, Swd2 = (t.sum(2, keepdim=True) for t in (u, ud, ud * d, wd, wd * d))
            flag = active.to(u.dtype)
            S0 = S * (1.0 - flag)  # sum over the slice of dL/d(log p)
            fS = flag * S
            S1 = Sud - fS * Swd
            S2 = Sud2 - fS * Swd2
            ge = u - fS * w  # dL/d(log p)
            gx = gout * w + two_alpha * ge * d if need_gx else None
        else:
            # Two full-size buffers: gx (the answer) and ge (scratch).
            gx = gout * w  # the x * w path; the other terms are added below
            ge = gx * xz if need_gx else gx.mul_(xz)  # dL/dw * w
            ones = ctx.ones
            S = _slice_sum(ge, ones)  # (P, H, 1, Q)
            # dL/d(log p): a softmax backward where the clamp is inactive, else w dL/dw.
            # Its sum over the slice is S (1 - sum w) = 0 where inactive, else S.
            S0 = torch.where(active, 0.0, S)
            ge.addcmul_(w, S0.sub_(S))  # S0 - S = -S where inactive, 0 elsewhere
            S0.add_(S)
            ge.mul_(d)  # dL/d(log p) * d
            S1 = _slice_sum(ge, ones)
            if need_gx:
                gx.addcmul_(ge, two_alpha)  # through d
            S2 = _slice_sum(ge.mul_(d), ones)

        # log p = -(A d^2 + R) / v - K with d = x - mu - b, v = var + eps
        gv = (A.view(1, H, 1, 1) * S2).addcmul_(R.view(1, H, 1, 1), S0).mul_(inv_v * inv_v)  # dL/dv
        gmu = -two_alpha * S1  # dL/dmu per slice (also dL/db)
        if not need_gx:
            gx = None
        elif isinstance(n, int):
            beta1 = gv * (2.0 / (n - 1)) if n > 1 else torch.zeros_like(gv)
            beta0 = (gmu / n).addcmul_(beta1, b.view(1, H, 1, 1))
        else:
            beta1 = torch.where(n > 1, gv * 2.0 / (n - 1.0).clamp_min(1.0), 0.0)
            beta0 = (gmu / n.clamp_min(1.0)).addcmul_(beta1, b.view(1, H, 1, 1))
        if gx is not None and ctx.traced:
            gx = gx + d * beta1 + beta0
            if vf is not None:
                gx = gx * vf + (gout if ctx.residual else gout * (1.0 - vf))
            elif ctx.residual:
                gx = gx + gout
        elif gx is not None:
            gx.addcmul_(d, beta1)  # through the variance (x - mu = d + b)
            gx.add_(beta0)  # through the mean and b
            if vf is not None:
                gx.mul_(vf)
                if not ctx.residual:
                    gx.addcmul_(gout, 1.0 - vf)  # invalid positions: out = x
            if ctx.residual:
                gx.add_(gout)

        # Per-head coefficient gradients (gA, gR, gK, gb), then back to (m, c).
        per_slice = torch.stack([S2 * inv_v, S0 * inv_v, S0, gmu])  # (4, P, H, 1, Q)
        gA, gR, gK, gb = per_slice.sum((1, 3, 4)).unsqueeze(-1).unbind(0)  # each (H, 1)
        A2 = A.view(H, 1)
        gk = (gb / A2 * dm).sub_(gA).sub_(gR * dm * dm)  # (H, G); gA, gR, gK enter negated
        gm = (gb / A2 - 2.0 * gR * dm).mul_(k)
        gc = (gk / (c * c)).add_(gK).div_(-c)
        return gx, None, None, None, None, gm, gc


def _differentiable_backward(ctx, gout: Tensor, x: Tensor, vf: Optional[Tensor], m: Tensor, c: Tensor) -> tuple:
    """``_GaussianProduct``'s gradients with a graph of their own (double backward)."""
    need = (ctx.needs_input_grad[0], ctx.needs_input_grad[5], ctx.needs_input_grad[6])
    wrt = [t for t, wanted in zip((x, m, c), need) if wanted]
    out, _ = _gaussian_product_autograd(x, vf, ctx.eps, ctx.residual, m, c)
    found = iter(torch.autograd.grad(out, wrt, gout, create_graph=True, allow_unused=True))
    gx, gm, gc = (next(found) if wanted else None for wanted in need)
    return gx, None, None, None, None, gm, gc


def _finite_amax(t: Tensor) -> Tensor:
    """Max over dim 2 (invalid entries are -inf); 0 for a slice with no finite entry."""
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
    mean_offsets: Tensor,
    scales: Tensor,
    eps: float,
    residual: bool = False,
) -> tuple[Tensor, Tensor]:
    """Product-mode Gaussian adaptive attention on a ``(P, H, N, Q)`` tensor.

    Args:
        x: input laid out as (P, H, N, Q); normalised over dim 2.
        vf: None, or a 0/1 float mask broadcastable to x (1 = real position).
        mean_offsets: shape (H, G), row h for head h.
        scales: shape (H, G) (the original's ``c``).
        eps: added to the variance, and lower clamp of the normalising sum.
        residual: return ``x + x * w`` instead of ``x * w``.

    Returns:
        ``(out, w)``, both shaped like x; ``w`` is detached. Invalid positions
        have ``w == 0`` and ``out == x``.
    """
    assert x.dim() == 4 and mean_offsets.shape[0] == scales.shape[0] == x.shape[1]
    traced = torch.compiler.is_compiling()
    if traced and _COMPILE_PLAIN_FORMULA:
        return _gaussian_product_autograd(x, vf, eps, residual, mean_offsets, scales)
    return _GaussianProduct.apply(x, vf, eps, residual, traced, mean_offsets, scales)


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
