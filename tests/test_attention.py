"""Tests of the gaussian_adaptive_attention library against a loop-by-loop oracle.

The oracle (tests/attention_oracle.py) follows the spec step by step, one head
and one Gaussian at a time, and runs in float64 as the reference. The library
runs in float32 (and float64) and must match it: to float64 round-off in
float64, and to float32 tolerance in float32, i.e. ``rtol=1e-5`` with an
``atol`` of 1e-5 times the scale of the quantity, or three times the error of
the same oracle run in float32 where the problem itself is ill-conditioned
(two nearly equal values in a slice of length 2, say).
"""

from __future__ import annotations

import os
import shutil
from typing import Iterator, Optional, Sequence

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .attention_oracle import (
    block_params,
    head_params,
    masked_oracle_block,
    masked_oracle_multihead,
    oracle_block,
    oracle_head,
    oracle_multihead,
)
from gaussian_adaptive_attention import (
    GaussianAdaptiveAttention,
    GaussianBlock,
    MultiHeadGaussianAdaptiveAttention,
    __version__,
    fused_kernels_available,
    set_fused_kernels,
)

F64 = torch.float64
F32 = torch.float32


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, params=["native", "torch"])  # ids kept: hypothesis derives its examples from them
def kernels(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run every test twice: through the fused CPU kernels, and through PyTorch operations only."""
    if request.param == "native" and not fused_kernels_available():
        pytest.skip("the fused CPU kernels are switched off or cannot be built here (see the note on stderr)")
    previous = set_fused_kernels(request.param == "native")
    yield request.param
    set_fused_kernels(previous)


def randomise(module: torch.nn.Module, seed: int, offset_std: float = 0.3, log_c_std: float = 0.5) -> None:
    """Deterministic non-trivial parameters: offsets ~ N(0, offset_std), c = exp(N(0, log_c_std))."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("mean_offsets"):
                p.copy_(offset_std * torch.randn(p.shape, generator=gen))
            elif name.endswith("c"):
                p.copy_(torch.exp(log_c_std * torch.randn(p.shape, generator=gen)))
            else:  # mixture logits
                p.copy_(1.0 + torch.randn(p.shape, generator=gen))


def clone_params(module: torch.nn.Module, dtype: torch.dtype) -> list[torch.Tensor]:
    return [p.detach().to(dtype).clone().requires_grad_() for p in module.parameters()]


def as_oracle_heads(stacked: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
    """A layer's stacked (H, G) parameters (module order) as the oracle's heads: row h of each."""
    return [tuple(t[h] for t in stacked) for h in range(stacked[0].shape[0])]


def as_oracle_layers(block: GaussianBlock, flat: Sequence[torch.Tensor]) -> list[list[tuple[torch.Tensor, ...]]]:
    """Regroup a flat parameter list (module order) into the oracle's layers of heads."""
    per_layer = 3 if block.mixture else 2
    return [as_oracle_heads(flat[i : i + per_layer]) for i in range(0, len(flat), per_layer)]


def excess(actual: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-5) -> float:
    """The largest error beyond rtol * |ref|."""
    return float(((actual.to(F64) - ref).abs() - rtol * ref.abs()).clamp_min(0).max()) if ref.numel() else 0.0


def assert_matches(
    actual: torch.Tensor, ref: torch.Tensor, scale: float, base: float, float32_oracle: Optional[torch.Tensor] = None
) -> None:
    """assert_close with rtol 1e-5 and atol = max(base * scale, 3 x the float32 oracle's own error)."""
    atol = base * scale
    if float32_oracle is not None:
        atol = max(atol, 3.0 * excess(float32_oracle, ref))
    torch.testing.assert_close(actual.to(F64), ref, rtol=1e-5, atol=atol)


def run_block_case(
    shape: tuple[int, ...],
    axes: list[int],
    heads: list[int],
    gaussians: list[int],
    seed: int,
    x_scale: float = 1.0,
    x_shift: float = 0.0,
) -> None:
    """Block output, weights and all gradients vs the float64 oracle, in float64 and float32."""
    layers = len(axes)
    block = GaussianBlock(axes, heads, gaussians, layers)
    randomise(block, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(shape, generator=gen, dtype=F64) * x_scale + x_shift
    gout = torch.randn(shape, generator=gen, dtype=F64)

    ref_params = clone_params(block, F64)
    xr = x.clone().requires_grad_()
    ref_out, ref_ws = oracle_block(xr, axes, as_oracle_layers(block, ref_params))
    ref_grads = torch.autograd.grad(ref_out, [xr, *ref_params], gout)

    # float32 oracle: how well-conditioned the case is in float32
    o32_params = clone_params(block, F32)
    xo = x.to(F32).requires_grad_()
    o32_out, o32_ws = oracle_block(xo, axes, as_oracle_layers(block, o32_params))
    o32_grads = torch.autograd.grad(o32_out, [xo, *o32_params], gout.to(F32))

    for dtype in (F64, F32):
        mod = GaussianBlock(axes, heads, gaussians, layers)
        mod.load_state_dict(block.state_dict())
        mod = mod.to(dtype)
        xa = x.to(dtype).requires_grad_()
        out, details = mod(xa, return_attention_details=True)
        assert out.dtype == dtype and out.shape == x.shape
        assert list(details) == [f"layer_{l}" for l in range(layers)]
        grads = torch.autograd.grad(out, [xa, *mod.parameters()], gout.to(dtype))
        gscale = max(float(g.abs().max()) for g in ref_grads)
        if dtype == F64:
            torch.testing.assert_close(out, ref_out.detach(), rtol=1e-10, atol=1e-12 * float(ref_out.detach().abs().max()))
            for l in range(layers):
                torch.testing.assert_close(details[f"layer_{l}"], ref_ws[l].detach(), rtol=1e-9, atol=1e-12)
            for g, r in zip(grads, ref_grads):
                torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10 * gscale)
        else:
            assert_matches(out, ref_out.detach(), float(ref_out.detach().abs().max()), 1e-5, o32_out.detach())
            for l in range(layers):
                assert_matches(details[f"layer_{l}"], ref_ws[l].detach(), 1.0, 1e-5, o32_ws[l].detach())
            for g, r, o in zip(grads, ref_grads, o32_grads):
                # Gradients through a stack of layers amplify float32 rounding of
                # the forward pass (short slices are ill-conditioned): 5e-5 of scale.
                assert_matches(g, r, gscale, 5e-5, o)


# ----------------------------------------------------------------------------- oracle sweep

SWEEP = [
    # shape, axes, heads, gaussians
    ((10, 128), [1, 1, 1], [4, 4, 4], [5, 5, 5]),  # the seed example
    ((6, 9), [-1], [1], [1]),
    ((6, 9), [0, -1], [2, 4], [16, 3]),  # 9 % 4: the last head takes the remainder
    ((3, 11, 5), [1, -2, -1], [3, 8, 2], [2, 1, 16]),
    ((3, 11, 5), [-3, 2, 0, 1], [1, 2, 3, 5], [4, 8, 2, 7]),  # 4 layers
    ((2, 3, 10, 7), [2, -1, -3], [8, 1, 2], [8, 2, 4]),
    ((2, 5, 4, 6), [3, -4, 1, -2], [6, 2, 5, 3], [3, 12, 1, 6]),
    ((4, 13), [1], [6], [9]),  # 13 = 5 * 2 + 3: last head of length 3
]


@pytest.mark.parametrize("shape,axes,heads,gaussians", SWEEP)
def test_block_matches_oracle(shape, axes, heads, gaussians) -> None:
    run_block_case(shape, axes, heads, gaussians, seed=len(shape) * 100 + sum(heads))


def test_block_matches_oracle_scaled_and_shifted_data() -> None:
    # Offsets are in raw units: scale and shift the data, keep the offsets.
    run_block_case((5, 12), [1, 0], [3, 2], [4, 2], seed=7, x_scale=50.0, x_shift=-20.0)
    run_block_case((5, 12), [1, 0], [3, 2], [4, 2], seed=8, x_scale=0.01, x_shift=3.0)


@st.composite
def block_configs(draw):
    ndim = draw(st.integers(2, 4))
    shape = tuple(draw(st.integers(2, 7)) for _ in range(ndim))
    layers = draw(st.integers(1, 4))
    axes, heads, gaussians = [], [], []
    for _ in range(layers):
        axis = draw(st.integers(-ndim, ndim - 1))
        axes.append(axis)
        heads.append(draw(st.integers(1, min(8, shape[axis]))))
        gaussians.append(draw(st.integers(1, 16)))
    seed = draw(st.integers(0, 2**16))
    return shape, axes, heads, gaussians, seed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(block_configs())
def test_block_matches_oracle_hypothesis(config) -> None:
    shape, axes, heads, gaussians, seed = config
    run_block_case(shape, axes, heads, gaussians, seed)


@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_single_head_matches_oracle_with_its_eps(axis: int) -> None:
    torch.manual_seed(0)
    mod = GaussianAdaptiveAttention(axis, 1, 6, None, eps=1e-3).double()
    randomise(mod, 3)
    x = torch.randn(4, 7, 5, dtype=F64, requires_grad=True)
    out, w = mod(x, return_attention_details=True)
    params = clone_params(mod, F64)
    xr = x.detach().clone().requires_grad_()
    ref, ref_w = oracle_head(xr, axis, params, eps=1e-3)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w, ref_w.detach(), rtol=1e-10, atol=1e-12)
    gout = torch.randn_like(x)
    g = torch.autograd.grad(out, [x, *mod.parameters()], gout)
    gr = torch.autograd.grad(ref, [xr, *params], gout)
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_multihead_ignores_eps_like_the_original() -> None:
    """The heads run with eps = 1e-8 (variance and clamp) whatever eps is passed."""
    ref = MultiHeadGaussianAdaptiveAttention(1, 3, 4, eps=1e-8).double()
    mod = MultiHeadGaussianAdaptiveAttention(1, 3, 4, eps=0.5).double()
    randomise(ref, 5)
    mod.load_state_dict(ref.state_dict())
    assert mod.eps == 0.5 and all(h.eps == 1e-8 for h in mod.attention_heads)
    x = torch.randn(3, 9, dtype=F64)
    x[0, :3] = 1.25  # a constant head slice: var = eps matters there
    out, w = mod(x, return_attention_details=True)
    heads = [head_params(h) for h in ref.attention_heads]
    expected, expected_w = oracle_multihead(x, 1, heads, eps=1e-8)
    torch.testing.assert_close(out, expected.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w, expected_w.detach(), rtol=1e-10, atol=1e-12)
    wrong, _ = oracle_multihead(x, 1, heads, eps=0.5)
    assert not torch.allclose(out, wrong.detach())


# ----------------------------------------------------------------------------- eps clamp, underflow, extremes


def test_eps_clamp_regime_matches_oracle_float64() -> None:
    """Where sum_a(p) < eps the weights sum to less than 1 and the normalising constants matter."""
    mod = MultiHeadGaussianAdaptiveAttention(1, 2, 8).double()
    with torch.no_grad():
        for h, scale in zip(mod.attention_heads, (30.0, 0.7)):  # head 0: clamp active; head 1: inactive
            h.c.copy_(scale * torch.linspace(0.8, 1.2, 8, dtype=F64))
            h.mean_offsets.copy_(torch.linspace(-0.2, 0.3, 8, dtype=F64))
    x = torch.randn(5, 12, dtype=F64, requires_grad=True)
    out, w = mod(x, return_attention_details=True)
    sums = w.view(5, 2, 6).sum(-1)
    assert (sums[:, 0] < 1e-3).all() and (sums[:, 0] > 0).all()  # clamp active
    torch.testing.assert_close(sums[:, 1], torch.ones(5, dtype=F64))  # clamp inactive
    params = clone_params(mod, F64)
    heads = as_oracle_heads(params)
    xr = x.detach().clone().requires_grad_()
    ref, ref_w = oracle_multihead(xr, 1, heads)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(w, ref_w.detach(), rtol=1e-10, atol=0)
    gout = torch.randn_like(x)
    g = torch.autograd.grad(out, [x, *mod.parameters()], gout)
    gr = torch.autograd.grad(ref, [xr, *params], gout)
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-14)
    # float32 agrees with the float64 oracle in that regime too
    mod32 = MultiHeadGaussianAdaptiveAttention(1, 2, 8)
    mod32.load_state_dict(mod.state_dict())
    out32, w32 = mod32(x.detach().float(), return_attention_details=True)
    torch.testing.assert_close(w32.double(), ref_w.detach(), rtol=1e-5, atol=1e-7)


