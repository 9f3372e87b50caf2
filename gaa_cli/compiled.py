"""`--compile`: the network's forward pass through torch.compile, and back to eager execution when that fails.

`Module.compile` compiles the module's own call in place: the parameters, the state dict and so every checkpoint
are the plain module's, and `probabilities`, which calls the module, goes through the compiled forward too.
Compiling is lazy: TorchDynamo traces at the first call of each new kind (training or evaluation mode, with or
without gradients, a new batch shape), and AOTAutograd compiles the backward at the first backward pass. So a
failure can surface in either; `Compiler.run` wraps a whole step, and on a failure to compile it notes why in one
line, returns the module to eager execution for the rest of the process and runs the step again eagerly. An
error of the model itself is raised again by that eager run, as it would be without `--compile`.

The GaussianBlock's fused CPU kernels are custom operators with fake implementations (gaussian_adaptive_attention/
_fused.py), so a compiled graph on the CPU keeps them as single nodes; on a GPU the block runs its branch-free
PyTorch formulation, which the compiler fuses into a few kernels.
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["Compiler", "compile_unavailable", "is_compile_failure"]

T = TypeVar("T")
_COMPILER_MODULES = ("torch._dynamo", "torch._inductor", "torch._functorch", "torch.fx", "triton")


def compile_unavailable(device: torch.device, backend: str = "inductor") -> str | None:
    """Why torch.compile cannot run on `device` here, in a few words; None when nothing is known to stop it."""
    try:
        import torch._dynamo
    except Exception as e:  # a broken or partial install
        return f"torch._dynamo does not import ({type(e).__name__})"
    if not torch._dynamo.is_dynamo_supported():
        return f"this torch does not support torch.compile on Python {platform.python_version()}"
    if backend != "inductor":
        return None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "the GPU compiler needs Triton (pip install triton)"
    elif not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        return "the CPU compiler needs a C++ compiler (g++ or clang++) on PATH"
    return None


def is_compile_failure(e: BaseException) -> bool:
    """Whether `e` (or what it was raised from) comes from the compiler stack rather than from the model."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__module__.startswith(_COMPILER_MODULES):
            return True
        e = e.__cause__ or e.__context__
    return False


def _first_line(e: BaseException) -> str:
    """'Outer: Root: first line of the root's message', where Root is what the compiler's error wraps (if any)."""
    root, seen = e, set()
    while id(root) not in seen:
        seen.add(id(root))
        inner = getattr(root, "inner_exception", None) or root.__cause__
        if inner is None:
            break
        root = inner
    lines = str(root).strip().splitlines()
    what = f"{type(root).__name__}: {lines[0][:160]}" if lines else type(root).__name__
    return what if root is e else f"{type(e).__name__}: {what}"


class Compiler:
    """Compiles `model` in place when `enabled` and possible, and keeps it usable when compiling fails.

    `notes` receives one line whenever the model runs eagerly instead: torch.compile unavailable, or failed.
    `backend` is torch.compile's ("inductor"; tests use "aot_eager", which traces the same graphs without
    generating code).
    """

    def __init__(self, model: torch.nn.Module, enabled: bool, device: torch.device, notes: Callable[[list[str]], None],
                 backend: str = "inductor") -> None:
        self.model, self.notes = model, notes
        self.active = False
        if not enabled:
            return
        why = compile_unavailable(device, backend)
        if why is not None:
            notes([f"--compile: {why}; the network runs eagerly"])
            return
        model.compile(backend=backend)
        self.active = True

    def fall_back(self, e: BaseException) -> None:
        """Eager execution from now on (the compiled call is dropped), with a note naming the failure."""
        self.model._compiled_call_impl = None  # what Module.compile set; None is the module's own call
        self.active = False
        self.notes([f"--compile: torch.compile failed ({_first_line(e)}); the network runs eagerly"])

    def run(self, step: Callable[[], T]) -> T:
        """`step()`, which calls the model (forward, and backward when training); once compiling fails, it is
        noted and `step()` runs again eagerly. A step must be safe to repeat: it is, when it computes from its
        inputs and leaves the optimiser to step only after its backward."""
        if not self.active:
            return step()
        try:
            return step()
        except Exception as e:
            if not is_compile_failure(e):
                raise
            self.fall_back(e)
            return step()
