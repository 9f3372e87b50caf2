"""Typed configuration: the model, the training recipe, and how they are read and written.

Every field is a plain type so a config round-trips through TOML (the user's
`--config` file and the run's saved `config.toml`) and through checkpoint JSON.
A field left as None means "choose from the data's shape"; `resolve` fills them.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import UsageError

__all__ = ["AXES", "ATTENTIONS", "PRECISIONS", "ModelConfig", "TrainConfig", "DataShape", "option", "options_of", "load_toml", "to_toml", "from_dict", "merge", "resolve", "validate", "parse_duration"]

AXES = ("time", "features", "both")
ATTENTIONS = ("gaussian", "dot")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # see precision.py
MAX_STEPS = 256  # longer series are downsampled in the first convolution to about this many steps
TARGET_STEPS = 1000  # optimiser steps of a default run
DEFAULT_WIDTH = 64  # channels of the convolutional stem
SMALL = 300  # samples below which a set is small: no early stopping, the held-out part only weighs the halves
VAL_SPLIT_SMALL = 0.2  # held out from sets under 300 samples when a ridge is to be weighed against the network
RIDGE_FEATURES = 10_000  # random-convolution features of a default run (see random_features.py)
MULTICHANNEL_RIDGE = False  # the ridge half on multichannel data by default: off, as measured (docs/anytime.md)


def option(default: Any, help: str, panel: str, flag: str | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A config field that is also a `gaa train` option: its help text, help panel, flag spelling and choices
    live here and nowhere else (cli.py builds the options from them)."""
    return field(default=default, metadata={"help": help, "panel": panel, "flag": flag, "choices": choices})


@dataclass
class ModelConfig:
    """The classifier around a GaussianBlock (see model.py). None = chosen from the data's shape."""

    width: int | None = option(None, "Width of the convolutional stem \\[default: 64].", "Model")
    stride: int | None = option(None, "Time downsampling in the first convolution \\[default: ceil(length / 256)].", "Model")
    stem_layers: int = option(3, "Dilated residual conv layers after the first \\[default: 3].", "Model")
    kernel_size: int = option(7, "Conv kernel size \\[default: 7].", "Model")
    gaa_layers: int = option(1, "GaussianBlock layers; 0 replaces the block by the identity \\[default: 1].", "Model")
    gaa_heads: int = option(1, "Heads per GaussianBlock layer \\[default: 1].", "Model")
    gaa_gaussians: int = option(2, "Gaussians per head \\[default: 2].", "Model")
    gaa_axes: str = option("time", "What the GaussianBlock normalises over \\[default: time].", "Model", choices=AXES)
    attention: str = option("gaussian", "The attention over the stem's steps: gaussian (a GaussianBlock) or dot (torch.nn.MultiheadAttention, "
                            "standard dot-product self-attention, for comparison) \\[default: gaussian].", "Model", choices=ATTENTIONS)
    gaa_mixture: bool = option(False, "Mixture of Gaussians instead of their product \\[default: product].", "Model", flag="--gaa-mixture/--gaa-product")
    dropout: float = option(0.0, "Dropout before the head \\[default: 0].", "Model")
    ridge_features: int | None = option(
        None, "Random-convolution features of the ridge classifier whose probabilities are averaged with the network's; "
        "0 = the network alone \\[default: 10000 for one channel, else 0].", "Model")
    ridge_length: int | None = None  # the sequence length the ridge's dilations are chosen for (the longest training sequence)


@dataclass
class TrainConfig:
    """The training recipe. None = chosen from the data's shape."""

    epochs: int | None = option(None, "Maximum epochs \\[default: from the data's size].", "Training")
    batch_size: int | None = option(None, "Batch size \\[default: from the data's size].", "Training")
    lr: float = option(3e-3, "Peak learning rate \\[default: 3e-3].", "Training")  # AdamW, one-cycle schedule
    weight_decay: float = option(1e-2, "AdamW weight decay \\[default: 1e-2].", "Training")
    label_smoothing: float = option(0.1, "Label smoothing \\[default: 0.1].", "Training")
    val_split: float | None = option(None, "Fraction of the training data held out for validation \\[default: from the data's size].", "Data")
    patience: int | None = option(None, "Stop after this many epochs without validation gain; 0 = never.", "Training")
    augment: bool = option(True, "Random per-channel scaling and jitter during training \\[default: on].", "Training", flag="--augment/--no-augment")
    seed: int = option(0, "Random seed \\[default: 0].", "Training")
    time_limit: str | None = option(
        None, "Wall-time budget of the whole command, e.g. 90s, 10m, 2h: the network's schedule is planned to end inside it, "
        "and the ridge half is saved first \\[default: no limit].", "Training")
    device: str = option("auto", "auto, cpu, cuda or cuda:N \\[default: auto].", "Run")
    precision: str = option(
        "auto", "Precision of the network's passes: auto (bf16 on a GPU that has it, else fp16; fp32 on the CPU), fp32, bf16 "
        "or fp16 (CUDA only); parameters and checkpoints stay float32 \\[default: auto].", "Run", choices=PRECISIONS)
    compile: bool = option(False, "Compile the network with torch.compile: a slower start for faster steps; runs eagerly, "
                           "with a note, where compiling is unavailable or fails \\[default: off].", "Run", flag="--compile/--no-compile")
    stream: bool | None = option(
        None, "Stream the training data from Parquet row groups through a shuffle buffer instead of loading it whole "
        "(wide or list layout) \\[default: above --stream-above].", "Data", flag="--stream/--no-stream")
    stream_above: float = option(4.0, "Stream Parquet training data whose uncompressed size is above this many GB \\[default: 4].", "Data")


