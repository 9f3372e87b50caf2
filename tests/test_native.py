"""The C kernels (gaussian_adaptive_attention/kernels.c) against the PyTorch path.

tests/test_attention.py already runs every oracle comparison through both
paths; these tests cover what only the kernels have: the layouts they pick
by shape (rows of 8 or 16 in registers, column tiles for other short
contiguous slices, lanes across q, partial groups, the multi-threaded split), the cache of the compiled library, and
the fallback when nothing can be compiled.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gaussian_adaptive_attention import GaussianBlock, native

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")

# (shape, norm axis, heads): every layout and size regime of kernels.c
CASES = [
    ((4096, 64), -1, 8),  # Q == 1, N = 8: rows in registers (float32), 4096 blocks of 8, two threads
    ((300, 3, 16), -1, 1),  # Q == 1, N = 16, P * H not a multiple of 8: a partial block of rows
    ((2048, 48), -1, 2),  # Q == 1, N = 24: column tiles (8 x 8 transposes), two threads
    ((100, 36), -1, 3),  # Q == 1, N = 12, P * H not a multiple of 64: a partial column tile
    ((7, 2, 40), 2, 1),  # Q == 1, N = 40 > 32: slices reduced in place
    ((16, 24, 1024), -2, 4),  # Q = 1024, N = 6: lanes across q, two threads
    ((3, 12, 70), 1, 3),  # Q = 70: one full group of 64 lanes and one of 6
    ((2, 5, 3, 4), 0, 1),  # normalised over the batch axis: P = 1
]


def build(axis: int, heads: int, layers: int = 2, seed: int = 0) -> GaussianBlock:
    block = GaussianBlock([axis] * layers, [heads] * layers, [3] * layers, layers)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in block.layers:
            for head in layer.attention_heads:  # drawn head by head, offsets then scales
                head.mean_offsets.copy_(0.3 * torch.randn(3, generator=gen))
                head.c.copy_(torch.exp(0.4 * torch.randn(3, generator=gen)))
    return block


def run(block: GaussianBlock, x: torch.Tensor, mask, gout: torch.Tensor, use_native: bool, monkeypatch) -> list:
    monkeypatch.setattr(native, "_disabled", not use_native)
    xr = x.clone().requires_grad_()
    out, details = block(xr, mask=mask, return_attention_details=True)
    grads = torch.autograd.grad(out, [xr, *block.parameters()], gout)
    weights = details.values() if isinstance(details, dict) else [details]  # a block's or a lone layer's
    return [out.detach(), *weights, *grads]


@pytest.mark.parametrize("shape,axis,heads", CASES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernels_match_the_pytorch_path(shape, axis, heads, masked, dtype, monkeypatch) -> None:
    assert native.library() is not None, "a C compiler is present, so the kernels must build"
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=gen) * 3 + 1).to(dtype)
    gout = torch.randn(shape, generator=gen).to(dtype)
    mask = None
    if masked:  # a valid length per slice, 0 (all padding) included
        ax, L = axis % len(shape), shape[axis]
        lengths = torch.randint(0, L + 1, shape[:ax] + (1,) + shape[ax + 1 :], generator=gen)
        mask = torch.arange(L).view((L,) + (1,) * (len(shape) - ax - 1)) < lengths
    block = build(axis, heads)
    ref = run(block.double(), x.double(), mask, gout.double(), False, monkeypatch)  # float64 reference
    block = block.to(dtype)
    ours = run(block, x, mask, gout, True, monkeypatch)
    torch_path = run(block, x, mask, gout, False, monkeypatch)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, t, r in zip(ours, torch_path, ref):
        assert torch.isfinite(a).all()
        # within rtol, or ten times the PyTorch path's own float32 error where
        # the problem is ill-conditioned whichever way it is computed: masked
        # slices with two valid values seen through two layers (PyTorch's own
        # error there is 2e-5 of the largest gradient, ours up to 6x that), and
        # parameter gradients whose 10^5 terms cancel to 1% of their size
        own_error = float((t.double() - r).abs().max())
        atol = max(rtol * float(r.abs().max()), 10 * own_error)
        torch.testing.assert_close(a.double(), r, rtol=rtol, atol=atol)


@pytest.mark.parametrize("regime", ["plain", "clamp", "underflow", "zero"])
@pytest.mark.parametrize("shape,heads", [((37, 40), 5), ((21, 3, 64), 4)])  # N = 8 and 16, a partial block each
def test_rows_in_registers_in_every_regime(shape, heads, regime, monkeypatch) -> None:
    """Slices of 8 or 16 values (float32, no mask) take their own kernel: a lone
    layer and a residual block, weights and all gradients, against float64, with
    the eps clamp active, with the Gaussians' product underflowing (shifted by the
    maximum) and with weights that are 0 throughout a slice."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(shape, generator=gen) * 2 + 0.5
    gout = torch.randn(shape, generator=gen)
    block = build(-1, heads, seed=5)
    with torch.no_grad():
        for layer in block.layers:
            for h, head in enumerate(layer.attention_heads):
                if regime == "clamp" and h % 2 == 0:  # half the heads: clamp active
                    head.c.mul_(40.0)
                elif regime == "underflow":  # exponents in the hundreds
                    head.c.copy_(torch.tensor([0.04, 0.05, 0.06]))
                elif regime == "zero" and h == 0:  # exp underflows to 0 everywhere
                    head.c.fill_(1e15)
    for module in (block, block.layers[0]):
        ref = run(module.double(), x.double(), None, gout.double(), False, monkeypatch)
        module.float()
        ours = run(module, x, None, gout, True, monkeypatch)
        torch_path = run(module, x, None, gout, False, monkeypatch)
        for a, t, r in zip(ours, torch_path, ref):
            assert torch.isfinite(a).all()
            own_error = float((t.double() - r).abs().max())
            atol = max(1e-5 * float(r.abs().max()), 10 * own_error)
            torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=atol)
    if regime == "zero":
        assert (ours[1].view(-1, heads, shape[-1] // heads)[:, 0] == 0).all()


def test_result_does_not_depend_on_the_thread_count(monkeypatch) -> None:
    """The head-parameter sums are added up per thread in a fixed order."""
    block = build(-1, 8)
    gen = torch.Generator().manual_seed(2)
    x, gout = torch.randn(4096, 64, generator=gen), torch.randn(4096, 64, generator=gen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(block, x, None, gout, True, monkeypatch)
        torch.set_num_threads(2)
        two = run(block, x, None, gout, True, monkeypatch)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max()))


@pytest.mark.parametrize("shape,axis,heads", CASES[:5])  # rows in registers, column tiles, rows in place, lanes across q
def test_without_the_weights_the_numbers_are_the_same(shape, axis, heads) -> None:
    """Not asking for the weights skips writing them (the backward recomputes them
    either way): the output and every gradient are bit for bit the same."""
    gen = torch.Generator().manual_seed(3)
    x, gout = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    block = build(axis, heads)
    results = []
    for details in (False, True):
        xr = x.clone().requires_grad_()
        out = block(xr, return_attention_details=details)
        out = out[0] if details else out
        results.append([out.detach(), *torch.autograd.grad(out, [xr, *block.parameters()], gout)])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_the_output_can_be_changed_in_place() -> None:
    """The kernels' outputs are plain tensors, not views: in-place operations on them are allowed."""
    block = build(-1, 8)
    x = torch.randn(64, 64, requires_grad=True)
    out = block(x)
    out.mul_(2.0)
    out.sum().backward()
    ref = torch.autograd.grad(2.0 * block(x).sum(), x)[0]
    torch.testing.assert_close(x.grad, ref)


SCRIPT = """
import sys, torch
from gaussian_adaptive_attention import GaussianBlock, native
torch.manual_seed(0)
block = GaussianBlock([1], [2], [3], 1)
x = torch.linspace(-1, 3, 40).view(2, 20) ** 2
print(native.library() is not None, repr(block(x).sum().item()))
"""


def child(cache: Path | None, **env: str) -> tuple[bool, str]:
    """(whether the kernels loaded, the block's output sum) in a fresh interpreter."""
    if cache is not None:
        env["GAA_CACHE_DIR"] = str(cache)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    built, value = done.stdout.split()
    return built == "True", value


def test_compiled_once_then_loaded_from_the_cache(tmp_path: Path) -> None:
    built, first = child(tmp_path / "cache")
    assert built
    (library,) = (tmp_path / "cache").glob("kernels-*.so")
    stamp = library.stat().st_mtime_ns
    built, again = child(tmp_path / "cache")
    assert built and again == first
    assert library.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [library.name]  # no temporary files left


@pytest.mark.parametrize("env", [{"CC": "false"}, {"GAA_NATIVE": "0"}])
def test_without_the_kernels_the_same_numbers_come_from_pytorch(tmp_path: Path, env: dict) -> None:
    built, value = child(tmp_path / "cache", **env)
    assert not built
    assert not list(tmp_path.glob("cache/*"))  # nothing half-built left behind
    _, native_value = child(None)  # the usual cache
    assert abs(float(value) - float(native_value)) <= 1e-5 * abs(float(native_value))
