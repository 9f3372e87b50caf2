"""Checkpoints are untrusted input: loading one never runs code, and metadata that lies is refused.

The pickles here really do run a command when unpickled (a control test shows
it); given to `gaa` as checkpoints they must be refused without running it. The
crafted safetensors files start from a real checkpoint written by `gaa train`
and change one thing each.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import shlex
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .test_bad_inputs import TINY, csv, error_line, gaa, wide_frame


class RunsCommand:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class TouchesFile:
    """Unpickling this creates `marker` through pathlib, no shell."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def payload(kind: str, marker: Path) -> bytes:
    if kind == "torch-save":  # the zip format of torch.save, with the pickle inside
        buf = io.BytesIO()
        torch.save({"state_dict": RunsCommand(marker)}, buf)
        return buf.getvalue()
    evil = TouchesFile(marker) if kind == "pathlib" else RunsCommand(marker)
    return pickle.dumps({"model": evil}, protocol=int(kind.removeprefix("protocol-").removeprefix("pathlib") or 4))


KINDS = ["protocol-0", "protocol-1", "protocol-2", "protocol-5", "pathlib", "torch-save"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("trusted")
    data = csv(d / "train.csv", wide_frame())
    r = gaa("train", data, *TINY, "--out", d / "run", "--device", "cpu")
    assert r.code == 0, r.stderr
    return {"run": d / "run", "data": data}


@pytest.mark.parametrize("kind", KINDS)
def test_the_payloads_are_live(kind, tmp_path):
    """Control: unpickling each payload does run its command, so the refusals below mean something."""
    marker = tmp_path / "ran"
    data = payload(kind, marker)
    if kind == "torch-save":
        torch.load(io.BytesIO(data), weights_only=False)
    else:
        pickle.loads(data)
    assert marker.exists()


@pytest.mark.parametrize("entry", ["evaluate-file", "predict-file", "evaluate-run-dir", "resume-run-dir"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_malicious_pickle_is_refused_and_never_runs(kind, entry, trained, tmp_path):
    marker = tmp_path / "pwned"
    evil = payload(kind, marker)
    if entry.endswith("run-dir"):
        run = tmp_path / "run"
        run.mkdir()
        name = "last.safetensors" if entry.startswith("resume") else "best.safetensors"
        (run / name).write_bytes(evil)
        shown = run / name
        args = ["train", "--resume", run, "-q"] if entry.startswith("resume") else ["evaluate", run, trained["data"]]
    else:
        shown = tmp_path / "model.pt"
        shown.write_bytes(evil)
        args = [entry.split("-")[0], shown, trained["data"]]
    line = error_line(gaa(*args), 2)
    assert str(shown) in line and "checkpoint" in line
    if kind in ("protocol-2", "protocol-5", "pathlib"):
        assert "Python pickle" in line and "never unpickles" in line
    if kind == "torch-save":
        assert "zip archive" in line
    assert not marker.exists(), "loading the checkpoint ran the pickled command"


# ----------------------------------------------------------------------------
# crafted safetensors files


def parts(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        header = dict(f.metadata())
    return load_file(str(path)), header


def edit_meta(change: Callable[[dict], object]) -> Callable[[dict, dict], None]:
    def apply(tensors: dict, header: dict) -> None:
        meta = json.loads(header["meta"])
        change(meta)
        header["meta"] = json.dumps(meta)

    return apply


def edit_header(key: str, value: str | None) -> Callable[[dict, dict], None]:
    def apply(tensors: dict, header: dict) -> None:
        if value is None:
            header.pop(key)
        else:
            header[key] = value

    return apply


def edit_tensor(name: str, make: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[[dict, dict], None]:
    def apply(tensors: dict, header: dict) -> None:
        new = make(tensors[name]) if name in tensors else make(None)
        if new is None:
            tensors.pop(name)
        else:
            tensors[name] = new

    return apply


def set_path(meta: dict, path: str, value: object) -> None:
    *parents, last = path.split(".")
    for p in parents:
        meta = meta[p]
    meta[last] = value


def with_nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


# The model's parameter names belong to model.py; find the tensors by role, not by name.
def head_weight(tensors: dict) -> str:
    return next(k for k in sorted(tensors) if k.startswith("model.") and k.endswith("head.weight"))


def first_conv(tensors: dict) -> str:
    return next(k for k in sorted(tensors) if k.startswith("model.") and tensors[k].ndim == 3)


def head_bias(tensors: dict) -> str:
    return head_weight(tensors).removesuffix("weight") + "bias"


def change_tensor(pick: Callable[[dict], str], make: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[[dict, dict], tuple]:
    """Replace (or drop, if `make` gives None) the tensor `pick` names; the expected words are its name and shapes."""

    def apply(tensors: dict, header: dict) -> tuple:
        name = pick(tensors)
        old = tensors.pop(name)
        new = make(old)
        if new is not None:
            tensors[name] = new
        short = name.removeprefix("model.")
        return (short,) if new is None or new.shape == old.shape else (short, str(tuple(new.shape)), str(tuple(old.shape)))

    return apply


@dataclass
class Craft:
    id: str
    change: Callable[[dict, dict], None]
    words: tuple[str, ...]
    source: str = "best.safetensors"


CRAFTS = [
    # metadata against the weights
    Craft("more-classes-than-head", edit_meta(lambda m: m["classes"].append("d")), ("4 classes", "head has 3 outputs")),
    Craft("fewer-classes-than-head", edit_meta(lambda m: m["classes"].pop()), ("2 classes", "head has 3 outputs")),
    Craft("one-class", edit_meta(lambda m: set_path(m, "classes", ["a"])), ("class list is invalid",)),
    Craft("duplicate-classes", edit_meta(lambda m: set_path(m, "classes", ["a", "a", "b"])), ("class list is invalid",)),
    Craft("classes-not-values", edit_meta(lambda m: set_path(m, "classes", [{"a": 1}, ["b"], "c"])), ("class list is invalid",)),
    Craft("head-wrong-shape", change_tensor(head_weight, lambda t: torch.zeros(t.shape[0], t.shape[1] - 1)), ("the model needs",)),
    Craft("conv-wrong-shape", change_tensor(first_conv, lambda t: torch.zeros(*t.shape[:-1], t.shape[-1] + 2)), ("the model needs",)),
    Craft("missing-weight", change_tensor(head_bias, lambda t: None), ("missing",)),
    Craft("unexpected-weight", edit_tensor("model.backdoor", lambda t: torch.zeros(2)), ("unexpected backdoor",)),
    Craft("weight-of-wrong-dtype", change_tensor(head_bias, lambda t: t.to(torch.int64)), ("torch.int64", "torch.float32")),
    Craft("nan-weight", change_tensor(first_conv, with_nan), ("NaN",)),
    Craft("no-model-weights", lambda t, h: [t.pop(k) for k in list(t) if k.startswith("model.")] and None, ("no model weights",), "last.safetensors"),
    Craft("config-width-differs", edit_meta(lambda m: set_path(m, "model_config.width", 16)), ("the model needs", "16")),
    Craft("config-absurd-width", edit_meta(lambda m: set_path(m, "model_config.width", 10**7)), ("model_config: 'width' = 10000000", "from 1 to 4096")),
    Craft("config-unknown-key", edit_meta(lambda m: set_path(m, "model_config.exec", "rm -rf /")), ("unknown key(s) exec",)),
    Craft("config-wrong-type", edit_meta(lambda m: set_path(m, "model_config.gaa_heads", "1")), ("'gaa_heads' must be int",)),
    Craft("normalization-wrong-length", edit_meta(lambda m: set_path(m, "normalization.mean", [0.0, 0.0])), ("normalization mean", "1 finite number")),
    Craft("normalization-a-string", edit_meta(lambda m: set_path(m, "normalization.std", "x")), ("normalization std",)),
    Craft("normalization-zero-std", edit_meta(lambda m: set_path(m, "normalization.std", [0.0])), ("normalization std", "positive")),
    Craft("schema-unknown-layout", edit_meta(lambda m: set_path(m, "schema.layout", "grid")), ("'layout' must be one of",)),
    Craft("schema-features-not-a-list", edit_meta(lambda m: set_path(m, "schema.features", "t00")), ("features",)),
    Craft("lengths-disagree-with-schema", edit_meta(lambda m: set_path(m, "lengths.max", 99)), ("16 time-step columns", "99 steps")),
    # the header
    Craft("newer-format-version", edit_header("format_version", "2"), ("format version 2 is newer", "upgrade gaa")),
    Craft("far-future-format-version", edit_header("format_version", "999"), ("format version 999 is newer",)),
    Craft("format-version-zero", edit_header("format_version", "0"), ("invalid format version 0",)),
    Craft("format-version-not-a-number", edit_header("format_version", "1.x"), ("invalid format version '1.x'",)),
    Craft("no-format-marker", edit_header("format", None), ("not a gaa checkpoint",)),
    Craft("other-format-marker", edit_header("format", "keras"), ("not a gaa checkpoint",)),
    Craft("meta-not-json", edit_header("meta", "{'classes': ['a'"), ("metadata is missing or not JSON",)),
    Craft("meta-missing", edit_header("meta", None), ("metadata is missing or not JSON",)),
    Craft("meta-a-list", edit_header("meta", "[1, 2]"), ("lacks model_config",)),
    Craft("meta-lacks-normalization", edit_meta(lambda m: m.pop("normalization")), ("lacks normalization",)),
]


@pytest.mark.parametrize("craft", CRAFTS, ids=[c.id for c in CRAFTS])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_crafted_checkpoint_is_refused(craft, command, trained, tmp_path):
    tensors, header = parts(trained["run"] / craft.source)
    more = craft.change(tensors, header) or ()
    path = tmp_path / "crafted.safetensors"
    save_file(tensors, str(path), metadata=header)
    line = error_line(gaa(command, path, trained["data"]), 2)
    assert f"{path}: " in line and "checkpoint" in line
    for w in (*craft.words, *more):
        assert w in line, f"{w!r} not in: {line}"


def raw_safetensors(header: dict, body: bytes) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + body


RAW = {
    "header-length-absurd": struct.pack("<Q", 2**60) + b"{}",
    "header-length-past-end": struct.pack("<Q", 500) + b'{"__metadata__": {}}',
    "offsets-past-end": raw_safetensors({"model.w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 16),
    "shape-disagrees-with-offsets": raw_safetensors({"model.w": {"dtype": "F32", "shape": [10, 10], "data_offsets": [0, 16]}}, b"\0" * 16),
    "unknown-dtype": raw_safetensors({"model.w": {"dtype": "F99", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16),
    "header-not-json": struct.pack("<Q", 8) + b"not json" + b"\0" * 8,
    "eight-bytes": struct.pack("<Q", 0),
}


@pytest.mark.parametrize("name", sorted(RAW))
def test_a_malformed_safetensors_file_is_refused(name, trained, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(RAW[name])
    line = error_line(gaa("predict", path, trained["data"]), 2)
    assert str(path) in line and "checkpoint" in line


# ----------------------------------------------------------------------------
# resuming from a crafted last checkpoint


def resume_with(trained: dict, tmp_path: Path, change: Callable[[dict, dict], None]) -> str:
    run = tmp_path / "run"
    run.mkdir()
    tensors, header = parts(trained["run"] / "last.safetensors")
    change(tensors, header)
    save_file(tensors, str(run / "last.safetensors"), metadata=header)
    before = (run / "last.safetensors").read_bytes()
    line = error_line(gaa("train", "--resume", run, "-q"), 2)
    assert (run / "last.safetensors").read_bytes() == before and sorted(p.name for p in run.iterdir()) == ["last.safetensors"]
    return line


RESUME_CRAFTS = {
    "no-resume-state": (edit_meta(lambda m: m.pop("resume")), ("holds no training state",)),
    "loop-missing": (edit_meta(lambda m: m["resume"].pop("loop")), ("training state is invalid", "missing key 'loop'")),
    "epoch-negative": (edit_meta(lambda m: set_path(m, "resume.loop.epoch", -1)), ("training state is invalid", "whole numbers")),
    "epoch-beyond-the-run": (edit_meta(lambda m: set_path(m, "resume.loop.epoch", 10**6)), ("training state is invalid", "beyond")),
    "history-too-short": (edit_meta(lambda m: set_path(m, "resume.loop.history", [])), ("training state is invalid", "history")),
    "random-state-missing": (edit_tensor("state.rng.torch", lambda t: None), ("training state is invalid", "rng.torch")),
    "train-config-unknown-key": (edit_meta(lambda m: set_path(m, "train_config.hook", "x")), ("unknown key(s) hook",)),
    "train-config-absurd-epochs": (edit_meta(lambda m: set_path(m, "train_config.epochs", 0)), ("train_config: 'epochs' = 0",)),
    "weights-do-not-fit": (change_tensor(head_bias, lambda t: torch.zeros(7)), ("(7,)", "the model needs")),
    "other-data-fingerprint": (edit_meta(lambda m: set_path(m, "resume.fingerprint", "0" * 16)), ("differs from the data", "start a new run")),
    "optimiser-groups-do-not-fit": (edit_meta(lambda m: m["resume"]["param_groups"][0].update(params=[0])), ("training state is invalid", "optimiser settings list 1 parameters")),
    "optimiser-state-wrong-shape": (edit_tensor("state.optim.0.exp_avg", lambda t: torch.zeros(t.numel() + 1)), ("training state is invalid", "optim.0.exp_avg", "the model needs")),
    "optimiser-state-integer": (edit_tensor("state.optim.0.exp_avg_sq", lambda t: t.long()), ("training state is invalid", "optim.0.exp_avg_sq", "torch.int64")),
    "optimiser-state-for-no-parameter": (edit_tensor("state.optim.999.exp_avg", lambda t: torch.zeros(3)), ("training state is invalid", "unexpected optimiser tensor optim.999.exp_avg")),
}


@pytest.mark.parametrize("name", sorted(RESUME_CRAFTS))
def test_resume_refuses_a_crafted_training_state(name, trained, tmp_path):
    change, words = RESUME_CRAFTS[name]
    line = resume_with(trained, tmp_path, change)
    assert "last.safetensors" in line or "train.csv" in line
    for w in words:
        assert w in line, f"{w!r} not in: {line}"


def test_the_untouched_checkpoint_passes_the_same_checks(trained, tmp_path):
    """Control: the crafting round trip itself changes nothing the loader objects to."""
    tensors, header = parts(trained["run"] / "best.safetensors")
    save_file(tensors, str(tmp_path / "same.safetensors"), metadata=header)
    r = gaa("evaluate", tmp_path / "same.safetensors", trained["data"], "--json")
    assert r.code == 0, r.stderr
    r = gaa("train", "--resume", trained["run"], "-q")  # finished run: resumes to the end at once
    assert r.code == 0, r.stderr


def test_a_run_saved_with_per_head_optimiser_state_resumes(trained, tmp_path):
    """gaa 0.1 kept each head's parameters (and so their optimiser state) as (G,); 0.2 stacks them as (H, G)."""
    tensors, header = parts(trained["run"] / "last.safetensors")
    rows = [k for k, t in tensors.items() if k.startswith("state.optim.") and t.dim() == 2 and t.shape[0] == 1]
    assert rows, "the default model has one head per GaussianBlock layer: (1, G) parameters"
    for k in rows:
        tensors[k] = tensors[k].reshape(-1).contiguous()
    edit_meta(lambda m: set_path(m, "train_config.epochs", m["train_config"]["epochs"] + 1))(tensors, header)  # one more epoch: steps
    run = tmp_path / "run"
    run.mkdir()
    save_file(tensors, str(run / "last.safetensors"), metadata=header)
    r = gaa("train", "--resume", run, "-q")
    assert r.code == 0, r.stderr
    assert all(t.dim() == 2 for k, t in parts(run / "last.safetensors")[0].items() if k in rows)  # saved back as (1, G)