def test_single_head_eps_clamp_partially_active() -> None:
    """A larger eps makes the clamp active in some rows and not others."""
    mod = GaussianAdaptiveAttention(-1, 1, 3, None, eps=0.1).double()
    with torch.no_grad():
        mod.c.copy_(torch.tensor([0.9, 1.3, 2.0], dtype=F64))
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    out, w = mod(x, return_attention_details=True)
    active = w.sum(-1) < 1 - 1e-12
    assert active.any() and (~active).any()
    ref, ref_w = oracle_head(x, -1, clone_params(mod, F64), eps=0.1)
    torch.testing.assert_close(w, ref_w.detach(), rtol=1e-10, atol=0)


def test_whole_slice_underflow_gives_zero_weights() -> None:
    """Huge c: p < 1e-61 everywhere, far below eps: weights exactly 0, block passes x."""
    block = GaussianBlock([1], [2], [4], 1)
    with torch.no_grad():
        block.layers[0].attention_heads[0].c.fill_(1e15)  # head 0 underflows
        block.layers[0].attention_heads[1].c.fill_(2.0)  # head 1: every weight well above 0
    x = torch.randn(3, 8, requires_grad=True)
    out, details = block(x, return_attention_details=True)
    w = details["layer_0"]
    assert (w[:, :4] == 0).all() and (w[:, 4:] > 0).all()
    assert torch.equal(out[:, :4], x[:, :4])
    single_out = block.layers[0](x)
    assert (single_out[:, :4] == 0).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    # The original's direct product in float32 gives the same zeros.
    _, ref_w = oracle_multihead(x.detach(), 1, [head_params(h) for h in block.layers[0].attention_heads])
    assert (ref_w[:, :4] == 0).all()


