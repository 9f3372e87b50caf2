"""Numeric precision of a run: what `--precision` names, turned into an autocast region and a gradient scaler.

    auto   bf16 on a GPU with native bfloat16 (compute capability 8.0 and up), else fp16; fp32 on the CPU
    fp32   no autocast: every operation in float32
    bf16   autocast to bfloat16 (CUDA, or a CPU's bfloat16 kernels)
    fp16   autocast to float16, with a GradScaler against underflowing gradients (CUDA only)

Autocast runs the matrix products and convolutions in the low precision and keeps the parameters, the optimiser's
state and so every checkpoint in float32. What must stay exact runs in float32 inside the region: the
GaussianBlock's statistics and weights (an autocast-free region of its own, attention.attend_layers), the
softmax, the loss (the logits are cast up before it) and the ridge half (random_features.py), whose solve never
runs under autocast.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .config import PRECISIONS
from .errors import UsageError

__all__ = ["PRECISIONS", "Precision", "resolve_precision", "inference_precision"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """A resolved precision on one kind of device: `name` is fp32, bf16 or fp16, never auto."""

    name: str
    device_type: str  # "cpu" or "cuda"

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype; None for fp32 (no autocast)."""
        return _DTYPES.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The region that forward passes (and the loss) run in; a no-op for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 on CUDA (bf16 has float32's range: nothing underflows)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16" and self.device_type == "cuda")


def _bf16_on_cuda(device: torch.device, native: bool) -> bool:
    """Whether the GPU runs bfloat16: natively (compute capability 8.0 and up), or at all (emulated, slow)."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=not native)


def resolve_precision(spec: str, device: torch.device) -> Precision:
    """'auto', 'fp32', 'bf16' or 'fp16' on `device` -> a Precision; a UsageError for a combination that cannot run."""
    spec = spec.strip().lower()
    if spec not in PRECISIONS:
        raise UsageError(f"--precision {spec!r}: unknown precision; use auto, fp32, bf16 or fp16")
    cuda = device.type == "cuda"
    if spec == "auto":
        spec = ("bf16" if _bf16_on_cuda(device, native=True) else "fp16") if cuda else "fp32"
    elif spec == "fp16" and not cuda:
        raise UsageError("--precision fp16 needs a CUDA GPU (its GradScaler is CUDA-only); use --precision bf16 or fp32 on the CPU")
    elif spec == "bf16" and cuda and not _bf16_on_cuda(device, native=False):
        raise UsageError(f"--precision bf16: this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16 support; use --precision fp16 or auto")
    return Precision(spec, device.type)


def inference_precision(saved: str | None, device: torch.device) -> Precision:
    """The precision predictions run in: the run's own (`saved`, from its checkpoint; auto when absent) on a GPU,
    and float32 on the CPU, where it is exact and the fused kernels apply. Never refuses: a bf16 run on a GPU
    without bf16 predicts in fp16."""
    if device.type != "cuda":
        return Precision("fp32", device.type)
    saved = saved if saved in PRECISIONS else "auto"
    if saved == "bf16" and not _bf16_on_cuda(device, native=False):
        saved = "fp16"
    return resolve_precision(saved, device)
