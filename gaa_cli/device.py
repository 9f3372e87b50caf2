"""Devices: what `--device` names, turned into a usable `torch.device`."""

from __future__ import annotations

import torch

from .errors import UsageError

__all__ = ["resolve_device", "to_device"]


def resolve_device(spec: str) -> torch.device:
    """'auto', 'cpu', 'cuda' or 'cuda:N' -> a usable torch.device."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine (no GPU or a CPU-only torch); use --device cpu or --device auto")
        index = int(spec[5:]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s); pick cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    raise UsageError(f"--device {spec!r}: unknown device; use auto, cpu, cuda or cuda:N")


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor (a batch) onto `device`. To a GPU it goes through page-locked (pinned) memory by a
    non-blocking copy, which the GPU's copy engine runs while the host prepares the next batch; PyTorch's pinned
    allocator keeps the staging block until the copy is done, so it is safe to drop the host tensor at once. On
    the CPU it is `t` itself."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
