"""A stack of multi-head Gaussian adaptive attention layers with residuals.

Shape legend: ``x`` is (B...), any shape with at least 2 dimensions; every
layer normalises over its own axis and returns the same shape.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import Tensor, nn

from .attention import MultiHeadGaussianAdaptiveAttention, _check_input, _check_positive_int, attend_layers, validity_mask

__all__ = ["GaussianBlock"]


class GaussianBlock(nn.Module):
    """``num_layers`` multi-head layers, each wrapped in a residual: ``x = layer(x) + x``.

    Layer ``l`` is a :class:`MultiHeadGaussianAdaptiveAttention` over
    ``norm_axes[l]`` with ``num_heads[l]`` heads of ``num_gaussians[l]``
    Gaussians (state-dict keys ``layers.{l}.attention_heads.{h}.mean_offsets``
    and ``.c``, as in the original).

    Padding: the valid positions are computed once from the block's input (the
    ``mask``, and ``x != padding_value`` when ``padding_value`` is set; both must
    agree). Invalid positions are excluded from every layer's statistics and
    normalising sum and pass through every layer unchanged, residual included:
    ``x = where(valid, layer(x) + x, x)``. So a non-zero ``padding_value``
    stays recognisable after the first layer (the original turned a pad ``p``
    into ``2 p``).

    As in the original, ``eps`` reaches the layers but not their heads, which
    run with 1e-8 (see :class:`MultiHeadGaussianAdaptiveAttention`).

    Args:
        norm_axes: axis of each layer, length ``num_layers``.
        num_heads: heads of each layer, length ``num_layers``.
        num_gaussians: Gaussians per head of each layer, length ``num_layers``.
        num_layers: number of layers.
        padding_value: value marking padded entries of the block's input, or None.
        eps: passed on to the layers (see above).
        mixture: use the mixture variant in every layer.
    """

    def __init__(
        self,
        norm_axes: Sequence[int],
        num_heads: Sequence[int],
        num_gaussians: Sequence[int],
        num_layers: int,
        padding_value: Optional[float] = None,
        eps: float = 1e-8,
        mixture: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int("num_layers", num_layers)
        for name, values in (("norm_axes", norm_axes), ("num_heads", num_heads), ("num_gaussians", num_gaussians)):
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise ValueError(f"{name} must be a list with one entry per layer, got {values!r}")
            if len(values) != num_layers:
                raise ValueError(f"{name} has {len(values)} entries but num_layers is {num_layers}")
        self.num_layers = num_layers
        self.padding_value = padding_value
        self.eps = eps
        self.mixture = bool(mixture)
        self.layers = nn.ModuleList(
            [
                MultiHeadGaussianAdaptiveAttention(norm_axes[l], num_heads[l], num_gaussians[l], padding_value, eps, mixture=mixture)
                for l in range(num_layers)
            ]
        )

    def forward(
        self,
        x: Tensor,
        mask: Optional[Tensor] = None,
        return_attention_details: bool = False,
    ) -> Union[Tensor, tuple[Tensor, dict[str, Tensor]]]:
        """Apply every layer with its residual.

        Args:
            x: input of shape (B...), at least 2 dimensions, floating point.
            mask: optional bool tensor broadcastable to ``x.shape``, True = valid.
            return_attention_details: also return each layer's (detached) weights.

        Returns:
            ``out`` of shape (B...), or ``(out, {"layer_0": w_0, ...})`` with
            each ``w_l`` of shape (B...).
        """
        for layer in self.layers:
            _check_input(x, layer.norm_axis)
        valid = validity_mask(x, mask, self.padding_value)  # once, from the block's input
        x, ws = attend_layers(x, self.layers, valid, residual=True, need_w=return_attention_details)
        if not return_attention_details:
            return x
        return x, {f"layer_{l}": w for l, w in enumerate(ws)}
