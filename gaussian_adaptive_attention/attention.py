"""Single-head and multi-head Gaussian adaptive attention modules.

Shape legend used in the comments:

    B ...  any leading dimensions of the input
    L      length of the normalised axis (``norm_axis``)
    P, Q   products of the dimensions before / after the normalised axis
    H      heads, N positions per head (the last head also takes L % H), G Gaussians

Both modules keep the original library's state-dict keys (``mean_offsets``,
``c``; ``attention_heads.{h}.mean_offsets`` / ``.c``); the multi-head module
stores its heads' parameters stacked (H, G) and runs all heads and all
Gaussians in one pass (see ``functional.py``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from . import _fused
from .functional import gaussian_mixture_attention, gaussian_product_attention

__all__ = ["GaussianAdaptiveAttention", "MultiHeadGaussianAdaptiveAttention"]

def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive_int(name: str, value: object) -> None:
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_args(norm_axis: int, num_heads: int, num_gaussians: int, eps: float) -> None:
    """The constructor checks shared by the single- and multi-head modules."""
    if not _is_int(norm_axis):
        raise ValueError(f"norm_axis must be an int, got {norm_axis!r}")
    _check_positive_int("num_heads", num_heads)
    _check_positive_int("num_gaussians", num_gaussians)
    _check_eps(eps)


def _check_eps(eps: object) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps >= 0.0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)  # skips the dispatch when nothing changes


def _check_input(x: Tensor, norm_axis: int) -> int:
    """Validate ``x`` against ``norm_axis``; return the axis as a non-negative index."""
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dimensions, got shape {tuple(x.shape)}")
    if not -x.dim() <= norm_axis < x.dim():
        raise ValueError(
            f"norm_axis {norm_axis} is out of range for an input with {x.dim()} dimensions "
            f"(expected {-x.dim()} <= norm_axis < {x.dim()})"
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    return norm_axis % x.dim()


def validity_mask(x: Tensor, mask: Optional[Tensor], padding_value: Optional[float]) -> Optional[Tensor]:
    """Combine ``mask`` (True = valid) and ``x != padding_value`` into one bool mask.

    Args:
        x: the input, shape (B...).
        mask: None, or a bool tensor broadcastable to ``x.shape``.
        padding_value: None, or the value that marks padded entries of ``x``.

    Returns:
        None when neither is given, else a bool tensor broadcastable to ``x``.
    """
    valid = None
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a bool tensor (True = valid position), got {got}")
        try:
            shape = torch.broadcast_shapes(mask.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the input's shape {tuple(x.shape)}"
            )
        valid = mask
    if padding_value is not None:
        not_pad = x != padding_value
        valid = not_pad if valid is None else valid & not_pad
    return valid


_HALF = (torch.float16, torch.bfloat16)
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for this kind of device (False for devices autocast does not know)."""
    return device_type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(device_type)


