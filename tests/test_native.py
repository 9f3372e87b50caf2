"""The fused CPU kernels (gaussian_adaptive_attention/kernels.cpp, as custom ops).

tests/test_attention.py already runs every oracle comparison through both
paths; these tests cover what only the kernels have: the layouts they pick by
shape, the ops' registration (opcheck, torch.compile, torch.export, double
backward), the switch, and how the library is built, cached, trusted and
replaced by the PyTorch path (with its one-line note) when it cannot be built.

The kernels are built at most once per test session (into the usual cache);
the build tests use a one-line source instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
import torch

from gaussian_adaptive_attention import GaussianBlock, fused_kernels_available, set_fused_kernels
from gaussian_adaptive_attention import _build, _fused

ROOT = Path(__file__).resolve().parents[1]
OPS = "gaussian_adaptive_attention"


@pytest.fixture(scope="module")
def fused() -> None:
    if not fused_kernels_available():
        pytest.skip("the fused CPU kernels are switched off or cannot be built here (see the note on stderr)")


@pytest.fixture
def pytorch_path() -> Iterator[None]:
    previous = set_fused_kernels(False)
    yield
    set_fused_kernels(previous)


# (shape, norm axis, heads): every layout and size regime of kernels.cpp
CASES = [
    ((4096, 64), -1, 8),  # Q == 1, N = 8: blocks of 8 slices on the stack, two threads
    ((300, 3, 16), -1, 1),  # Q == 1, N = 16, P * H not a multiple of 8: a partial block
    ((2048, 48), -1, 2),  # Q == 1, N = 24: transposed tiles in 8 x 8 blocks, two threads
    ((100, 36), -1, 3),  # Q == 1, N = 12: element-wise transposes, a partial tile
    ((7, 2, 40), 2, 1),  # Q == 1, N = 40: tiles of fewer slices
    ((6, 8), -1, 8),  # Q == 1, N = 1: length-1 slices (variance 0, + eps)
    ((16, 24, 1024), -2, 4),  # Q = 1024, N = 6: in place across q, two threads
    ((3, 12, 70), 1, 3),  # Q = 70: full vectors and a partial one (padded copies)
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


def run(module: torch.nn.Module, x: torch.Tensor, mask, gout: torch.Tensor, use_fused: bool) -> list:
    """Output, weights and every gradient, through the kernels or the PyTorch path."""
    previous = set_fused_kernels(use_fused)
    try:
        xr = x.clone().requires_grad_()
        out, details = module(xr, mask=mask, return_attention_details=True)
        grads = torch.autograd.grad(out, [xr, *module.parameters()], gout)
    finally:
        set_fused_kernels(previous)
    weights = details.values() if isinstance(details, dict) else [details]  # a block's or a lone layer's
    return [out.detach(), *weights, *grads]


def assert_agree(ours: list, torch_path: list, ref: list, rtol: float) -> None:
    for a, t, r in zip(ours, torch_path, ref):
        assert torch.isfinite(a).all()
        # within rtol, or ten times the PyTorch path's own float32 error where
        # the problem is ill-conditioned whichever way it is computed (masked
        # slices with two valid values seen through two layers; parameter
        # gradients whose 10^5 terms cancel to 1% of their size)
        own_error = float((t.double() - r).abs().max())
        atol = max(rtol * float(r.abs().max()), 10 * own_error)
        torch.testing.assert_close(a.double(), r, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape,axis,heads", CASES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernels_match_the_pytorch_path(shape, axis, heads, masked, dtype, fused) -> None:
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=gen) * 3 + 1).to(dtype)
    gout = torch.randn(shape, generator=gen).to(dtype)
    mask = None
    if masked:  # a valid length per slice, 0 (all padding) included
        ax, L = axis % len(shape), shape[axis]
        lengths = torch.randint(0, L + 1, shape[:ax] + (1,) + shape[ax + 1 :], generator=gen)
        mask = torch.arange(L).view((L,) + (1,) * (len(shape) - ax - 1)) < lengths
    block = build(axis, heads)
    ref = run(block.double(), x.double(), mask, gout.double(), False)  # float64 reference
    block = block.to(dtype)
    ours = run(block, x, mask, gout, True)
    torch_path = run(block, x, mask, gout, False)
    assert_agree(ours, torch_path, ref, 1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize(
    "mask_shape",
    [(1, 12, 1), (5, 12, 1), (1, 12, 7), (5, 1, 7)],
    ids=["(1,L,1)", "(P,L,1)", "(1,L,Q)", "(P,1,Q)"],
)
@pytest.mark.parametrize("axis", [1, -1])
def test_masks_that_broadcast(mask_shape, axis, fused) -> None:
    """A mask broadcast over the leading or trailing dimensions reaches the kernels
    as (1 or P, L, 1 or Q); NaN padding stays out of every sum."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 12, 7, generator=gen, dtype=torch.float64)
    mask = torch.rand(mask_shape, generator=gen) > 0.3
    x = torch.where(mask, x, float("nan"))
    gout = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    block = build(axis, 1 if axis == -1 else 3)
    ours = run(block.double(), x, mask, gout, True)
    torch_path = run(block, x, mask, gout, False)
    for a, t in zip(ours, torch_path):
        torch.testing.assert_close(a, t, rtol=1e-10, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("regime", ["plain", "clamp", "underflow", "zero"])
@pytest.mark.parametrize("shape,heads", [((37, 40), 5), ((21, 3, 64), 4)])  # N = 8 and 16, a partial block each
def test_short_rows_in_every_regime(shape, heads, regime, fused) -> None:
    """Slices of 8 or 16 values (float32, no mask) take their own path: a lone
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
        ref = run(module.double(), x.double(), None, gout.double(), False)
        module.float()
        ours = run(module, x, None, gout, True)
        assert_agree(ours, run(module, x, None, gout, False), ref, 1e-5)
    if regime == "zero":
        assert (ours[1].view(-1, heads, shape[-1] // heads)[:, 0] == 0).all()


def test_result_does_not_depend_on_the_thread_count(fused) -> None:
    """The work is cut by shape, and the head sums are added chunk by chunk in order."""
    block = build(-1, 8)
    gen = torch.Generator().manual_seed(2)
    x, gout = torch.randn(4096, 64, generator=gen), torch.randn(4096, 64, generator=gen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(block, x, None, gout, True)
        torch.set_num_threads(2)
        two = run(block, x, None, gout, True)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape,axis,heads", CASES[:7])
def test_without_the_weights_the_numbers_are_the_same(shape, axis, heads, fused) -> None:
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


def test_the_output_can_be_changed_in_place(fused) -> None:
    block = build(-1, 8)
    x = torch.randn(64, 64, requires_grad=True)
    out = block(x)
    out.mul_(2.0)
    out.sum().backward()
    ref = torch.autograd.grad(2.0 * block(x).sum(), x)[0]
    torch.testing.assert_close(x.grad, ref)


def test_a_block_is_one_node_of_the_graph(fused) -> None:
    out = build(1, 2, layers=3)(torch.randn(4, 6, requires_grad=True))
    assert "BlockFunction" in out.grad_fn.name()
    assert len(out.grad_fn.next_functions) == 1 + 6  # x and two parameters per layer


# ----------------------------------------------------------------------------- the ops


def block_inputs(masked: bool, requires_grad: bool = True) -> tuple:
    """fused_block's arguments for a 2-layer chain on a (3, 6, 4) float64 input."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 6, 4, generator=gen, dtype=torch.float64, requires_grad=requires_grad)
    params = []
    for heads in (2, 4):
        params.append((0.3 * torch.randn(heads, 3, generator=gen, dtype=torch.float64)).requires_grad_(requires_grad))
        params.append(torch.exp(0.3 * torch.randn(heads, 3, generator=gen, dtype=torch.float64)).requires_grad_(requires_grad))
    masks = [None, None]
    if masked:
        masks = [(torch.rand(3, 6, 1, generator=gen) > 0.3).double(), (torch.rand(1, 4, 1, generator=gen) > 0.2).double()]
    return x, params, masks, [1, 2, 1, 2, 4, 0], [1e-8, 1e-3]


@pytest.mark.parametrize("masked", [False, True])
def test_opcheck(masked, fused) -> None:
    x, params, masks, layers, eps = block_inputs(masked)
    ops = getattr(torch.ops, OPS)
    torch.library.opcheck(ops.fused_block.default, (x, params, masks, layers, eps, True))
    torch.library.opcheck(ops.fused_block.default, (x, params, masks, layers, eps, False))
    xd, pd = x.detach(), [p.detach() for p in params]
    out, ws, saved = ops.fused_block_forward(xd, pd, masks, layers, eps, False)
    torch.library.opcheck(ops.fused_block_forward.default, (xd, pd, masks, layers, eps, True))
    torch.library.opcheck(ops.fused_block_backward.default, (torch.randn_like(xd), xd, saved, pd, masks, layers, True))


@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_and_gradgradcheck(masked, fused) -> None:
    """First and second derivatives of the op: create_graph=True switches its
    backward to a differentiable formulation, so gradgradcheck holds."""
    x, params, masks, layers, eps = block_inputs(masked)
    op = getattr(torch.ops, OPS).fused_block

    def fn(x, *params):
        return op(x, list(params), masks, layers, eps, False)[0]

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(fn, (x, *params), eps=1e-6, atol=1e-6)


def test_double_backward_through_a_module(fused) -> None:
    """A gradient penalty: the gradient taken with create_graph=True has a graph,
    its value is the plain gradient's, and differentiating it again gives the
    same second derivatives through the kernels and the PyTorch path."""
    block = build(1, 2).double()
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)

    def penalty_grads(use_fused: bool) -> list[torch.Tensor]:
        previous = set_fused_kernels(use_fused)
        try:
            (g,) = torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
            assert g.grad_fn is not None
            (plain,) = torch.autograd.grad(block(x).square().sum(), x)
            torch.testing.assert_close(g.detach(), plain, rtol=1e-10, atol=1e-12)
            return list(torch.autograd.grad(g.square().sum(), [x, *block.parameters()]))
        finally:
            set_fused_kernels(previous)

    for a, b in zip(penalty_grads(True), penalty_grads(False)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_gradgradcheck_on_the_pytorch_path(pytorch_path) -> None:
    block = build(1, 2).double()
    names = [n for n, _ in block.named_parameters()]
    mask = torch.rand(3, 6) > 0.2

    def fn(x, *ps):
        return torch.func.functional_call(block, dict(zip(names, ps)), (x,), {"mask": mask})

    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    params = [p.detach().clone().requires_grad_() for p in block.parameters()]
    assert torch.autograd.gradgradcheck(fn, (x, *params), eps=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside dynamo
def test_torch_compile_keeps_the_ops_in_the_graph(fused) -> None:
    """fullgraph: the forward graph holds fused_block_forward and the backward graph
    fused_block_backward; numbers and gradients are eager's."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs: dict[str, str] = {}

    def keep(name):
        def compiler(gm, example_inputs):
            graphs[name] = str(gm.graph)
            return make_boxed_func(gm.forward)

        return compiler

    torch._dynamo.reset()
    block = build(1, 2)
    mask = torch.rand(4, 8, 1) > 0.2
    compiled = torch.compile(block, fullgraph=True, backend=aot_autograd(fw_compiler=keep("fw"), bw_compiler=keep("bw")))
    x = torch.randn(4, 8, 3)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_e, out_c = block(xe, mask=mask), compiled(xc, mask=mask)
    gout = torch.randn_like(x)
    ge = torch.autograd.grad(out_e, [xe, *block.parameters()], gout)
    gc = torch.autograd.grad(out_c, [xc, *block.parameters()], gout)
    assert f"{OPS}.fused_block_forward" in graphs["fw"]
    assert f"{OPS}.fused_block_backward" in graphs["bw"]
    torch.testing.assert_close(out_c, out_e)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_export_keeps_the_op(fused) -> None:
    block = build(-1, 2).eval()
    x = torch.randn(3, 5, 8)
    exported = torch.export.export(block, (x,))
    assert f"{OPS}.fused_block" in str(exported.graph)
    torch.testing.assert_close(exported.module()(x), block(x))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_takes_the_pytorch_path() -> None:
    block = build(1, 2)
    x = torch.randn(4, 8, 3)
    assert not _fused.usable(x.cuda())
    torch.testing.assert_close(block.cuda()(x.cuda()).cpu(), block.cpu()(x), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- the switch


def test_switched_off_the_kernels_are_not_called(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the fused kernels were called while switched off")

    monkeypatch.setattr(_fused, "run", refuse)
    previous = set_fused_kernels(False)
    try:
        assert not fused_kernels_available()
        build(1, 2)(torch.randn(4, 8))
    finally:
        assert set_fused_kernels(previous) is False


SCRIPT = """
import sys, torch
from gaussian_adaptive_attention import GaussianBlock, fused_kernels_available, _build, _fused
if "no-prebuilt" in sys.argv:
    _build.prebuilt = lambda key: None
torch.manual_seed(0)
block = GaussianBlock([1], [2], [3], 1)
x = torch.linspace(-1, 3, 40).view(2, 20) ** 2
first = block(x).sum().item()
second = block(x).sum().item()
print(fused_kernels_available(), _fused._how, repr(first), repr(second))
"""


def child(*args: str, **env: str) -> subprocess.CompletedProcess:
    """A fresh interpreter running SCRIPT."""
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )


def pytorch_value() -> float:
    previous = set_fused_kernels(False)
    try:
        torch.manual_seed(0)
        block = GaussianBlock([1], [2], [3], 1)
        return block(torch.linspace(-1, 3, 40).view(2, 20) ** 2).sum().item()
    finally:
        set_fused_kernels(previous)


@pytest.mark.subprocess
def test_gaa_native_0_uses_pytorch_without_a_note(tmp_path: Path) -> None:
    done = child(GAA_NATIVE="0", GAA_CACHE_DIR=str(tmp_path / "cache"))
    available, how, first, second = done.stdout.split()
    assert (available, how) == ("False", "None")
    assert done.stderr == ""
    assert not (tmp_path / "cache").exists()  # nothing was built
    assert float(first) == pytest.approx(pytorch_value(), rel=1e-6)


@pytest.mark.subprocess
def test_without_a_compiler_one_note_then_pytorch(tmp_path: Path) -> None:
    done = child("no-prebuilt", CXX="/nonexistent", GAA_CACHE_DIR=str(tmp_path / "cache"))
    available, how, first, second = done.stdout.split()
    assert (available, how) == ("False", "None")
    assert done.stderr.splitlines() == [
        "gaussian_adaptive_attention: note: fused CPU kernels unavailable (no C++ compiler: /nonexistent not found); "
        "using the PyTorch path, 3-4x slower. To fix: install one (e.g. `apt-get install g++`) or point CXX at it; "
        "set GAA_NATIVE=0 to use the PyTorch path without this note."
    ]
    assert first == second and float(first) == pytest.approx(pytorch_value(), rel=1e-6)
    assert not list((tmp_path / "cache").glob("*/*.so"))  # nothing half-built left behind


@pytest.mark.subprocess
def test_a_new_process_loads_the_cached_build(fused) -> None:
    done = child()
    available, how, first, second = done.stdout.split()
    assert available == "True" and how in ("cached", "prebuilt") and done.stderr == ""
    assert float(first) == pytest.approx(pytorch_value(), rel=1e-5)


# ----------------------------------------------------------------------------- the cache


def test_cache_key_depends_on_what_the_build_depends_on(monkeypatch, tmp_path: Path) -> None:
    base = _build.build_key()
    monkeypatch.setattr(_build.platform, "machine", lambda: "aarch64")
    arm = _build.build_key()
    assert arm != base and "-mavx2" not in _build.cflags()
    monkeypatch.setattr(_build, "capability", lambda: "SVE256")
    assert _build.build_key() not in (base, arm)
    monkeypatch.undo()
    monkeypatch.setattr(_build, "capability", lambda: "DEFAULT")
    assert _build.build_key() != base and "-mavx2" not in _build.cflags()
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert _build.build_key() != base
    monkeypatch.undo()
    other = tmp_path / "kernels.cpp"
    other.write_text(_build.SOURCE.read_text() + "\n// changed\n")
    assert _build.build_key(other) != base
    assert _build.build_key() == base


def test_cache_folder_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GAA_CACHE_DIR", str(tmp_path / "a"))
    assert _build.cache_root() == tmp_path / "a"
    monkeypatch.delenv("GAA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _build.cache_root() == tmp_path / "xdg" / "gaussian_adaptive_attention"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _build.cache_root() == tmp_path / "home" / ".cache" / "gaussian_adaptive_attention"


def untrusted(tmp_path: Path, monkeypatch, how: str) -> str:
    """The reason _build.load refuses a cache made untrusted in the way `how` says."""
    root = tmp_path / "cache"
    monkeypatch.setenv("GAA_CACHE_DIR", str(root))
    key = _build.build_key()
    folder = root / f"gaa_kernels-{key}"
    folder.mkdir(parents=True, mode=0o700)
    library = folder / f"gaa_kernels_{key}.so"
    library.write_bytes(b"not a shared library: loading it would fail loudly")
    library.chmod(0o600)
    if how == "group-writable folder":
        root.chmod(0o775)
    elif how == "group-writable file":
        library.chmod(0o620)
    elif how == "file of another user":
        os.chown(library, 54321, 54321)
    with pytest.raises(_build.BuildError) as caught:
        _build.load(use_prebuilt=False)
    return caught.value.reason + " / " + caught.value.fix


def test_a_group_writable_cache_folder_is_not_trusted(tmp_path: Path, monkeypatch) -> None:
    message = untrusted(tmp_path, monkeypatch, "group-writable folder")
    assert "writable by group or others" in message and "chmod go-w" in message


def test_a_group_writable_library_is_not_loaded(tmp_path: Path, monkeypatch) -> None:
    assert "writable by group or others" in untrusted(tmp_path, monkeypatch, "group-writable file")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
def test_a_library_of_another_user_is_not_loaded(tmp_path: Path, monkeypatch) -> None:
    assert "belongs to another user" in untrusted(tmp_path, monkeypatch, "file of another user")


@pytest.mark.subprocess
def test_without_home_or_passwd_entry_the_cache_is_private_and_temporary(tmp_path: Path) -> None:
    """No HOME and no passwd entry for the uid (so Path.home() raises): the cache
    folder is <tmp>/gaussian_adaptive_attention-<uid>, created with mode 0700."""
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME", "GAA_CACHE_DIR")}
    env["TMPDIR"] = str(tmp_path)
    script = textwrap.dedent(
        """
        import os, pwd, stat, pathlib
        def no_entry(uid):
            raise KeyError(f"getpwuid(): uid not found: {uid}")
        pwd.getpwuid = no_entry  # as for a uid that /etc/passwd does not list
        try:
            pathlib.Path.home()
            raise SystemExit("Path.home() should fail here")
        except (KeyError, RuntimeError):
            pass
        from gaussian_adaptive_attention import _build
        root = _build.private_dir(_build.cache_root(), "cache folder")
        print(root, oct(stat.S_IMODE(os.stat(root).st_mode)))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=True)
    root, mode = done.stdout.split()
    assert root == str(tmp_path / f"gaussian_adaptive_attention-{os.getuid()}")
    assert mode == "0o700"


TINY = "// a translation unit with nothing in it: a quick build\n"


@pytest.mark.subprocess
def test_two_processes_building_at_once_build_once(tmp_path: Path) -> None:
    """Both succeed; one builds, the other waits on the lock and loads that build,
    even with a lock file left by a killed build (cpp_extension's own)."""
    source = tmp_path / "tiny.cpp"
    source.write_text(TINY)
    cache = tmp_path / "cache"
    key = _build.build_key(source)
    (cache / f"gaa_locktest-{key}").mkdir(parents=True, mode=0o700)
    (cache / f"gaa_locktest-{key}" / "lock").write_text("")  # stale
    script = f"from pathlib import Path\nfrom gaussian_adaptive_attention import _build\nprint(_build.load(Path({str(source)!r}), 'gaa_locktest', use_prebuilt=False))"
    env = {**os.environ, "GAA_CACHE_DIR": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        results.append(out.strip())
    assert sorted(results) == ["built", "cached"]
    (library,) = cache.glob("gaa_locktest-*/gaa_locktest_*.so")
    assert library.stat().st_mode & 0o022 == 0


def test_a_failed_build_is_reported_with_its_log(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "broken.cpp"
    source.write_text("#error this does not compile\n")
    monkeypatch.setenv("GAA_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(_build.BuildError, match="building them failed, see .*build.log") as caught:
        _build.load(source, "gaa_broken", use_prebuilt=False)
    (log,) = (tmp_path / "cache").glob("gaa_broken-*/build.log")
    assert "this does not compile" in log.read_text()
    assert str(log) in caught.value.reason
