"""A plain, loop-by-loop oracle of Gaussian adaptive attention (spec step by step).

One head and one Gaussian at a time, the direct product of Gaussians, exactly as
in ``shared/spec/gaussian-adaptive-attention.md``. It runs in whatever dtype it
is given (the tests use float64 as the reference; the benchmark times it in
float32 as the stand-in for the original's loop structure). Gradients come from
autograd.

Two deliberate additions to the spec's steps, both the library's documented rules:
- a slice of length 1 has variance 0 (the original returns NaN);
- ``masked_*`` helpers give the padding semantics: each slice is computed on its
  valid positions only, and invalid positions are returned unchanged.

Parameters are passed as plain tensors: a head is ``(m, c)`` or, in mixture
mode, ``(m, c, logits)``, each of shape (G,).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = [
    "oracle_head",
    "oracle_multihead",
    "oracle_block",
    "masked_oracle_multihead",
    "masked_oracle_block",
    "head_params",
    "block_params",
]

Head = Sequence[Tensor]


def oracle_head(x: Tensor, axis: int, head: Head, eps: float) -> tuple[Tensor, Tensor]:
    """One head over the whole of ``axis``: returns ``(x * w, w)``."""
    mu = x.mean(dim=axis, keepdim=True)
    if x.shape[axis] > 1:
        var = x.var(dim=axis, keepdim=True, unbiased=True) + eps
    else:
        var = torch.zeros_like(mu) + eps
    m, c = head[0], head[1]
    G = m.shape[0]
    if len(head) == 2:  # product of Gaussians
        p = torch.ones_like(x)
        for i in range(G):
            y = (x - (mu + m[i])) / torch.sqrt(var)
            g = torch.exp(-(y**2) / (2 * c[i] ** 2)) / torch.sqrt(2 * math.pi * c[i] ** 2)
            p = p * g
    else:  # mixture
        pi = torch.softmax(head[2], dim=0)
        p = torch.zeros_like(x)
        for i in range(G):
            y = (x - (mu + m[i])) / torch.sqrt(var)
            p = p + pi[i] * torch.exp(-(y**2) / (2 * c[i] ** 2))
    w = p / torch.clamp(p.sum(dim=axis, keepdim=True), min=eps)
    return x * w, w


def oracle_multihead(x: Tensor, axis: int, heads: Sequence[Head], eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Split ``axis`` into heads (the last takes the remainder), one head at a time."""
    L = x.shape[axis]
    H = len(heads)
    chunk = L // H
    outs, ws = [], []
    for h in range(H):
        start = h * chunk
        end = (h + 1) * chunk if h < H - 1 else L
        out, w = oracle_head(x.narrow(axis, start, end - start), axis, heads[h], eps)
        outs.append(out)
        ws.append(w)
    return torch.cat(outs, dim=axis), torch.cat(ws, dim=axis)


def oracle_block(
    x: Tensor, axes: Sequence[int], layers: Sequence[Sequence[Head]], eps: float = 1e-8
) -> tuple[Tensor, list[Tensor]]:
    """``x = layer(x) + x`` for each layer; returns the output and each layer's weights."""
    ws = []
    for axis, heads in zip(axes, layers):
        out, w = oracle_multihead(x, axis, heads, eps)
        x = out + x
        ws.append(w)
    return x, ws


def _masked(fn, x: Tensor, axis: int, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Apply ``fn`` (a function of a 1-D slice) to the valid entries of every slice along ``axis``."""
    valid = valid.expand(x.shape)
    xt = x.movedim(axis, -1)
    vt = valid.movedim(axis, -1)
    flat_x = xt.reshape(-1, xt.shape[-1])
    flat_v = vt.reshape(-1, vt.shape[-1])
    rows_out, rows_w = [], []
    for r in range(flat_x.shape[0]):
        row, keep = flat_x[r], flat_v[r]
        out_row = row.clone()
        w_row = torch.zeros_like(row)
        idx = keep.nonzero().flatten()
        if idx.numel() > 0:
            out_v, w_v = fn(row[idx])
            out_row = out_row.index_put((idx,), out_v)
            w_row = w_row.index_put((idx,), w_v)
        rows_out.append(out_row)
        rows_w.append(w_row)
    out = torch.stack(rows_out).reshape(xt.shape).movedim(-1, axis)
    w = torch.stack(rows_w).reshape(xt.shape).movedim(-1, axis)
    return out, w


def masked_oracle_multihead(
    x: Tensor, axis: int, heads: Sequence[Head], valid: Tensor, eps: float = 1e-8, residual: bool = False
) -> tuple[Tensor, Tensor]:
    """Multi-head attention where each head's slice uses its valid positions only."""
    L = x.shape[axis]
    H = len(heads)
    chunk = L // H
    valid = valid.expand(x.shape)
    outs, ws = [], []
    for h in range(H):
        start = h * chunk
        end = (h + 1) * chunk if h < H - 1 else L
        xs = x.narrow(axis, start, end - start)
        vs = valid.narrow(axis, start, end - start)

        def fn(row: Tensor, h: int = h) -> tuple[Tensor, Tensor]:
            out, w = oracle_head(row[None, :], 1, heads[h], eps)
            out = out + row[None, :] if residual else out
            return out[0], w[0]

        out, w = _masked(fn, xs, axis, vs)
        outs.append(out)
        ws.append(w)
    return torch.cat(outs, dim=axis), torch.cat(ws, dim=axis)


def masked_oracle_block(
    x: Tensor, axes: Sequence[int], layers: Sequence[Sequence[Head]], valid: Tensor, eps: float = 1e-8
) -> tuple[Tensor, list[Tensor]]:
    """The block with padding: invalid positions pass through every layer unchanged."""
    ws = []
    for axis, heads in zip(axes, layers):
        x, w = masked_oracle_multihead(x, axis, heads, valid, eps, residual=True)
        ws.append(w)
    return x, ws


def head_params(head: torch.nn.Module, dtype: Optional[torch.dtype] = None) -> tuple[Tensor, ...]:
    """A library head's parameters as an oracle head (kept in the autograd graph)."""
    params = [head.mean_offsets, head.c]
    if getattr(head, "mixture", False):
        params.append(head.mixture_logits)
    return tuple(p if dtype is None else p.to(dtype) for p in params)


def block_params(block: torch.nn.Module, dtype: Optional[torch.dtype] = None) -> list[list[tuple[Tensor, ...]]]:
    """A library GaussianBlock's parameters as oracle layers."""
    return [[head_params(h, dtype) for h in layer.attention_heads] for layer in block.layers]
