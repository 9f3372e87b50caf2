"""Training past one process: `torchrun --nproc-per-node N -m gaa_cli train ...`.

torchrun starts N copies of the command and tells each its place through the environment (WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `session` joins them into one process group (NCCL on CUDA, gloo on
the CPU) for the length of a training command and leaves it on the way out, error or not. `current()` is
the run's `Dist`: everything the training loop asks of the other processes goes through it, and outside
torchrun it is a group of one whose every method is a no-op, so one code path serves both.

Who does what, in a group of N:
- every rank reads the data and prepares the same split (the split is seeded); each trains on its own
  1/N of every batch (`Dist.shard`), and DistributedDataParallel averages the gradients;
- rank 0 alone creates and locks the run directory, fits the ridge half (then sends it to the others),
  plans a time limit, writes checkpoints, metrics and progress, and prints; its decisions (the run
  directory, whether the lock was taken, the ridge, each epoch's metrics and whether the run is done) are
  broadcast, so that every rank takes the same path through the loop;
- each rank predicts its 1/N of the validation data and the probabilities are gathered on every rank;
- a stop request (Ctrl-C, SIGTERM) or a non-finite loss on any rank is agreed on at every step.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as td

from .errors import GaaError, TrainingError, UsageError

__all__ = ["Dist", "current", "launched", "session", "TIMEOUT_S"]

T = TypeVar("T")
TIMEOUT_S = 3600.0  # the longest one rank waits for the others (rank 0 fits the ridge while they wait); $GAA_DIST_TIMEOUT_S


def launched() -> bool:
    """Started by torchrun (or anything else that sets its variables) with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@dataclass
class Dist:
    """This process's place in the run: rank `rank` of `world` (a group of one outside torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device this rank trains on: with CUDA, each rank of a machine its own GPU (LOCAL_RANK)."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The module the optimiser steps run through: DistributedDataParallel in a group, else `model`.

        Buffers are not broadcast at each step: the only buffers that change in training are BatchNorm's running
        statistics, and train.refresh_batchnorm re-estimates them from the same samples on every rank before
        anything reads them; the ridge's buffers (fixed once fitted) would otherwise cross the network every step.
        """
        if not self.active:
            return model
        import inspect
        import warnings

        ids = [device.index] if device.type == "cuda" else None
        # size-1 dimensions give a (conv) weight two valid strides: DDP's notice about it is harmless
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ddp = torch.nn.parallel.DistributedDataParallel
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters else {"broadcast_buffers": False}
        return ddp(model, device_ids=ids, **no_sync)

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's part of a batch's indices: N contiguous parts whose sizes differ by at most one.

        A batch smaller than N (the last of an epoch) is topped up from its own start, so no rank steps on
        nothing (every rank must join each gradient exchange).
        """
        if not self.active:
            return idx
        if len(idx) < self.world:
            idx = idx.repeat(-(-self.world // max(1, len(idx))))[: self.world]
        return idx.tensor_split(self.world)[self.rank]

    # --- agreeing

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (any picklable object)."""
        if not self.active:
            return value
        box = [value if self.is_main else None]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def main_first(self, fn: Callable[[], T]) -> T:
        """`fn()` on rank 0 alone; its result on every rank, or its GaaError raised on every rank (so that all stop
        together, and only rank 0 says why: see cli._say)."""
        if not self.active:
            return fn()
        outcome: tuple[bool, Any] = (True, None)
        if self.is_main:
            try:
                outcome = (True, fn())
            except Exception as e:
                told = e if isinstance(e, GaaError) else TrainingError(f"rank 0 failed: {type(e).__name__}: {e}")
                self.broadcast((False, told))
                raise
        ok, value = self.broadcast(outcome)
        if not ok:
            raise value
        return value

    def agree_step(self, stop: bool, loss: torch.Tensor) -> tuple[bool, bool, float]:
        """One small all-reduce per step: (any rank asked to stop, any rank's loss is not finite, the mean loss)."""
        value = loss.detach().float().cpu()
        if not self.active:
            return stop, not bool(torch.isfinite(value)), float(value)
        finite = bool(torch.isfinite(value))
        t = torch.tensor([float(stop), float(not finite), float(value) if finite else 0.0], dtype=torch.float64)
        t = t.to(self._comm_device())
        td.all_reduce(t)
        stop_any, bad_any, total = t.cpu().tolist()
        return stop_any > 0, bad_any > 0, total / self.world

    def gather_rows(self, n: int, predict: Callable[[torch.Tensor], Any]) -> Any:
        """(n, K) numpy rows computed a part per rank and gathered on every rank: `predict(rows)` returns this rank's
        rows' (len(rows), K) float32 array, for rows rank, rank + N, ... of 0..n-1."""
        import numpy as np

        if not self.active:
            return predict(torch.arange(n))
        mine = torch.arange(self.rank, n, self.world)
        part = np.ascontiguousarray(predict(mine), dtype=np.float32)
        parts: list[Any] = [None] * self.world
        td.all_gather_object(parts, part)
        k = next((p.shape[1] for p in parts if p.ndim == 2 and len(p)), 0)
        out = np.empty((n, k), dtype=np.float32)
        for r, p in enumerate(parts):
            if len(p):
                out[r::self.world] = p
        return out

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank."""
        if not self.active:
            return flag
        t = torch.tensor([float(flag)], device=self._comm_device())
        td.all_reduce(t)
        return bool(t.item() > 0)

    def share(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers of `module`, copied into every rank's."""
        if not self.active:
            return
        state = self.broadcast({k: v.detach().cpu() for k, v in module.state_dict().items()} if self.is_main else None)
        if not self.is_main:
            module.load_state_dict(state)

    def barrier(self) -> None:
        if self.active:
            td.barrier()

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if td.get_backend() == "nccl" else torch.device("cpu")


_CURRENT = Dist()


def current() -> Dist:
    """The run's place in its process group (a group of one outside `session`)."""
    return _CURRENT


def _env_int(name: str) -> int:
    raw = os.environ.get(name, "")
    if not raw.strip().lstrip("-").isdigit():
        raise UsageError(f"${name} is {raw!r}; start several processes with torchrun, which sets it (torchrun --nproc-per-node N -m gaa_cli train ...)")
    return int(raw)


@contextlib.contextmanager
def session(device_spec: str) -> Iterator[Dist]:
    """Join torchrun's process group for the block (nothing to join outside torchrun); always leave it.

    `device_spec` is --device: NCCL when it resolves to CUDA, gloo otherwise.
    """
    global _CURRENT
    if not launched() or td.is_initialized():
        yield _CURRENT
        return
    from .device import resolve_device

    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = resolve_device(device_spec)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    timeout = datetime.timedelta(seconds=float(os.environ.get("GAA_DIST_TIMEOUT_S") or TIMEOUT_S))
    td.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    _CURRENT = Dist(rank, world, local)
    try:
        yield _CURRENT
    finally:
        _CURRENT = Dist()
        with contextlib.suppress(Exception):  # the group may be broken already (a peer died); leaving must not hide why
            td.destroy_process_group()