@dataclass(frozen=True)
class DataShape:
    """What the defaults are chosen from."""

    n_samples: int
    length: int  # longest sequence
    channels: int
    n_classes: int


def resolve(model: ModelConfig, train: TrainConfig, shape: DataShape) -> tuple[ModelConfig, TrainConfig]:
    """Fill every None field from the data's shape; explicit values are kept."""
    model = dataclasses.replace(model)
    train = dataclasses.replace(train)
    if model.width is None:
        model.width = DEFAULT_WIDTH
    if model.stride is None:
        model.stride = max(1, math.ceil(shape.length / MAX_STEPS))
    if model.ridge_features is None:
        # multichannel: its kernels put each channel through its own random kernel (random_features.py), but the
        # whole model measured better without it (docs/anytime.md, "The ridge on multichannel data")
        model.ridge_features = RIDGE_FEATURES if shape.channels == 1 or MULTICHANNEL_RIDGE else 0
    if model.ridge_length is None:
        model.ridge_length = shape.length
    if train.batch_size is None:
        train.batch_size = min(32, shape.n_samples)
    if train.val_split is None:
        # held-out predictions weigh the network against the ridge; without a ridge, small sets need every sample
        train.val_split = 0.1 if shape.n_samples >= SMALL else VAL_SPLIT_SMALL if model.ridge_features else 0.0
    if train.epochs is None:
        # a fixed budget of optimiser steps, whatever the data's size, but at least a few passes
        steps_per_epoch = math.ceil(shape.n_samples * (1 - train.val_split) / train.batch_size)
        train.epochs = int(min(TARGET_STEPS, max(10, math.ceil(TARGET_STEPS / steps_per_epoch))))
    if train.patience is None:
        # early stopping needs a validation set large enough to tell epochs apart; a small set's held-out 20% only
        # weighs the network against the ridge, at the end of the full schedule (train.py)
        train.patience = 0 if train.val_split == 0 or shape.n_samples < SMALL else max(10, train.epochs // 3)
    return model, train


def parse_duration(duration: str) -> float:
    """'90s', '10m', '2h', '1.5h' or '120' (seconds) -> seconds; a ValueError for anything else or <= 0."""
    text = duration.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    value = float(text[:-1] if scale else text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(duration)
    return value * (scale or 1)


def validate(model: ModelConfig, train: TrainConfig, where: dict[str, str] | None = None) -> None:
    """Refuse values no run could use, naming the option, or the key in `where`["model"] / `where`["train"]."""

    def bad(name: str, value: Any, want: str) -> UsageError:
        if where is not None:
            table = "model" if name in {f.name for f in fields(ModelConfig)} else "train"
            return UsageError(f"{where[table]}: '{name}' = {value!r}: must be {want}")
        return UsageError(f"--{name.replace('_', '-')} {value}: must be {want}")

    for name, lo, hi in (("epochs", 1, 100_000), ("batch_size", 1, 1_000_000), ("patience", 0, 100_000)):
        v = getattr(train, name)
        if v is not None and not lo <= v <= hi:
            raise bad(name, v, f"an integer from {lo} to {hi}")
    if not (math.isfinite(train.lr) and 0 < train.lr <= 10):
        raise bad("lr", train.lr, "a number above 0 and at most 10 (typical: 1e-4 to 1e-2)")
    if not (math.isfinite(train.weight_decay) and 0 <= train.weight_decay <= 10):
        raise bad("weight_decay", train.weight_decay, "from 0 to 10")
    if not 0 <= train.label_smoothing < 1:
        raise bad("label_smoothing", train.label_smoothing, "at least 0 and below 1")
    if train.val_split is not None and not 0 <= train.val_split < 1:
        raise bad("val_split", train.val_split, "at least 0 and below 1")
    if not 0 <= model.dropout < 1:
        raise bad("dropout", model.dropout, "at least 0 and below 1")
    for name, lo, hi in (("width", 1, 4096), ("stride", 1, 1024), ("stem_layers", 0, 12), ("kernel_size", 1, 255), ("gaa_layers", 0, 16), ("gaa_heads", 1, 64), ("gaa_gaussians", 1, 64), ("ridge_features", 0, 1_000_000), ("ridge_length", 1, 10_000_000)):
        v = getattr(model, name)
        if v is not None and not lo <= v <= hi:
            raise bad(name, v, f"an integer from {lo} to {hi}")
    if model.gaa_axes not in AXES:
        raise bad("gaa_axes", model.gaa_axes, "time, features or both")
    if model.attention not in ATTENTIONS:
        raise bad("attention", model.attention, "gaussian or dot")
    if model.attention == "dot" and model.gaa_axes != "time":
        raise bad("gaa_axes", model.gaa_axes, "time with --attention dot (dot-product attention runs over time)")
    width = model.width if model.width is not None else DEFAULT_WIDTH
    if model.gaa_layers and model.gaa_heads > width:
        raise bad("gaa_heads", model.gaa_heads, f"at most the stem's width ({width}): each head takes a group of its channels")
    if model.gaa_layers and model.gaa_axes != "features" and width % model.gaa_heads:
        raise bad("gaa_heads", model.gaa_heads, f"a divisor of the stem's width ({width}): over time, each head takes an equal group of its channels")
    if train.time_limit is not None:
        try:
            parse_duration(train.time_limit)
        except ValueError:
            raise bad("time_limit", train.time_limit, "a duration such as 90s, 10m or 2h (or a number of seconds)") from None
    if not (math.isfinite(train.stream_above) and train.stream_above >= 0):
        raise bad("stream_above", train.stream_above, "a number of GB, at least 0")
    if not 0 <= train.seed <= 2**63 - 1:  # what both numpy and torch accept
        raise bad("seed", train.seed, f"an integer from 0 to {2**63 - 1}")
    if train.precision not in PRECISIONS:
        raise bad("precision", train.precision, "auto, fp32, bf16 or fp16")
    device = train.device.strip().lower()
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise bad("device", train.device, "auto, cpu, cuda or cuda:N")


# --- reading and writing -----------------------------------------------------------


def _check_value(cls: type, name: str, value: Any, where: str) -> Any:
    """Return `value` converted to the field's type, or raise a UsageError saying what was expected."""
    hint = get_type_hints(cls)[name]
    allowed = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
    names = " or ".join("none" if t is type(None) else t.__name__ for t in allowed)
    raise UsageError(f"{where}: '{name}' must be {names}, got {value!r} ({type(value).__name__})")


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a config dataclass from a dict, refusing unknown keys and wrong types."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(known))}")
    return cls(**{k: _check_value(cls, k, v, where) for k, v in data.items()})


def load_toml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a config file with optional [model] and [train] tables; returns their raw dicts."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: config file not found; check the path given to --config") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory; --config needs a TOML file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML ({e}); fix the syntax or remove --config") from None
    unknown = sorted(set(data) - {"model", "train"})
    if unknown:
        raise UsageError(f"{path}: unknown table(s) {', '.join(unknown)}; a config has [model] and [train] only")
    for table in ("model", "train"):
        if not isinstance(data.get(table, {}), dict):
            raise UsageError(f"{path}: '{table}' must be a table ([{table}])")
    model, train = data.get("model", {}), data.get("train", {})
    # validate early, with the file's name
    where = {"model": f"{path} [model]", "train": f"{path} [train]"}
    validate(from_dict(ModelConfig, model, where["model"]), from_dict(TrainConfig, train, where["train"]), where)
    return model, train


def options_of(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are fields of the config class `cls`."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def merge(cls: type, file_values: dict[str, Any], cli_values: dict[str, Any], where: str) -> Any:
    """Defaults < config file < command line (options left unset on the command line are None)."""
    values = dict(file_values)
    values.update({k: v for k, v in cli_values.items() if v is not None})
    return from_dict(cls, values, where)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {v!r} to TOML")


def to_toml(model: ModelConfig, train: TrainConfig) -> str:
    """The resolved configuration as a TOML file that `--config` accepts."""
    lines = ["# resolved configuration of this run; reuse it with `gaa train --config`"]
    for table, cfg in (("model", model), ("train", train)):
        lines.append(f"\n[{table}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in dataclasses.asdict(cfg).items() if v is not None]
    return "\n".join(lines) + "\n"
