"""Checkpoints: tensors in safetensors, everything else as JSON in its metadata.

One file holds a whole checkpoint, so it is written and renamed into place in
one step. Loading parses a JSON header and raw tensor bytes only: nothing in
the file is ever executed (no pickle). Before a checkpoint is used, its
metadata and weights are checked against each other (`check_checkpoint`), and
a checkpoint to resume from has its training state checked too
(`check_resume_state`); the optimiser's state travels as flat tensors
(`optimizer_tensors`, `optimizer_state`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import ModelConfig, TrainConfig, from_dict, validate
from .data import Schema
from .errors import CheckpointError, GaaError
from .files import atomic_write_bytes
from .model import SequenceClassifier

__all__ = [
    "FORMAT", "FORMAT_VERSION", "BEST", "LAST", "SAVED", "Checkpoint", "save", "load", "resolve_path",
    "peek_meta", "build_model", "check_checkpoint", "check_resume_state", "reason", "optimizer_tensors", "param_groups", "optimizer_state",
]

FORMAT = "gaa-checkpoint"
FORMAT_VERSION = 1
BEST = "best.safetensors"
LAST = "last.safetensors"
REQUIRED = ("model_config", "train_config", "classes", "schema", "normalization", "lengths", "versions")
SAVED = {"model": "model_config", "train": "train_config"}  # where a checkpoint keeps its configs
MAX_HEADER = 100 << 20  # bytes of JSON header a checkpoint may have; gaa writes a few kilobytes


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


def _memory_bytes() -> int:
    """This machine's physical memory (a large number where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 50


def peek_meta(path: Path) -> dict | None:
    """A checkpoint's metadata, from its header alone (the weights are not read); None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= MAX_HEADER:
                return None
            header = json.loads(f.read(n).decode("utf-8")).get("__metadata__") or {}
        meta = json.loads(header["meta"])
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


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
        size, memory = path.stat().st_size, _memory_bytes()
        if size > memory // 2:  # read whole, then copied into tensors: it could not fit
            raise CheckpointError(f"{path}: is {size / 2**30:.1f} GiB, more than half this machine's memory ({memory / 2**30:.1f} GiB), "
                                  "so it cannot be loaded here; use a checkpoint written by `gaa train`, or a machine with more memory")
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
    except MemoryError:
        raise CheckpointError(f"{path}: its tensors do not fit in this machine's memory; it was not loaded") from None
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
    if scalars:  # labels are text; checkpoints of gaa 0.2 may hold numbers, spelled here as the reader spells them
        classes = meta["classes"] = [c if isinstance(c, str) else _as_text(c) for c in classes]
    if not scalars or len(classes) < 2 or len(set(classes)) != len(classes):
        raise CheckpointError(f"{path}: checkpoint class list is invalid ({str(classes)[:80]}); the file is corrupted")
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    if not model:
        raise CheckpointError(f"{path}: checkpoint holds no model weights; the file is corrupted")
    return Checkpoint(meta=meta, model=model, state=state)


def _as_text(value: int | float | bool) -> str:
    import pyarrow as pa  # the reader's one way of spelling a number as text (data/read.py)

    return pa.array([value]).cast(pa.string())[0].as_py()


def _read_header(raw: bytes) -> dict[str, str]:
    # safetensors layout: 8-byte little-endian header length, then the JSON header
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    return header.get("__metadata__", {}) or {}


# --- checking a checkpoint before it is used ------------------------------------------------


def reason(e: Exception) -> str:
    """One line saying why a checkpoint field was refused."""
    if isinstance(e, KeyError):
        return f"missing key {e.args[0]!r}"
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def channels(schema: Schema) -> int:
    """Input channels of the model: one per feature column, except wide files (one series)."""
    return 1 if schema.layout == "wide" else len(schema.features)


def build_model(cfg: ModelConfig, schema: Schema, n_classes: int) -> SequenceClassifier:
    """The untrained model a checkpoint's metadata describes (under torch.device("meta"): shapes only)."""
    return SequenceClassifier(cfg, channels(schema), n_classes)


def _numbers(value: object, n: int, what: str, positive: bool = False) -> None:
    ok = isinstance(value, list) and len(value) == n and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)
    if not ok or (positive and min(value) <= 0):
        raise ValueError(f"{what} must be {n} finite{' positive' if positive else ''} number(s), found {str(value)[:60]}")


def _check_meta(ck: Checkpoint) -> tuple[ModelConfig, Schema]:
    """The model config and schema, after checking every field the model and the data reading use."""
    meta = ck.meta
    cfg = from_dict(ModelConfig, meta["model_config"], "model_config")
    if cfg.width is None:
        raise ValueError("model_config has no width")
    validate(cfg, TrainConfig(), where=SAVED)
    schema = Schema.from_dict(meta["schema"])
    n_channels = channels(schema)
    if n_channels < 1:
        raise ValueError("schema names no feature columns")
    norm = meta["normalization"]
    if not isinstance(norm, dict):
        raise ValueError("normalization must be a JSON object")
    _numbers(norm.get("mean"), n_channels, "normalization mean")
    _numbers(norm.get("std"), n_channels, "normalization std", positive=True)
    lengths = meta["lengths"]
    if not isinstance(lengths, dict) or not all(isinstance(lengths.get(k), int) and lengths[k] >= 1 for k in ("min", "max")):
        raise ValueError(f"lengths must hold whole numbers min and max of at least 1, found {str(lengths)[:60]}")
    if schema.layout == "wide" and lengths["max"] != len(schema.features):
        raise ValueError(f"a wide-layout model of {len(schema.features)} time-step columns records sequences of {lengths['max']} steps")
    return cfg, schema