def attend_layers(
    x: Tensor, layers: Sequence["_HeadAttention"], valid: Optional[Tensor], residual: bool, need_w: bool
) -> tuple[Tensor, list[Optional[Tensor]]]:
    """Apply ``layers`` in turn, each on the previous one's output: ``(out, [w_0, ...])``.

    The one place that chooses between the fused CPU kernels (``_fused``: the
    whole chain in one custom op, one node of the autograd graph) and the
    PyTorch path (layer by layer). The kernels take eager and compiled CPU
    calls in float32 and float64 in product mode; everything else, and every
    call while they are switched off or cannot be built, runs in PyTorch.

    Args:
        x: input of shape (B...), already checked by ``_check_input``.
        layers: the single- or multi-head modules to apply.
        valid: None or a bool mask broadcastable to x (True = valid), fixed for all layers.
        residual: each layer returns ``x + x * w`` instead of ``x * w``.
        need_w: return each layer's weights (else a list of None).

    Under autocast (mixed precision) the layers run in an autocast-free region
    on x in float32: the means, variances, exponentials and normalising sums
    are never taken in half precision, and on the CPU the fused kernels still
    apply. The outputs come back in x's dtype.
    """
    if x.dtype in _HALF and _autocast_on(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            out, ws = attend_layers(x.float(), layers, valid, residual, need_w)  # (B...) float32
        return out.to(x.dtype), [None if w is None else w.to(x.dtype) for w in ws]
    if _fused.usable(x):
        fused = [layer._fused_layer(x, valid, residual) for layer in layers]
        if all(f is not None for f in fused):
            return _fused.run(x, fused, need_w)
    ws = []
    for layer in layers:
        x, w = layer._attend(x, valid, residual, need_w)
        ws.append(w)
    return x, ws


class _HeadAttention(nn.Module):
    """What both modules share: the layout change and one call for all heads."""

    norm_axis: int
    mixture: bool

    def _params(self) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """``(mean_offsets, c, mixture_logits or None)``, each of shape (H, G)."""
        raise NotImplementedError

    def _head_eps(self) -> float:
        raise NotImplementedError

    def _layout(self, x: Tensor, valid: Optional[Tensor], H: int) -> tuple[tuple[int, int, int, int], int, Optional[Tensor]]:
        """``((P, H, L // H, Q), L, v3)`` for ``x``; ``v3`` is the validity as 0/1 (P|1, L, Q|1)."""
        axis = self.norm_axis % x.dim()
        shape = x.shape
        L = shape[axis]
        if L < H:
            raise ValueError(
                f"the normalised axis has length {L}, fewer than num_heads={H}: every head needs at least one position"
            )
        P = math.prod(shape[:axis])
        Q = math.prod(shape[axis + 1 :])
        v3 = None
        if valid is not None:
            cdtype = torch.promote_types(x.dtype, torch.float32)
            vshape = (1,) * (x.dim() - valid.dim()) + tuple(valid.shape)
            pre = 1 if all(s == 1 for s in vshape[:axis]) else P
            post = 1 if all(s == 1 for s in vshape[axis + 1 :]) else Q
            target = [1 if pre == 1 else s for s in shape[:axis]] + [L] + [1 if post == 1 else s for s in shape[axis + 1 :]]
            v3 = valid.reshape(vshape).expand(target).reshape(pre, L, post).to(cdtype)  # (P|1, L, Q|1), 0/1
        return (P, H, L // H, Q), L, v3

    def _fused_layer(self, x: Tensor, valid: Optional[Tensor], residual: bool) -> Optional[_fused.FusedLayer]:
        """This layer as the fused kernels take it; None where they cannot
        (mixture mode, heads of unequal length, parameters in another dtype,
        an empty input)."""
        m, c, _ = self._params()
        (P, H, N, Q), L, v3 = self._layout(x, valid, m.shape[0])
        if L % H or self.mixture or m.dtype != x.dtype or c.dtype != x.dtype or x.numel() == 0:
            return None
        return _fused.FusedLayer(self.norm_axis % x.dim(), H, residual, v3, self._head_eps(), m, c)

    def _attend(self, x: Tensor, valid: Optional[Tensor], residual: bool, need_w: bool) -> tuple[Tensor, Optional[Tensor]]:
        """Attention over ``norm_axis`` by PyTorch operations; returns ``(out, w)`` shaped like x.

        ``out`` is ``x * w`` (``x + x * w`` when ``residual``) at valid positions
        and ``x`` elsewhere; ``w`` may be None unless ``need_w``. ``x`` must
        already have passed ``_check_input``.
        """
        m, c, logits = self._params()
        layout = self._layout(x, valid, m.shape[0])
        (P, H, chunk, Q), L, v3 = layout
        if x.numel() == 0:  # an empty batch: nothing to normalise
            return x.clone(), torch.zeros_like(x)
        shape = x.shape
        cdtype = torch.promote_types(x.dtype, torch.float32)  # statistics never in half precision
        x3 = _as(x, cdtype).reshape(P, L, Q)  # (P, L, Q)
        m, c = _as(m, cdtype), _as(c, cdtype)
        logits = None if logits is None else _as(logits, cdtype)

        # Heads 0..H-2 take `chunk` positions each, the last head the rest.
        if L % H == 0:
            groups = [(0, H, chunk)]
        else:
            groups = [(0, H - 1, chunk), (H - 1, 1, L - (H - 1) * chunk)]
        outs, ws = [], []
        for first, nh, n in groups:
            lo, hi = first * chunk, first * chunk + nh * n
            xg = x3[:, lo:hi].reshape(P, nh, n, Q)  # (P, H, N, Q)
            vg = None if v3 is None else v3[:, lo:hi].reshape(v3.shape[0], nh, n, v3.shape[2])  # (P|1, H, N, Q|1)
            heads = slice(first, first + nh)
            if logits is not None:
                out, w = gaussian_mixture_attention(xg, vg, m[heads], c[heads], logits[heads], self._head_eps(), residual)
            else:
                out, w = gaussian_product_attention(xg, vg, m[heads], c[heads], self._head_eps(), residual)
            outs.append(out.reshape(P, nh * n, Q))  # (P, N*H, Q)
            ws.append(w.reshape(P, nh * n, Q))
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # (P, L, Q)
        w = ws[0] if len(ws) == 1 else torch.cat(ws, dim=1)
        return _as(out.reshape(shape), x.dtype), _as(w.reshape(shape), x.dtype)  # (B...)


class GaussianAdaptiveAttention(_HeadAttention):
    """One head of Gaussian adaptive attention over ``norm_axis``.

    Standardises ``x`` along ``norm_axis`` (mean, unbiased variance + eps),
    scores every position with the product of G Gaussians (``mixture=True``: a
    softmax-weighted mixture), normalises the scores along the axis into weights
    ``w`` and returns ``x * w``.

    Shapes: ``x`` is (B...) with at least 2 dimensions; ``out`` and the weights
    have the same shape; the parameters ``mean_offsets`` and ``c`` are (G,).

    Numerics: the weights are ``exp(log p - max(logsumexp(log p), log eps))``,
    i.e. the original's ``p / max(sum p, eps)`` computed in log space, so no
    slice underflows to NaN. A slice whose weights all underflow in the original
    gets weights exactly 0 here too. A slice with a single (valid) position has
    variance defined as 0 (then + eps); the original returns NaN there.
    ``mean_offsets`` are in the data's raw units while ``c`` is in standardised
    units (as in the original), so the module is scale invariant only while
    the offsets are 0.

    Padding: positions where ``mask`` is False, or where ``x == padding_value``,
    are left out of the mean, the variance and the normalising sum, get weight
    exactly 0 and are returned unchanged. (The original only zeroed padded
    entries for the statistics, still counted them in the mean, variance and
    normalising sum, and so moved weight onto the pads.)

    Args:
        norm_axis: the axis to normalise over; negative values count from the end.
        num_heads: validated (positive int) for compatibility; a single head ignores it.
        num_gaussians: G, the number of Gaussians.
        padding_value: value marking padded entries of ``x``, or None.
        mean_offset_init: accepted for compatibility and unused (offsets start at 0).
        eps: added to the variance and the lower clamp of the normalising sum.
        mixture: use the mixture variant (adds the ``mixture_logits`` parameter).
    """

    def __init__(
        self,
        norm_axis: int,
        num_heads: int,
        num_gaussians: int,
        padding_value: Optional[float],
        mean_offset_init: float = 0,
        eps: float = 1e-8,
        mixture: bool = False,
    ) -> None:
        super().__init__()
        _check_args(norm_axis, num_heads, num_gaussians, eps)
        self.norm_axis = norm_axis
        self.num_heads = num_heads
        self.num_gaussians = num_gaussians
        self.padding_value = padding_value
        self.mean_offset_init = mean_offset_init
        self.eps = float(eps)
        self.mixture = bool(mixture)
        self.mean_offsets = nn.Parameter(torch.zeros(num_gaussians))  # (G,)
        self.c = nn.Parameter(torch.exp(torch.randn(num_gaussians)))  # (G,)
        if self.mixture:
            self.mixture_logits = nn.Parameter(torch.ones(num_gaussians))  # (G,)

    def _params(self) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        return self.mean_offsets[None], self.c[None], self.mixture_logits[None] if self.mixture else None  # (1, G)

    def _head_eps(self) -> float:
        return self.eps

    def forward(
        self,
        x: Tensor,
        mask: Optional[Tensor] = None,
        return_attention_details: bool = False,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """Apply the attention.

        Args:
            x: input of shape (B...), at least 2 dimensions, floating point.
            mask: optional bool tensor broadcastable to ``x.shape``, True = valid.
            return_attention_details: also return the (detached) weights.

        Returns:
            ``out`` of shape (B...), or ``(out, weights)`` with weights of shape (B...).
        """
        _check_input(x, self.norm_axis)
        valid = validity_mask(x, mask, self.padding_value)
        out, (w,) = attend_layers(x, [self], valid, residual=False, need_w=return_attention_details)
        return (out, w) if return_attention_details else out

    def extra_repr(self) -> str:
        return (
            f"norm_axis={self.norm_axis}, num_gaussians={self.num_gaussians}, "
            f"padding_value={self.padding_value}, eps={self.eps}, mixture={self.mixture}"
        )


class MultiHeadGaussianAdaptiveAttention(_HeadAttention):
    """H heads of Gaussian adaptive attention, each over its own slice of ``norm_axis``.

    The axis (length L) is split into H slices of ``L // H`` positions, the last
    head also taking the ``L % H`` remainder; each head normalises over its own
    slice with its own ``mean_offsets`` and ``c``. Outputs and weights are
    concatenated back along the axis.

    Parameters: ``mean_offsets`` and ``c`` (H, G), row h for head h, so that a
    backward pass accumulates two gradients per layer, not two per head.
    ``attention_heads[h]`` is still a :class:`GaussianAdaptiveAttention` whose
    parameters are views of row h, and the state dict keeps the original's
    per-head keys (``attention_heads.{h}.mean_offsets`` / ``.c``).

    Shapes: ``x`` is (B...); ``out`` and the weights have the same shape.

    Quirk kept from the original: the heads always run with ``eps = 1e-8``
    (variance and clamp), whatever ``eps`` is passed here; the original passed
    ``eps`` positionally into the heads' unused ``mean_offset_init``. ``eps`` is
    stored as ``self.eps`` but has no effect.

    See :class:`GaussianAdaptiveAttention` for the numerics, the length-1 rule
    and the padding semantics.

    Args:
        norm_axis: the axis to split and normalise over; negative counts from the end.
        num_heads: H, the number of heads.
        num_gaussians: G, the number of Gaussians per head.
        padding_value: value marking padded entries of ``x``, or None.
        eps: accepted for compatibility; the heads use 1e-8 (see above).
        mixture: use the mixture variant in every head.
    """

    def __init__(
        self,
        norm_axis: int,
        num_heads: int,
        num_gaussians: int,
        padding_value: Optional[float] = None,
        eps: float = 1e-8,
        mixture: bool = False,
    ) -> None:
        super().__init__()
        _check_args(norm_axis, num_heads, num_gaussians, eps)
        self.norm_axis = norm_axis
        self.num_heads = num_heads
        self.num_gaussians = num_gaussians
        self.padding_value = padding_value
        self.eps = float(eps)
        self.mixture = bool(mixture)
        # The heads' parameters, stacked: row h is head h's (G,) parameter, drawn
        # from the random stream in the original's order (head by head).
        self.mean_offsets = nn.Parameter(torch.zeros(num_heads, num_gaussians))  # (H, G)
        self.c = nn.Parameter(torch.exp(torch.randn(num_heads, num_gaussians)))  # (H, G)
        if self.mixture:
            self.mixture_logits = nn.Parameter(torch.ones(num_heads, num_gaussians))  # (H, G)
        # As in the original, eps lands in mean_offset_init and the heads keep eps=1e-8.
        self.attention_heads = nn.ModuleList([_LayerHead(self, h, eps) for h in range(num_heads)])

    def _params(self) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        p = self._parameters  # not through nn.Module.__getattr__: this runs on every call
        return p["mean_offsets"], p["c"], p.get("mixture_logits")

    def _head_eps(self) -> float:
        return self._modules["attention_heads"]._modules["0"].eps  # 1e-8 unless changed by hand

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        pass  # the heads save their rows under the original's keys (attention_heads.{h}.*)

    def _load_from_state_dict(
        self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
        missing_keys: list, unexpected_keys: list, error_msgs: list,
    ) -> None:
        # The heads load their rows; nothing else lives under this prefix.
        if strict:
            unexpected_keys.extend(
                k for k in state_dict if k.startswith(prefix) and k[len(prefix) :].split(".")[0] not in self._modules
            )

    def forward(
        self,
        x: Tensor,
        mask: Optional[Tensor] = None,
        return_attention_details: bool = False,
    ) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """Apply the attention.

        Args:
            x: input of shape (B...), at least 2 dimensions, floating point.
            mask: optional bool tensor broadcastable to ``x.shape``, True = valid.
            return_attention_details: also return the (detached) weights.

        Returns:
            ``out`` of shape (B...), or ``(out, weights)`` with weights of shape
            (B...), the heads' weights concatenated along ``norm_axis``.
        """
        _check_input(x, self.norm_axis)
        valid = validity_mask(x, mask, self.padding_value)
        out, (w,) = attend_layers(x, [self], valid, residual=False, need_w=return_attention_details)
        return (out, w) if return_attention_details else out

    def extra_repr(self) -> str:
        return f"norm_axis={self.norm_axis}, num_heads={self.num_heads}, num_gaussians={self.num_gaussians}"


class _LayerHead(GaussianAdaptiveAttention):
    """Head h of a multi-head layer: a :class:`GaussianAdaptiveAttention` whose
    ``mean_offsets``, ``c`` (and ``mixture_logits``) are row h of the layer's
    stacked (H, G) parameters, as views.

    Reading, ``copy_`` and in-place updates under ``no_grad`` reach the layer's
    parameters; gradients land on the layer's parameters (``layer.c.grad[h]``).
    ``state_dict`` and ``load_state_dict`` use the original's per-head keys.
    """

    _names = ("mean_offsets", "c", "mixture_logits")

    def __init__(self, layer: "MultiHeadGaussianAdaptiveAttention", head: int, mean_offset_init: float) -> None:
        nn.Module.__init__(self)
        self.__dict__["_layer"] = layer  # a plain reference: not a submodule, so nothing is counted twice
        self.head = head
        self.norm_axis = layer.norm_axis
        self.num_heads = layer.num_heads
        self.num_gaussians = layer.num_gaussians
        self.padding_value = layer.padding_value
        self.mean_offset_init = mean_offset_init
        self.eps = 1e-8
        self.mixture = layer.mixture

    mean_offsets = property(lambda self: self._layer.mean_offsets[self.head])  # (G,)
    c = property(lambda self: self._layer.c[self.head])  # (G,)
    mixture_logits = property(lambda self: self._layer.mixture_logits[self.head])  # (G,)

    def _params(self) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        rows = slice(self.head, self.head + 1)
        layer = self._layer
        return layer.mean_offsets[rows], layer.c[rows], layer.mixture_logits[rows] if self.mixture else None  # (1, G)

    def _get_name(self) -> str:
        return "GaussianAdaptiveAttention"  # what the original's repr shows

    def _own(self) -> tuple[str, ...]:
        return self._names if self.mixture else self._names[:2]

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        for name in self._own():
            row = getattr(self, name)
            destination[prefix + name] = row if keep_vars else row.detach()

    def _load_from_state_dict(
        self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
        missing_keys: list, unexpected_keys: list, error_msgs: list,
    ) -> None:
        for name in self._own():
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value, row = state_dict[key], getattr(self, name)
            if not isinstance(value, Tensor):
                error_msgs.append(f'While copying the parameter named "{key}", expected torch.Tensor but got {type(value).__name__}.')
            elif value.shape != row.shape:
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} from checkpoint, "
                    f"the shape in current model is {tuple(row.shape)}."
                )
            else:
                with torch.no_grad():
                    row.copy_(value)
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k[len(prefix) :] not in self._own())