@pytest.mark.parametrize("scale", [1e6, 1e-6])
@pytest.mark.parametrize("gaussians", [16, 32])
def test_extreme_scales_and_many_gaussians_are_finite(scale: float, gaussians: int) -> None:
    torch.manual_seed(1)
    block = GaussianBlock([1, -1], [4, 2], [gaussians, gaussians], 2)  # original init: c = exp(randn)
    x = (torch.randn(4, 16, 6) * scale).requires_grad_()
    out, details = block(x, return_attention_details=True)
    assert torch.isfinite(out).all()
    for w in details.values():
        assert torch.isfinite(w).all() and (w >= 0).all()
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


def test_tiny_c_and_many_gaussians_match_float64() -> None:
    """c = 0.05 with 16 Gaussians: exponents in the hundreds. The original's float32
    product underflows to 0 away from the centre; the log-space weights match float64."""
    mod = MultiHeadGaussianAdaptiveAttention(1, 2, 16)
    with torch.no_grad():
        for h in mod.attention_heads:
            h.c.copy_(torch.linspace(0.04, 0.06, 16))
            h.mean_offsets.copy_(torch.linspace(-0.01, 0.01, 16))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 20, generator=gen)
    x.requires_grad_(True)
    out, w = mod(x, return_attention_details=True)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    heads = [head_params(h, F64) for h in mod.attention_heads]
    xr = x.detach().double().requires_grad_()
    ref, ref_w = oracle_multihead(xr, 1, heads)
    # float32 rounds log p (hundreds here) to ~6e-8 relative, i.e. ~1e-5 relative in w
    torch.testing.assert_close(w.double(), ref_w.detach(), rtol=5e-5, atol=1e-7)
    torch.testing.assert_close(out.double(), ref.detach(), rtol=5e-5, atol=1e-6)
    gout = torch.randn(6, 20, generator=gen)
    (g,) = torch.autograd.grad(out, x, gout)
    (gr,) = torch.autograd.grad(ref, xr, gout.double())
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g.double(), gr, rtol=1e-4, atol=1e-4 * float(gr.abs().max()))


