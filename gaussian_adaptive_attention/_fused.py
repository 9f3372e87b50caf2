"""The fused CPU kernels as custom ops, and the switch that turns them off.

``kernels.cpp`` registers ``torch.ops.gaussian_adaptive_attention.fused_block``:
a chain of product-mode layers (each on the previous one's output) in one
node of the autograd graph, with a C++ autograd formula that calls
``fused_block_backward``. This module adds what lives in Python: the fake
(meta) implementations that let ``torch.compile`` and ``torch.export`` keep
the ops in their graphs, and ``fused_block_backward_reference``, the
differentiable backward used under ``create_graph=True`` (double backward).

The kernels are loaded (built if need be, see ``_build.py``) on the first
eager CPU call in float32 or float64. Where that fails, the library runs the
PyTorch path and says so once per process, on stderr.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from . import _build
from .functional import _gaussian_product_autograd

__all__ = ["set_fused_kernels", "fused_kernels_available"]

_NAMESPACE = "gaussian_adaptive_attention"
_DTYPES = (torch.float32, torch.float64)

_enabled = os.environ.get("GAA_NATIVE", "1") != "0"
_tried = False
_how: Optional[str] = None  # "prebuilt", "cached" or "built" once loaded
_noted = False
_op = None  # torch.ops.gaussian_adaptive_attention.fused_block.default, once loaded
_library: Optional[torch.library.Library] = None  # keeps the Python registrations alive
_load_lock = threading.Lock()


def set_fused_kernels(enabled: bool) -> bool:
    """Turn the fused CPU kernels on or off for this process; returns the previous setting.

    Off, every call runs the PyTorch path (the same maths as PyTorch
    operations). ``GAA_NATIVE=0`` in the environment starts a process with
    them off; this call overrides it.

    Args:
        enabled: whether CPU float32/float64 product-mode layers may use the kernels.
    """
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def fused_kernels_available() -> bool:
    """Whether calls will use the fused CPU kernels: switched on, and loaded.

    Loads them on first use, building them if need be (tens of seconds once);
    where that is impossible, prints the one-line note and returns False.
    """
    return _enabled and _loaded()


def _note(error: _build.BuildError) -> None:
    global _noted
    if not _noted:
        _noted = True
        sys.stderr.write(
            f"gaussian_adaptive_attention: note: fused CPU kernels unavailable ({error.reason}); using the PyTorch "
            f"path, 3-4x slower. To fix: {error.fix}; set GAA_NATIVE=0 to use the PyTorch path without this note.\n"
        )
        sys.stderr.flush()


@torch.compiler.assume_constant_result  # torch.compile: decided once, while tracing
def _loaded() -> bool:
    """Load the kernels on the first call (building them if need be); whether they are loaded."""
    global _tried, _how, _op
    if _tried:
        return _op is not None
    with _load_lock:
        if not _tried:
            try:
                _how = _build.load()
                _register_python_parts()
                _op = torch.ops.gaussian_adaptive_attention.fused_block.default
            except _build.BuildError as e:
                _note(e)
            except Exception as e:  # loading a library can fail in many ways; none may break the caller
                _note(_build.BuildError(f"loading them failed: {type(e).__name__}: {e}", "report this, with the message"))
            _tried = True
    return _op is not None


def usable(x: Tensor) -> bool:
    """Whether the kernels can take x: switched on, CPU, float32 or float64, and loaded."""
    return _enabled and x.device.type == "cpu" and x.dtype in _DTYPES and _loaded()


class FusedLayer(NamedTuple):
    """One product-mode layer as the kernels take it (see ``_HeadAttention._fused_layer``)."""

    axis: int  # the normalised axis, non-negative
    heads: int  # H; the axis must split evenly
    residual: bool  # out = x + x * w instead of x * w
    mask: Optional[Tensor]  # (P|1, L, Q|1) 0/1 in x's dtype, or None
    eps: float
    mean_offsets: Tensor  # (H, G)
    scales: Tensor  # (H, G)


def run(x: Tensor, layers: Sequence[FusedLayer], need_w: bool) -> tuple[Tensor, list[Optional[Tensor]]]:
    """Apply ``layers`` in turn through the kernels: ``(out, [w_0, ...])``, weights None unless ``need_w``."""
    params = [t for ly in layers for t in (ly.mean_offsets, ly.scales)]
    spec = [v for ly in layers for v in (ly.axis, ly.heads, int(ly.residual))]
    out, ws = _op(x, params, [ly.mask for ly in layers], spec, [ly.eps for ly in layers], need_w)
    return out, list(ws) if need_w else [None] * len(layers)


# ----------------------------------------------------------------------------- fake implementations


def _geometry(shape: Sequence[int], layers: Sequence[int], l: int) -> tuple[int, int, int]:
    """(P, H, Q) of layer l: the layer sees x as (P, H, L // H, Q)."""
    axis, heads = layers[3 * l], layers[3 * l + 1]
    return math.prod(shape[:axis]), heads, math.prod(shape[axis + 1 :])


def _fake_block(x, params, masks, layers, eps, need_weights):
    n = len(layers) // 3
    return x.new_empty(x.shape), [x.new_empty(x.shape) for _ in range(n)] if need_weights else []


def _fake_block_forward(x, params, masks, layers, eps, need_weights):
    out, ws = _fake_block(x, params, masks, layers, eps, need_weights)
    n = len(layers) // 3
    saved = [x.new_empty(x.shape) for _ in range(n - 1)]
    saved += [x.new_empty(4 * math.prod(_geometry(x.shape, layers, l))) for l in range(n)]
    return out, ws, saved


def _fake_block_backward(grad, x, saved, params, masks, layers, need_input_grad):
    gx = x.new_empty(x.shape) if need_input_grad else x.new_empty(0)
    return gx, [p.new_empty(p.shape) for p in params]


# ----------------------------------------------------------------------------- double backward


def _reference_chain(x: Tensor, params: Sequence[Tensor], masks: Sequence[Optional[Tensor]], layers: Sequence[int], eps: Sequence[float]) -> Tensor:
    """The chain's output by PyTorch operations that autograd can differentiate twice."""
    h = x
    for l in range(len(layers) // 3):
        P, H, Q = _geometry(h.shape, layers, l)
        N = h.shape[layers[3 * l]] // H
        mask = masks[l]
        vf = None if mask is None else mask.view(mask.shape[0], H, N, mask.shape[2])  # (P|1, H, N, Q|1)
        out, _ = _gaussian_product_autograd(h.reshape(P, H, N, Q), vf, eps[l], bool(layers[3 * l + 2]), params[2 * l], params[2 * l + 1])
        h = out.reshape(h.shape)
    return h


def _reference_backward(grad, x, params, masks, layers, eps, need_input_grad):
    """fused_block's backward as a differentiable formula, for create_graph=True.

    Registered as CompositeImplicitAutograd, so the gradients it returns carry
    a graph back to x, the parameters and grad: gradgradcheck holds.
    """
    wrt = ([x] if need_input_grad else []) + list(params)
    wanted = [t for t in wrt if t.requires_grad]
    with torch.enable_grad():
        out = _reference_chain(x, params, masks, layers, eps)
        found = iter(torch.autograd.grad(out, wanted, grad, create_graph=True, allow_unused=True) if wanted and out.requires_grad else [None] * len(wanted))
    grads = [next(found) if t.requires_grad else None for t in wrt]
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]
    return (grads[0] if need_input_grad else x.new_empty(0)), grads[int(need_input_grad) :]


def _register_python_parts() -> None:
    global _library
    for name, fake in (
        ("fused_block", _fake_block),
        ("fused_block_forward", _fake_block_forward),
        ("fused_block_backward", _fake_block_backward),
    ):
        torch.library.register_fake(f"{_NAMESPACE}::{name}")(fake)
    _library = torch.library.Library(_NAMESPACE, "IMPL")
    _library.impl("fused_block_backward_reference", _reference_backward, "CompositeImplicitAutograd")