def _check_weights(ck: Checkpoint, cfg: ModelConfig, schema: Schema, n_classes: int) -> None:
    """The weights are exactly the tensors the model built from the metadata has: names, shapes, dtypes, finite."""
    with torch.device("meta"):  # shapes only: nothing is allocated, whatever the metadata says
        expected = build_model(cfg, schema, n_classes).state_dict()
    ck.model.setdefault("blend", torch.tensor(0.5))  # gaa 0.2 averaged the two halves 50/50
    head = ck.model.get("head.weight")
    if head is not None and head.ndim == 2 and head.shape[0] != n_classes:
        raise ValueError(f"the metadata lists {n_classes} classes but the classification head has {head.shape[0]} outputs")
    missing = sorted(set(expected) - set(ck.model))
    extra = sorted(set(ck.model) - set(expected))
    if missing or extra:
        bits = ([f"missing {', '.join(missing[:3])}"] if missing else []) + ([f"unexpected {', '.join(extra[:3])}"] if extra else [])
        raise ValueError(f"weights do not match model_config: {'; '.join(bits)}")
    for name, want in expected.items():
        got = ck.model[name]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise ValueError(f"weight {name} is {got.dtype} {tuple(got.shape)}, the model needs {want.dtype} {tuple(want.shape)}")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise ValueError(f"weight {name} holds NaN or infinite values")


def check_checkpoint(ck: Checkpoint, path: Path) -> tuple[ModelConfig, Schema]:
    """Validate a checkpoint's metadata and weights against each other before they are used."""
    try:
        cfg, schema = _check_meta(ck)
        _check_weights(ck, cfg, schema, len(ck.meta["classes"]))
    except (GaaError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: checkpoint metadata is invalid or does not match its weights ({reason(e)}); the file is corrupted or was edited") from None
    return cfg, schema


def check_resume_state(ck: Checkpoint, path: Path) -> tuple[ModelConfig, TrainConfig]:
    """The saved configs, after checking the weights and the training state fit together."""
    model_cfg, schema = check_checkpoint(ck, path)
    try:
        train_cfg = from_dict(TrainConfig, ck.meta["train_config"], SAVED["train"])
        validate(model_cfg, train_cfg, where=SAVED)
        r = ck.meta["resume"]
        loop = r["loop"]
        counters = ("epoch", "step", "best_epoch", "bad_epochs")
        if not all(isinstance(loop[k], int) and not isinstance(loop[k], bool) and loop[k] >= 0 for k in counters):
            raise ValueError(f"loop counters {', '.join(counters)} must be whole numbers >= 0")
        if not all(isinstance(loop[k], (int, float)) for k in ("best_acc", "best_loss")):
            raise ValueError("best_acc and best_loss must be numbers")
        if train_cfg.epochs is None or loop["epoch"] > train_cfg.epochs:
            raise ValueError(f"epoch {loop['epoch']} is beyond the run's {train_cfg.epochs} epochs")
        history = loop["history"]
        if not isinstance(history, list) or len(history) != loop["epoch"] or not all(isinstance(m, dict) and "epoch" in m for m in history):
            raise ValueError("the metrics history does not match the epoch count")
        if loop["best_epoch"] and not any(m["epoch"] == loop["best_epoch"] for m in history):
            raise ValueError(f"best epoch {loop['best_epoch']} is not in the history")
        if not isinstance(r["fingerprint"], str) or not isinstance(r["param_groups"], list) or not all(isinstance(g, dict) for g in r["param_groups"]):
            raise ValueError("fingerprint or optimiser settings have the wrong type")
        for name in ("rng.torch", "rng.gen") + (("perm",) if loop["step"] > 0 else ()):
            if name not in ck.state:
                raise ValueError(f"the training state lacks {name}")
        with torch.device("meta"):  # the optimiser keeps one state per parameter, in this order
            shapes = [tuple(p.shape) for p in build_model(model_cfg, schema, len(ck.meta["classes"])).parameters()]
        listed = sorted(i for g in r["param_groups"] for i in g.get("params", []))
        if listed != list(range(len(shapes))):
            raise ValueError(f"the optimiser settings list {len(listed)} parameters, the model has {len(shapes)}")
        for name, t in ck.state.items():
            if name.startswith("optim."):
                pid, _, key = name[len("optim."):].partition(".")
                if not pid.isdigit() or int(pid) >= len(shapes) or key not in ("step", "exp_avg", "exp_avg_sq"):
                    raise ValueError(f"unexpected optimiser tensor {name}")
                want = () if key == "step" else shapes[int(pid)]
                # gaa 0.1 stored each head's parameters as (G,): same values as a (1, G) row, reshaped on resume
                if t.numel() != math.prod(want) or (key != "step" and not t.is_floating_point()):
                    raise ValueError(f"optimiser tensor {name} is {t.dtype} {tuple(t.shape)}, the model needs a float tensor of shape {want}")
    except (GaaError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: checkpoint training state is invalid ({reason(e)}); it cannot be resumed") from None
    return model_cfg, train_cfg


# --- optimiser state in and out of safetensors -----------------------------------------------


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimiser's per-parameter state as flat tensors named `{param index}.{key}`."""
    out = {}
    for pid, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            out[f"{pid}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def param_groups(opt: torch.optim.Optimizer) -> list[dict]:
    """The optimiser's settings (JSON)."""
    return [dict(g) for g in opt.state_dict()["param_groups"]]


def optimizer_state(state: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    """An optimiser state dict from a checkpoint's `optim.*` tensors and saved settings."""
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in state.items():
        if name.startswith("optim."):
            pid, key = name[len("optim."):].split(".", 1)
            per_param.setdefault(int(pid), {})[key] = value
    return {"state": per_param, "param_groups": groups}