def test_constant_and_length_one_slices() -> None:
    block = GaussianBlock([1, 1], [3, 6], [5, 5], 2).double()
    randomise(block, 11)
    x = torch.randn(4, 6, dtype=F64)
    x[0] = 2.5  # constant rows: var = eps
    x.requires_grad_(True)
    out, details = block(x, return_attention_details=True)  # layer 1: every head slice has length 1
    assert torch.isfinite(out).all()
    ref, ref_ws = oracle_block(x, [1, 1], block_params(block, F64))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_length_one_slice_has_zero_variance() -> None:
    """A single position: variance 0 (+ eps); with zero offsets the weight is 1, so out == x."""
    mod = GaussianAdaptiveAttention(0, 1, 3, None)
    with torch.no_grad():
        mod.c.copy_(torch.tensor([0.5, 1.0, 2.0]))
    x = torch.randn(1, 5)
    out, w = mod(x, return_attention_details=True)
    assert torch.equal(w, torch.ones_like(x))
    torch.testing.assert_close(out, x)


# ----------------------------------------------------------------------------- padding and masks


def test_mask_equals_unpadded_input_single_head() -> None:
    torch.manual_seed(2)
    mod = GaussianAdaptiveAttention(1, 1, 4, None)
    randomise(mod, 2)
    lengths = [7, 3, 10, 1]
    x = torch.randn(4, 10, 5)
    mask = (torch.arange(10)[None, :] < torch.tensor(lengths)[:, None])[..., None]  # (B, T, 1)
    x_pad = x.masked_fill(~mask, 123.0)
    out, w = mod(x_pad, mask=mask, return_attention_details=True)
    for b, n in enumerate(lengths):
        ref, ref_w = mod(x[b : b + 1, :n], return_attention_details=True)
        torch.testing.assert_close(out[b : b + 1, :n], ref)
        torch.testing.assert_close(w[b : b + 1, :n], ref_w)
    assert torch.equal(out[~mask.expand_as(out)], x_pad[~mask.expand_as(x_pad)])  # pads unchanged
    assert (w[~mask.expand_as(w)] == 0).all()


def test_mask_equals_unpadded_input_block_and_pads_pass_through() -> None:
    torch.manual_seed(3)
    block = GaussianBlock([1, 1, 1], [1, 1, 1], [3, 5, 2], 3)
    randomise(block, 3)
    lengths = [6, 9, 2]
    x = torch.randn(3, 9, 4)
    mask = (torch.arange(9)[None, :] < torch.tensor(lengths)[:, None])[..., None]  # (B, T, 1)
    x_pad = torch.where(mask, x, torch.full_like(x, -7.5))
    out, details = block(x_pad, mask=mask, return_attention_details=True)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[b : b + 1, :n], block(x[b : b + 1, :n]))
    pads = ~mask.expand_as(x)
    assert torch.equal(out[pads], x_pad[pads])
    for w in details.values():
        assert (w[pads] == 0).all()


