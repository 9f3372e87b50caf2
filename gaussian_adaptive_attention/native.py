"""The CPU kernels of ``kernels.c``: compiled on first use, loaded with ctypes.

The product-mode forward and backward each become one call that reads every
element once (see ``kernels.c``). Nothing is compiled at install time: the
first eager CPU call compiles the file with the system's C compiler (5 to 10
seconds) into a cache folder, ``$GAA_CACHE_DIR`` or
``$XDG_CACHE_HOME/gaussian_adaptive_attention`` (``~/.cache/...``), under a
name keyed by the source, the flags, the compiler and the CPU. Without a
compiler, off Linux, or with ``GAA_NATIVE=0``, :func:`library` returns None
and the library runs the same maths as PyTorch operations instead.

The shared object links ``libgomp.so.1``; PyTorch's Linux wheels load a
library of that name first, so the kernels run on PyTorch's OpenMP threads
and follow ``torch.set_num_threads``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

_SOURCE = Path(__file__).with_name("kernels.c")
_FLAGS = ["-O2", "-march=native", "-fopenmp", "-fPIC", "-std=gnu99", "-fno-math-errno", "-fno-trapping-math"]
_TYPES = {torch.float32: ("float", "f32"), torch.float64: ("double", "f64")}

_lib: Optional[dict] = None  # dtype -> (forward, backward) C functions
_tried = False
_disabled = False  # tests set this to run the PyTorch path in-process


def _cache_dir() -> Path:
    if os.environ.get("GAA_CACHE_DIR"):
        return Path(os.environ["GAA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gaussian_adaptive_attention"


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's feature flags where Linux lists them."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _compile(cc: str, target: Path) -> None:
    """Build the shared object into a temporary folder, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        objects = []
        for real, sfx in _TYPES.values():
            obj = Path(tmp) / f"{sfx}.o"
            defines = [f"-DREAL={real}", f"-DSFX={sfx}"] + (["-DREAL_IS_FLOAT"] if real == "float" else [])
            subprocess.run([cc, *_FLAGS, *defines, "-c", str(_SOURCE), "-o", str(obj)], check=True, capture_output=True)
            objects.append(str(obj))
        built = Path(tmp) / target.name
        subprocess.run([cc, "-shared", "-fopenmp", *objects, "-o", str(built), "-lm"], check=True, capture_output=True)
        os.replace(built, target)


def library() -> Optional[dict]:
    """The loaded kernels, compiling them on first use; None where that is not possible."""
    global _lib, _tried
    if _disabled or _tried:
        return None if _disabled else _lib
    _tried = True
    if os.environ.get("GAA_NATIVE", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
        key = hashlib.sha256(
            "\0".join([_SOURCE.read_text(), " ".join(_FLAGS), version, _cpu_id(), platform.machine()]).encode()
        ).hexdigest()[:16]
        target = _cache_dir() / f"kernels-{key}.so"
        if not target.exists():
            _compile(cc, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.CalledProcessError):
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    functions = {}
    for dtype, (_, sfx) in _TYPES.items():
        real = ctypes.c_float if sfx == "f32" else ctypes.c_double
        fwd = getattr(lib, f"gaa_forward_{sfx}")
        fwd.argtypes = [ptr] * 5 + [i64, i64, ptr, ptr] + [i64] * 5 + [real, ctypes.c_int]
        fwd.restype = None
        bwd = getattr(lib, f"gaa_backward_{sfx}")
        bwd.argtypes = [ptr] * 4 + [i64, i64, ptr, ptr, i64, ptr, ptr, ptr] + [i64] * 4 + [ctypes.c_int]
        bwd.restype = ctypes.c_int  # 1: out of memory
        functions[dtype] = (fwd, bwd)
    _lib = functions
    return functions


def usable(x: Tensor, vf: Optional[Tensor]) -> bool:
    """Whether the kernels take this call: eager, CPU, float32 or float64."""
    return (
        x.device.type == "cpu"
        and x.dtype in _TYPES
        and (vf is None or vf.dtype == x.dtype)
        and not torch.compiler.is_compiling()
        and library() is not None
    )


def forward(
    x: Tensor, dims: tuple[int, int, int, int], vf: Optional[Tensor], m: Tensor, c: Tensor, eps: float,
    residual: bool, need_w: bool,
) -> tuple[Tensor, Optional[Tensor], Tensor]:
    """``(out, w, stats)`` for a contiguous x laid out as ``dims`` = (P, H, N, Q).

    ``out`` and ``w`` have x's shape; ``w`` is None unless ``need_w``. ``vf``
    is None or a contiguous 0/1 mask (P|1, H, N, Q|1); ``m`` and ``c`` are the
    (H, G) offsets and scales, contiguous, in x's dtype. ``stats`` (4, P, H, Q)
    holds what :func:`backward` needs besides x to recompute the weights: each
    slice's mean, variance + eps, shift and scale (see ``kernels.c``).
    """
    P, H, N, Q = dims
    out = torch.empty_like(x)
    w = torch.empty_like(x) if need_w else None
    stats = x.new_empty(4 * P * H * Q)
    mask, Pm, Qm = (None, 1, 1) if vf is None else (vf.data_ptr(), vf.shape[0], vf.shape[3])
    _lib[x.dtype][0](
        x.data_ptr(), out.data_ptr(), None if w is None else w.data_ptr(), stats.data_ptr(), mask, Pm, Qm,
        m.data_ptr(), c.data_ptr(), m.shape[1], P, H, N, Q, eps, residual,
    )
    return out, w, stats


def backward(
    gout: Tensor, x: Tensor, stats: Tensor, dims: tuple[int, int, int, int], vf: Optional[Tensor],
    m: Tensor, c: Tensor, residual: bool, need_gx: bool,
) -> tuple[Optional[Tensor], Tensor, Tensor]:
    """``(gx, gm, gc)``: dL/dx (x's shape; None unless ``need_gx``) and dL/dm, dL/dc (H, G)."""
    P, H, N, Q = dims
    gout = gout.contiguous()
    gx = torch.empty_like(x) if need_gx else None
    gm, gc = torch.empty_like(m), torch.empty_like(c)
    mask, Pm, Qm = (None, 1, 1) if vf is None else (vf.data_ptr(), vf.shape[0], vf.shape[3])
    failed = _lib[x.dtype][1](
        gout.data_ptr(), x.data_ptr(), stats.data_ptr(), mask, Pm, Qm,
        m.data_ptr(), c.data_ptr(), m.shape[1], None if gx is None else gx.data_ptr(),
        gm.data_ptr(), gc.data_ptr(), P, H, N, Q, residual,
    )
    if failed:
        raise MemoryError("gaussian_adaptive_attention: no memory for the backward pass's per-thread sums")
    return gx, gm, gc
