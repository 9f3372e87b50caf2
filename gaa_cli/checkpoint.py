"""Checkpoints: tensors in safetensors, everything else as JSON in its metadata.

One file holds a whole checkpoint, so it is written and renamed into place in
one step. Loading parses a JSON header and raw tensor bytes only: nothing in
the file is ever executed (no pickle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import CheckpointError
from .files import atomic_write_bytes

__all__ = ["FORMAT", "FORMAT_VERSION", "Checkpoint", "save", "load", "resolve_path", "BEST", "LAST"]

FORMAT = "gaa-checkpoint"
FORMAT_VERSION = 1
BEST = "best.safetensors"
LAST = "last.safetensors"
REQUIRED = ("model_config", "train_config", "classes", "schema", "normalization", "lengths", "versions")


@dataclass
class Checkpoint:
    meta: dict[str, Any]  # JSON metadata: configs, classes, schema, normalisation, metrics, versions
    model: dict[str, torch.Tensor]  # the model's state dict
    state: dict[str, torch.Tensor]  # training state for --resume (optimiser, random state); may be empty


def save(path: Path, ckpt: Checkpoint) -> None:
    """Write `ckpt` to `path` atomically."""
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in ckpt.model.items()}
    tensors.update({f"state.{k}": v.detach().to("cpu").contiguous() for k, v in ckpt.state.items()})
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "meta": json.dumps(ckpt.meta)}
    atomic_write_bytes(path, st_save(tensors, metadata=header))


def resolve_path(path: Path) -> Path:
    """A run directory stands for its best checkpoint."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: run directory has no {BEST} or {LAST}; pass a run directory made by `gaa train` or a checkpoint file")
    return path


def _describe_foreign(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save format)"
    if head[:1] == b"\x80" and head[1:2] in {bytes([p]) for p in range(2, 6)}:
        return "a Python pickle"
    return None


def load(path: Path) -> Checkpoint:
    """Read and validate a checkpoint file (or a run directory's best checkpoint)."""
    path = resolve_path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found; pass a run directory or a .safetensors file written by `gaa train`") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror})") from None
    foreign = _describe_foreign(raw[:8])
    if foreign:
        raise CheckpointError(f"{path}: is {foreign}, not a gaa checkpoint; gaa never unpickles files, so it refuses to load it. Use a checkpoint written by `gaa train`")
    try:
        tensors = st_load(raw)
        header = _read_header(raw)
    except (SafetensorError, ValueError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable gaa checkpoint (truncated or corrupted: {str(e)[:120]}); retrain or use another checkpoint") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file but not a gaa checkpoint (no '{FORMAT}' header); use a checkpoint written by `gaa train`")
    try:
        version = int(header.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path}: checkpoint has an invalid format version {header.get('format_version')!r}; the file is corrupted or from another tool") from None
    if version < 1:
        raise CheckpointError(f"{path}: checkpoint has an invalid format version {version}; the file is corrupted or from another tool")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is newer than this gaa understands ({FORMAT_VERSION}); upgrade gaa (pip install -U gaa)")
    try:
        meta = json.loads(header["meta"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: checkpoint metadata is missing or not JSON; the file is corrupted") from None
    missing = [k for k in REQUIRED if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint metadata lacks {', '.join(missing)}; the file is corrupted or from another tool")
    classes = meta["classes"]
    scalars = isinstance(classes, list) and all(isinstance(c, (str, int, float)) for c in classes)
    if not scalars or len(classes) < 2 or len(set(map(repr, classes))) != len(classes):
        raise CheckpointError(f"{path}: checkpoint class list is invalid ({str(classes)[:80]}); the file is corrupted")
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    if not model:
        raise CheckpointError(f"{path}: checkpoint holds no model weights; the file is corrupted")
    return Checkpoint(meta=meta, model=model, state=state)


def _read_header(raw: bytes) -> dict[str, str]:
    # safetensors layout: 8-byte little-endian header length, then the JSON header
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    return header.get("__metadata__", {}) or {}