@pytest.mark.parametrize("layered", [False, True])
def test_random_masks_match_masked_oracle(layered: bool) -> None:
    """Arbitrary masks (including all-invalid and single-valid slices) across heads."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 10, 4, generator=gen, dtype=F64)
    mask = torch.rand(3, 10, 4, generator=gen) > 0.35
    mask[0, :, 0] = False  # an all-padding slice
    mask[1, :, 1] = False
    mask[1, 0, 1] = True  # a single valid position
    xr = x.clone().requires_grad_()
    if layered:
        block = GaussianBlock([1, -1, 1], [3, 2, 1], [4, 2, 6], 3).double()
        randomise(block, 4)
        out, details = block(xr, mask=mask, return_attention_details=True)
        params = clone_params(block, F64)
        xo = x.clone().requires_grad_()
        ref, ref_ws = masked_oracle_block(xo, [1, -1, 1], as_oracle_layers(block, params), mask)
        ws = list(details.values())
        mod_params = list(block.parameters())
    else:
        mod = MultiHeadGaussianAdaptiveAttention(1, 3, 4).double()
        randomise(mod, 4)
        out, w = mod(xr, mask=mask, return_attention_details=True)
        params = clone_params(mod, F64)
        xo = x.clone().requires_grad_()
        ref, ref_w = masked_oracle_multihead(xo, 1, as_oracle_heads(params), mask)
        ws, ref_ws = [w], [ref_w]
        mod_params = list(mod.parameters())
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(ws, ref_ws):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-12)
    gout = torch.randn(x.shape, generator=gen, dtype=F64)
    g = torch.autograd.grad(out, [xr, *mod_params], gout)
    gr = torch.autograd.grad(ref, [xo, *params], gout)
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_all_padding_rows_are_unchanged_without_nan() -> None:
    mod = MultiHeadGaussianAdaptiveAttention(-1, 2, 4)
    x = torch.randn(4, 6, 8, requires_grad=True)
    mask = torch.ones(4, 6, 1, dtype=torch.bool)
    mask[1, 3:] = False  # rows (time steps) that are all padding, normalising over the features
    out, w = mod(x, mask=mask, return_attention_details=True)
    assert torch.equal(out[1, 3:], x[1, 3:])
    assert (w[1, 3:] == 0).all()
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad[1, 3:], torch.ones(3, 8))  # d out / d x = 1 at pads


def test_block_with_nonzero_padding_value_keeps_pads_over_layers() -> None:
    torch.manual_seed(5)
    pad = -3.0
    block = GaussianBlock([1, 1, 1, 1], [1, 1, 1, 1], [4, 4, 4, 4], 4, padding_value=pad)
    randomise(block, 5)
    lengths = [5, 8]
    x = torch.randn(2, 8, 3)
    valid = (torch.arange(8)[None, :] < torch.tensor(lengths)[:, None])[..., None].expand_as(x)
    x_pad = torch.where(valid, x, torch.full_like(x, pad))
    out = block(x_pad)
    assert torch.equal(out[~valid], x_pad[~valid])  # the original turned them into 2p, 4p, ...
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[b : b + 1, :n], block(x[b : b + 1, :n]))


def test_mask_and_padding_value_combined() -> None:
    mod = MultiHeadGaussianAdaptiveAttention(1, 1, 3, padding_value=0.0).double()
    randomise(mod, 6)
    x = torch.randn(2, 8, dtype=F64)
    x[0, 6:] = 0.0  # padding by value
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False  # padding by mask (non-zero values)
    out, w = mod(x, mask=mask, return_attention_details=True)
    valid = mask & (x != 0.0)
    ref, ref_w = masked_oracle_multihead(x, 1, [head_params(h) for h in mod.attention_heads], valid)
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(w, ref_w.detach())
    assert torch.equal(out[~valid], x[~valid])


def test_non_finite_padding_is_excluded() -> None:
    mod = GaussianAdaptiveAttention(1, 1, 2, None)
    x = torch.randn(2, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, 4:] = False
    x_pad = x.clone()
    x_pad[0, 4:] = float("nan")
    x_pad[1, 4:] = float("inf")
    x_pad.requires_grad_(True)
    out = mod(x_pad, mask=mask)
    torch.testing.assert_close(out[:, :4], mod(x[:, :4]))
    out[:, :4].sum().backward()
    assert torch.isfinite(x_pad.grad).all()


def test_mask_validation() -> None:
    mod = MultiHeadGaussianAdaptiveAttention(1, 2, 2)
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="bool"):
        mod(x, mask=torch.ones(3, 4))
    with pytest.raises(ValueError, match="broadcast"):
        mod(x, mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="broadcast"):
        mod(x, mask=torch.ones(2, 3, 4, dtype=torch.bool))


# ----------------------------------------------------------------------------- mixture mode


def test_mixture_matches_its_oracle_and_gets_gradients() -> None:
    block = GaussianBlock([1, -1], [2, 3], [3, 4], 2, mixture=True).double()
    randomise(block, 9)
    assert {n.rsplit(".", 1)[-1] for n, _ in block.named_parameters()} == {"mean_offsets", "c", "mixture_logits"}
    x = torch.randn(3, 8, 6, dtype=F64, requires_grad=True)
    out, details = block(x, return_attention_details=True)
    params = clone_params(block, F64)
    xr = x.detach().clone().requires_grad_()
    ref, ref_ws = oracle_block(xr, [1, -1], as_oracle_layers(block, params))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for l, w in enumerate(details.values()):
        torch.testing.assert_close(w, ref_ws[l].detach(), rtol=1e-10, atol=1e-12)
    gout = torch.randn_like(x)
    g = torch.autograd.grad(out, [x, *block.parameters()], gout)
    gr = torch.autograd.grad(ref, [xr, *params], gout)
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
        assert a.abs().sum() > 0  # every parameter, mixture logits included, gets a gradient


def test_mixture_is_multimodal_and_masked() -> None:
    mod = GaussianAdaptiveAttention(1, 1, 2, None, mixture=True).double()
    with torch.no_grad():
        mod.mean_offsets.copy_(torch.tensor([-1.0, 1.0], dtype=F64))
        mod.c.fill_(0.2)
    x = torch.linspace(-2, 2, 41, dtype=F64)[None, :]
    _, w = mod(x, return_attention_details=True)
    # two modes near mu -/+ 1 (raw units; here std ~ 1.2), a dip at the centre
    assert w[0, 20] < 0.1 * w.max()
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, 30:] = False
    out, wm = mod(x, mask=mask, return_attention_details=True)
    ref, ref_w = mod(x[:, :30], return_attention_details=True)
    torch.testing.assert_close(out[:, :30], ref)
    assert torch.equal(out[:, 30:], x[:, 30:]) and (wm[:, 30:] == 0).all()


# ----------------------------------------------------------------------------- gradients, gradcheck


@pytest.mark.parametrize("mixture", [False, True])
def test_every_parameter_receives_a_gradient(mixture: bool) -> None:
    torch.manual_seed(0)
    block = GaussianBlock([1, -1, 0], [4, 2, 2], [5, 3, 2], 3, mixture=mixture)
    randomise(block, 12)
    x = torch.randn(4, 12, 6)
    (block(x) * torch.randn(4, 12, 6)).sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_fused_path(masked: bool) -> None:
    mod = MultiHeadGaussianAdaptiveAttention(1, 2, 3).double()
    randomise(mod, 13)
    with torch.no_grad():
        mod.attention_heads[1].c.mul_(25.0)  # clamp active in head 1
    x = torch.randn(2, 7, 3, dtype=F64, requires_grad=True)
    mask = torch.rand(2, 7, 1) > 0.3 if masked else None
    names = [n for n, _ in mod.named_parameters()]

    def fn(x, *ps):
        return torch.func.functional_call(mod, dict(zip(names, ps)), (x,), {"mask": mask})

    inputs = (x, *[p.detach().clone().requires_grad_() for p in mod.parameters()])
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- dtypes, autocast, compile


def test_dtypes_and_conversions() -> None:
    torch.manual_seed(0)
    block = GaussianBlock([1, -1], [2, 2], [3, 3], 2)
    x = torch.randn(3, 8, 12)
    ref = block(x)
    out64 = block.double()(x.double())
    assert out64.dtype == F64
    torch.testing.assert_close(out64.float(), ref, rtol=1e-5, atol=1e-5)
    out16 = block.half()(x.half())
    assert out16.dtype == torch.float16 and torch.isfinite(out16).all()
    torch.testing.assert_close(out16.float(), ref, rtol=1e-2, atol=1e-2)
    outbf = block.to(torch.bfloat16)(x.bfloat16())
    assert outbf.dtype == torch.bfloat16
    torch.testing.assert_close(outbf.float(), ref, rtol=3e-2, atol=3e-2)
    assert block.float().to("cpu")(x).device.type == "cpu"


def test_autocast_cpu_bfloat16_stays_close_to_float32() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 16)
    block = GaussianBlock([1, -1], [4, 2], [5, 8], 2)
    x = torch.randn(6, 12, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear(x)
        assert h.dtype == torch.bfloat16
        out = block(h)
    assert torch.isfinite(out).all()
    ref = block(h.float())  # the same bf16 activations, float32 throughout
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    out.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out32 = block(x.detach())  # float32 input: computed and returned in float32
    assert out32.dtype == F32
    torch.testing.assert_close(out32, block(x.detach()))


@pytest.mark.cuda
def test_autocast_cuda_float16() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 16).cuda()
    block = GaussianBlock([1, -1], [4, 2], [5, 8], 2).cuda()
    x = torch.randn(6, 12, 16, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.float16):
        h = linear(x)
        out = block(h)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), block(h.float()), rtol=1e-2, atol=1e-2)
    mask = torch.rand(6, 12, 1, device="cuda") > 0.2
    with torch.autocast("cuda", dtype=torch.float16):
        outm = block(linear(x), mask=mask)
    assert torch.isfinite(outm).all()
    (out.float().sum() + outm.float().sum()).backward()
    assert torch.isfinite(x.grad).all()


def _have_compiler() -> bool:
    return shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("c++") is not None


@pytest.mark.skipif(not _have_compiler(), reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside dynamo / torch.jit
def test_torch_compile_fullgraph_matches_eager() -> None:
    torch.manual_seed(0)
    torch._dynamo.reset()
    block = GaussianBlock([1, -1], [3, 2], [4, 2], 2)
    randomise(block, 14)
    x = torch.randn(2, 7, 4)
    mask = torch.ones(2, 7, 1, dtype=torch.bool)
    mask[1, 5:] = False
    compiled = torch.compile(block, fullgraph=True)
    xe = x.clone().requires_grad_()
    xc = x.clone().requires_grad_()
    out_e = block(xe, mask=mask)
    out_c = compiled(xc, mask=mask)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-6)
    gout = torch.randn_like(x)
    ge = torch.autograd.grad(out_e, [xe, *block.parameters()], gout)
    gc = torch.autograd.grad(out_c, [xc, *block.parameters()], gout)
    for a, b in zip(gc, ge):  # float32 parameter gradients are sums with cancellation: atol scales with them
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 + 1e-4 * float(b.abs().max()))


# ----------------------------------------------------------------------------- state dicts


def test_state_dict_original_layout_loads_and_round_trips() -> None:
    torch.manual_seed(0)
    block = GaussianBlock([1, -1], [2, 3], [3, 2], 2)
    # A state dict written by hand in the original's per-head layout.
    original = {}
    for l, (heads, gaussians) in enumerate([(2, 3), (3, 2)]):
        for h in range(heads):
            original[f"layers.{l}.attention_heads.{h}.mean_offsets"] = 0.1 * torch.arange(gaussians) + l + 0.01 * h
            original[f"layers.{l}.attention_heads.{h}.c"] = 0.5 + 0.25 * torch.arange(gaussians) + 0.1 * h
    block.load_state_dict(original, strict=True)
    assert list(block.state_dict()) == list(original)
    for k, v in block.state_dict().items():
        assert torch.equal(v, original[k])
    x = torch.randn(2, 6, 6, dtype=F64)
    layers = [
        [(original[f"layers.{l}.attention_heads.{h}.mean_offsets"].double(), original[f"layers.{l}.attention_heads.{h}.c"].double()) for h in range(n)]
        for l, n in enumerate([2, 3])
    ]
    ref, _ = oracle_block(x, [1, -1], layers)
    torch.testing.assert_close(block.double()(x), ref)
    fresh = GaussianBlock([1, -1], [2, 3], [3, 2], 2).double()
    fresh.load_state_dict(block.state_dict())
    torch.testing.assert_close(fresh(x), ref)


def test_state_dict_layout_of_single_and_multihead() -> None:
    single = GaussianAdaptiveAttention(1, 1, 4, None)
    assert list(single.state_dict()) == ["mean_offsets", "c"]
    multi = MultiHeadGaussianAdaptiveAttention(1, 2, 4)
    keys = ["attention_heads.0.mean_offsets", "attention_heads.0.c", "attention_heads.1.mean_offsets", "attention_heads.1.c"]
    assert list(multi.state_dict()) == keys
    sd = {k: torch.full((4,), float(i + 1)) for i, k in enumerate(keys)}
    multi.load_state_dict(sd)
    assert torch.equal(multi.attention_heads[1].c, torch.full((4,), 4.0))
    mixture = MultiHeadGaussianAdaptiveAttention(1, 2, 4, mixture=True)
    assert "attention_heads.1.mixture_logits" in mixture.state_dict()


def test_heads_are_views_of_the_layers_stacked_parameters() -> None:
    """Parameters are stored (H, G) per layer; each head still reads, writes, saves and loads its own row."""
    torch.manual_seed(0)
    multi = MultiHeadGaussianAdaptiveAttention(1, 3, 4)
    assert [n for n, _ in multi.named_parameters()] == ["mean_offsets", "c"] and multi.c.shape == (3, 4)
    torch.manual_seed(0)
    assert torch.equal(multi.c, torch.stack([torch.exp(torch.randn(4)) for _ in range(3)]))  # the original's draws, head by head
    head = multi.attention_heads[2]
    assert isinstance(head, GaussianAdaptiveAttention) and repr(head).startswith("GaussianAdaptiveAttention(")
    with torch.no_grad():
        head.c.fill_(2.0)
    assert torch.equal(multi.c[2], torch.full((4,), 2.0)) and not torch.equal(multi.c[1], multi.c[2])
    head.load_state_dict({"mean_offsets": torch.full((4,), 0.5), "c": torch.full((4,), 3.0)})
    assert torch.equal(multi.mean_offsets[2], torch.full((4,), 0.5)) and list(head.state_dict()) == ["mean_offsets", "c"]
    x = torch.randn(2, 9)
    single = GaussianAdaptiveAttention(1, 1, 4, None)
    single.load_state_dict(head.state_dict())
    torch.testing.assert_close(head(x[:, 6:]), single(x[:, 6:]))  # a head run on its own is a single-head module
    multi(x).sum().backward()
    assert multi.c.grad.shape == (3, 4) and (multi.c.grad != 0).all()
    # strict loading names the per-head keys that are missing or unexpected
    sd = multi.state_dict()
    sd.pop("attention_heads.1.c")
    sd["attention_heads.3.c"] = torch.ones(4)
    result = multi.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["attention_heads.1.c"] and result.unexpected_keys == ["attention_heads.3.c"]
    with pytest.raises(RuntimeError, match="size mismatch for attention_heads.0.c"):
        multi.load_state_dict({**multi.state_dict(), "attention_heads.0.c": torch.ones(5)})


def test_initialisation_matches_the_original() -> None:
    torch.manual_seed(0)
    mod = GaussianAdaptiveAttention(1, 1, 5, None, mean_offset_init=3.0)
    assert torch.equal(mod.mean_offsets, torch.zeros(5))  # mean_offset_init is unused
    assert (mod.c > 0).all()
    torch.manual_seed(0)
    assert torch.equal(mod.c, torch.exp(torch.randn(5)))


# ----------------------------------------------------------------------------- errors and API


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(norm_axis=1.0), "norm_axis"),
        (dict(norm_axis=True), "norm_axis"),
        (dict(num_heads=0), "num_heads"),
        (dict(num_heads=2.0), "num_heads"),
        (dict(num_gaussians=-1), "num_gaussians"),
        (dict(eps=-1e-3), "eps"),
    ],
)
def test_constructor_validation(kwargs, match) -> None:
    args = dict(norm_axis=1, num_heads=2, num_gaussians=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        MultiHeadGaussianAdaptiveAttention(**args)
    with pytest.raises(ValueError, match=match):
        GaussianAdaptiveAttention(args["norm_axis"], args["num_heads"], args["num_gaussians"], None, eps=args.get("eps", 1e-8))


def test_block_constructor_validation() -> None:
    with pytest.raises(ValueError, match="norm_axes"):
        GaussianBlock([1, 1], [2, 2, 2], [3, 3, 3], 3)
    with pytest.raises(ValueError, match="num_heads"):
        GaussianBlock([1, 1, 1], [2, 2], [3, 3, 3], 3)
    with pytest.raises(ValueError, match="num_gaussians"):
        GaussianBlock([1, 1, 1], [2, 2, 2], [3], 3)
    with pytest.raises(ValueError, match="num_layers"):
        GaussianBlock([], [], [], 0)


def test_forward_validation() -> None:
    multi = MultiHeadGaussianAdaptiveAttention(1, 4, 2)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        multi(torch.randn(8))
    with pytest.raises(ValueError, match="out of range"):
        MultiHeadGaussianAdaptiveAttention(2, 1, 2)(torch.randn(3, 4))
    with pytest.raises(ValueError, match="out of range"):
        GaussianAdaptiveAttention(-3, 1, 2, None)(torch.randn(3, 4))
    with pytest.raises(ValueError, match="fewer than num_heads"):
        multi(torch.randn(5, 3))  # chunk = 3 // 4 == 0
    with pytest.raises(ValueError, match="floating-point"):
        multi(torch.ones(3, 8, dtype=torch.long))
    block = GaussianBlock([1, 2], [1, 1], [2, 2], 2)
    with pytest.raises(ValueError, match="out of range"):
        block(torch.randn(3, 4))


def test_return_types() -> None:
    x = torch.randn(2, 8)
    single = GaussianAdaptiveAttention(1, 1, 2, None)
    multi = MultiHeadGaussianAdaptiveAttention(1, 2, 2)
    block = GaussianBlock([1, 0], [2, 1], [2, 2], 2)
    for mod in (single, multi):
        assert isinstance(mod(x), torch.Tensor)
        out, w = mod(x, return_attention_details=True)
        assert w.shape == x.shape and not w.requires_grad
    out, details = block(x, return_attention_details=True)
    assert isinstance(details, dict) and list(details) == ["layer_0", "layer_1"]
    assert __version__ == "0.2.0"


def test_parameter_gradients_without_input_gradient() -> None:
    """The backward skips dL/dx when x needs none; the parameter gradients are unchanged."""
    block = GaussianBlock([1, -1], [2, 3], [3, 4], 2).double()
    randomise(block, 15)
    x = torch.randn(3, 8, 6, dtype=F64)
    gout = torch.randn_like(x)
    g_with = torch.autograd.grad(block(x.clone().requires_grad_()), list(block.parameters()), gout)
    g_without = torch.autograd.grad(block(x), list(block.parameters()), gout)
    for a, b in zip(g_with, g_without):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


@pytest.mark.parametrize("regime", ["plain", "masked", "underflow", "clamp"])
def test_branch_free_path_matches_eager_path(regime: str) -> None:
    """The branch-free formulation (torch.compile, GPUs) and the plain autograd formula,
    run eagerly, agree with the eager CPU path: outputs, weights, gradients."""
    from gaussian_adaptive_attention.functional import _GaussianProduct, _gaussian_product_autograd

    gen = torch.Generator().manual_seed(16)
    H, G = 3, 5
    x = torch.randn(4, H, 6, 2, generator=gen, dtype=F64)
    ms = [0.3 * torch.randn(G, generator=gen, dtype=F64) for _ in range(H)]
    cs = [torch.exp(0.4 * torch.randn(G, generator=gen, dtype=F64)) for _ in range(H)]
    vf = None
    if regime == "masked":
        vf = (torch.rand(4, H, 6, 1, generator=gen) > 0.4).double()
        vf[0, 0] = 0.0  # a slice without valid positions
        vf[1, 1] = 0.0
        vf[1, 1, 2] = 1.0  # a single valid position
    elif regime == "underflow":
        cs = [torch.full((G,), 0.03, dtype=F64) for _ in range(H)]
    elif regime == "clamp":
        cs = [c * 40.0 for c in cs]
    results = []
    for variant in ("eager", "traced", "autograd"):
        xs = x.clone().requires_grad_()
        ps = [torch.stack(ms).requires_grad_(), torch.stack(cs).requires_grad_()]  # (H, G) each
        if variant == "autograd":  # the plain formula, differentiated by autograd
            out, w = _gaussian_product_autograd(xs, vf, 1e-8, True, *ps)
        else:
            out, w = _GaussianProduct.apply(xs, vf, 1e-8, True, variant == "traced", *ps)
        grads = torch.autograd.grad(out, [xs, *ps], torch.ones_like(out))
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
        results.append((out, w, grads))
    o1, w1, g1 = results[0]
    for o2, w2, g2 in results[1:]:
        torch.testing.assert_close(o2, o1, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(w2, w1, rtol=1e-10, atol=1e-12)
        for a, b in zip(g2, g1):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_empty_batch() -> None:
    block = GaussianBlock([1], [2], [3], 1)
    x = torch.randn(0, 6, 4, requires_grad=True)
    out, details = block(x, return_attention_details=True)
    assert out.shape == x.shape and details["layer_0"].shape == x.shape
    out.sum().backward()
