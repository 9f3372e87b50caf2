"""What the commands ask for, turned into work: run directories, configs, data, outputs."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import checkpoint as ckpt_io
from . import distributed, streaming
from .config import ModelConfig, TrainConfig, load_toml, merge, validate
from .data import ReadOptions, Schema, SequenceData, load
from .device import resolve_device
from .precision import resolve_precision
from .errors import CheckpointError, DataError, UsageError
from .files import RunLock, atomic_write
from .model import MIN_LENGTH
from .tensors import FILLS, check_channels, fingerprint
from .train import TrainResult, fit

__all__ = ["TrainRequest", "run_training", "check_output", "write_predictions", "check_explain_dir", "write_explanation", "explain_summary"]

RESUME_OVERRIDES = ("device", "precision", "compile")  # options a resumed run may change
RUN_FILES = (ckpt_io.BEST, ckpt_io.LAST, "metrics.jsonl", "config.toml", "curves.png")


@dataclass
class TrainRequest:
    data: Path | None
    val: Path | None = None
    out: Path | None = None
    force: bool = False
    resume: Path | None = None
    config: Path | None = None
    read: ReadOptions = field(default_factory=ReadOptions)
    started: float | None = None  # time.monotonic() when the command began: a --time-limit counts from there
    model_options: dict[str, Any] = field(default_factory=dict)  # None = not given
    train_options: dict[str, Any] = field(default_factory=dict)


def _new_run_dir(data: Path) -> Path:
    stem = data.name.split(".")[0] or "run"
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def _prepare_run_dir(path: Path, force: bool) -> list[str]:
    """Create or check the run directory; returns the names of a previous run's files that --force replaces.
    They are left in place until the new run has written its first complete checkpoint (train.fit)."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: exists and is not a directory; choose another --out")
    old = []
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise UsageError(f"{path}: run directory is not empty; pass --force to replace its checkpoints, choose another --out, or continue it with --resume {path}")
        old = [name for name in RUN_FILES if (path / name).exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".gaa-write-test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{path}: cannot write the run directory ({e.strerror}); choose another --out") from None
    return old


def run_training(req: TrainRequest, *, console, show_progress: bool, notes: Callable[[list[str]], None]) -> TrainResult:
    # Everything is checked before the run directory is touched, and notes wait until then,
    # so a refused command prints one line and changes nothing.
    if req.resume is not None:
        return _resume(req, console=console, show_progress=show_progress, notes=notes)
    if req.data is None:
        raise UsageError("missing DATA: give a training file (gaa train DATA) or --resume RUN_DIR")
    file_model, file_train = load_toml(req.config) if req.config else ({}, {})
    model_cfg = merge(ModelConfig, file_model, req.model_options, "command line")
    train_cfg = merge(TrainConfig, file_train, req.train_options, "command line")
    validate(model_cfg, train_cfg)
    resolve_precision(train_cfg.precision, resolve_device(train_cfg.device))
    with distributed.session(train_cfg.device):
        return _train_new(req, model_cfg, train_cfg, console=console, show_progress=show_progress, notes=notes)


def _train_new(req: TrainRequest, model_cfg: ModelConfig, train_cfg: TrainConfig, *, console, show_progress: bool,
               notes: Callable[[list[str]], None]) -> TrainResult:
    dist = distributed.current()
    show_progress = show_progress and dist.is_main
    opts = req.read
    read = dict(need_labels=True, allow_missing=opts.allow_missing, min_length=MIN_LENGTH, skip_empty=opts.skip_empty)
    streamed = streaming.should_stream(req.data, train_cfg.stream, train_cfg.stream_above)
    if streamed:  # read row group by row group during training (streaming.py)
        data = streaming.StreamedData(req.data, {"label": "label", **opts.roles(), **read})
    else:
        data = _loaded(load(req.data, **{"label": "label", **opts.roles()}, min_classes=2, **read))
    val = None
    if req.val is not None:
        val = _loaded(load(req.val, schema=data.schema, **read))
        if not streamed:  # a streamed run knows its labels after its first pass; an unseen one counts as wrong
            _check_val_labels(val, data, req.val, req.data)
    if not streamed:
        check_channels(data)
    # rank 0 names, checks and locks the run directory; the other ranks follow its outcome (see distributed.py)
    run_dir, replaced = dist.main_first(lambda: _run_dir_for(req))
    with _locked(run_dir, dist):
        notes(data.notes)
        if val is not None:
            notes(val.notes)
        sources = {"data": str(req.data.resolve()), "val": str(req.val.resolve()) if req.val else "", "allow_missing": str(opts.allow_missing),
                   "fill": opts.fill, "skip_empty": str(opts.skip_empty)}
        result = fit(data, val, model_cfg, train_cfg, run_dir, console=console, show_progress=show_progress, sources=sources, fill=opts.fill,
                     replaces=replaced, notes=notes, started=req.started)
        if dist.is_main:
            notes(_draw_curves(result))
        return result


def _run_dir_for(req: TrainRequest) -> tuple[Path, list[str]]:
    run_dir = req.out if req.out is not None else _new_run_dir(req.data)
    return run_dir, _prepare_run_dir(run_dir, req.force)


@contextlib.contextmanager
def _locked(run_dir: Path, dist: distributed.Dist) -> Iterator[None]:
    """RunLock on rank 0 (one writer per run directory); the other ranks go on only once it holds it, and stop
    with its error when it cannot."""
    lock = RunLock(run_dir)
    dist.main_first(lambda: lock.__enter__() and None)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _draw_curves(result: TrainResult) -> list[str]:
    """RUN_DIR/curves.png: loss and validation metrics per epoch, the ridge's leave-one-out accuracy as a line."""
    import json

    from . import plots

    history = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    try:
        plots.curves(history, result.ridge, result.run_dir / "curves.png")
    except UsageError as e:  # no matplotlib: everything else is written
        return [f"{e.message}; skipped {result.run_dir / 'curves.png'}"]
    return []


def _loaded(data: SequenceData) -> SequenceData:
    """Training data without the rows --skip-empty-rows left out (they have length 0), once read: Arrow's allocator
    gives back the tables it read from, which it would otherwise keep (3x the data's size)."""
    pa.default_memory_pool().release_unused()
    return data if data.lengths.all() else data.subset(data.lengths > 0)


def _check_val_labels(val: SequenceData, data: SequenceData, val_path: Path, data_path: Path) -> None:
    known = {repr(v) for v in data.labels}
    unseen = sorted({repr(v) for v in val.labels} - known)
    if unseen:
        n = sum(repr(v) not in known for v in val.labels)
        raise DataError(
            f"{val_path}: {n} validation sample(s) have label(s) that {data_path} does not have ({', '.join(unseen[:5])}); "
            "validate on data with the training labels"
        )


def _remove_stale_temps(run_dir: Path) -> None:
    """Temporary files left by a run killed while writing (see files.atomic_write)."""
    for name in RUN_FILES:
        for tmp in run_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _resume(req: TrainRequest, *, console, show_progress: bool, notes: Callable[[list[str]], None]) -> TrainResult:
    given = [k for k, v in {**req.model_options, **req.train_options}.items() if v is not None and k not in RESUME_OVERRIDES]
    if given or req.config or req.out or req.val:
        extra = [f"--{k.replace('_', '-')}" for k in given] + [o for o, v in (("--config", req.config), ("--out", req.out), ("--val", req.val)) if v]
        raise UsageError(f"--resume continues a run with its saved settings; drop {', '.join(extra)}")
    run_dir = req.resume
    last = run_dir / ckpt_io.LAST
    if not last.is_file():
        raise UsageError(f"{run_dir}: no {ckpt_io.LAST} to resume from; pass a run directory written by `gaa train`")
    ck = ckpt_io.load(last)
    if "resume" not in ck.meta:
        raise UsageError(f"{last}: checkpoint holds no training state; it cannot be resumed")
    model_cfg, train_cfg = ckpt_io.check_resume_state(ck, last)
    for name in RESUME_OVERRIDES:  # where and how it runs, not what it computes: a resumed run may change them
        if req.train_options.get(name) is not None:
            setattr(train_cfg, name, req.train_options[name])
    resolve_precision(train_cfg.precision, resolve_device(train_cfg.device))
    with distributed.session(train_cfg.device):
        return _resume_run(req, ck, model_cfg, train_cfg, console=console, show_progress=show_progress, notes=notes)


def _resume_run(req: TrainRequest, ck: ckpt_io.Checkpoint, model_cfg: ModelConfig, train_cfg: TrainConfig, *, console, show_progress: bool,
                notes: Callable[[list[str]], None]) -> TrainResult:
    dist = distributed.current()
    show_progress = show_progress and dist.is_main
    run_dir, last = req.resume, req.resume / ckpt_io.LAST
    sources = ck.meta.get("sources", {})
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise CheckpointError(f"{last}: checkpoint 'sources' must map names to paths; the file is corrupted")
    data_path = req.data or Path(sources.get("data", ""))
    if not str(data_path):
        raise UsageError(f"{last}: does not record its training data; pass it: gaa train DATA --resume {run_dir}")
    allow_missing, skip_empty = sources.get("allow_missing") == "True", sources.get("skip_empty") == "True"
    fill = sources.get("fill", "mean")
    if fill not in FILLS:
        raise CheckpointError(f"{last}: checkpoint 'sources' names an unknown fill {fill!r}; the file is corrupted")
    read = dict(need_labels=True, allow_missing=allow_missing, min_length=MIN_LENGTH, skip_empty=skip_empty)
    if sources.get("stream") == "True":  # the fingerprint is checked after the first pass (train.Trainer.restore)
        data = streaming.StreamedData(data_path, read, schema=Schema.from_dict(ck.meta["schema"]))
    else:
        data = _loaded(load(data_path, schema=Schema.from_dict(ck.meta["schema"]), **read))
    val = _loaded(load(Path(sources["val"]), schema=data.schema, **read)) if sources.get("val") else None
    if not isinstance(data, streaming.StreamedData) and fingerprint(data) != ck.meta["resume"]["fingerprint"]:
        raise UsageError(f"{data_path}: differs from the data run {run_dir} was trained on; resume with the same file, or start a new run")
    with _locked(run_dir, dist):
        if dist.is_main:
            _remove_stale_temps(run_dir)
        notes(data.notes)
        if val is not None:
            notes(val.notes)
        loop = ck.meta["resume"]["loop"]
        notes([f"resuming {run_dir} at epoch {loop['epoch'] + 1}, step {loop['step'] + 1}"])
        result = fit(data, val, model_cfg, train_cfg, run_dir, console=console, show_progress=show_progress, resume=ck, sources=sources, fill=fill,
                     notes=notes, started=req.started)
        if dist.is_main:
            notes(_draw_curves(result))
        return result


def check_output(fmt: str, output: Path | None, force: bool, option: str = "--output") -> None:
    """Refuse an output that cannot be written, or that exists and may not be replaced, before any work."""
    if fmt == "parquet" and output is None:
        raise UsageError(f"--format parquet writes binary data; pass {option} FILE.parquet")
    if output is not None and output.is_dir():
        raise UsageError(f"{output}: is a folder; give {option} a file name, e.g. {output / ('predictions.' + fmt)}")
    if output is not None and output.exists() and not force:
        raise UsageError(f"{output}: already exists; {'pass --force to overwrite it or ' if option == '--output' else ''}choose another {option}")


def write_predictions(frames: pd.DataFrame | Iterable[pd.DataFrame], fmt: str, output: Path | None, stdout: IO[str]) -> None:
    """CSV or JSON lines to stdout or a file; Parquet to a file. Files are written atomically.

    `frames` is one frame or the chunks of one (see inference.predict_frames), written as they come: the output
    is the same either way. To stdout, the chunks before a failing one are already written; to a file, nothing is.
    """
    chunks = iter([frames] if isinstance(frames, pd.DataFrame) else frames)
    if fmt == "parquet":
        assert output is not None
        atomic_write(output, lambda tmp: _write_parquet(chunks, tmp))
        return
    if output is None:
        _write_text(chunks, fmt, stdout)
        stdout.flush()
    else:
        def write(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                _write_text(chunks, fmt, f)

        atomic_write(output, write)


def _write_text(chunks: Iterator[pd.DataFrame], fmt: str, out: IO[str]) -> None:
    for i, frame in enumerate(chunks):
        buf = io.StringIO()
        if fmt == "csv":
            frame.to_csv(buf, index=False, header=i == 0)
        else:
            frame.to_json(buf, orient="records", lines=True, force_ascii=False)
        out.write(buf.getvalue())


def _write_parquet(chunks: Iterator[pd.DataFrame], path: Path) -> None:
    writer, schema = None, None
    try:
        for frame in chunks:
            if writer is None:
                # text columns as strings whatever a chunk holds (a chunk of skipped rows has no prediction at all)
                schema = pa.Schema.from_pandas(frame, preserve_index=False)
                for i, col in enumerate(schema):
                    if col.type in (pa.null(), pa.string()) or pd.api.types.is_object_dtype(frame[col.name].dtype):
                        schema = schema.set(i, col.with_type(pa.large_string()))
                writer = pq.ParquetWriter(path, schema)
            writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
    finally:
        if writer is not None:
            writer.close()


EXPLAIN_FILES = ("importance.parquet", "channels.parquet", "predictions.parquet", "importance_by_class.png", "examples.png")
PROFILE_BINS = 100  # parts of a sequence's length that class profiles are averaged over


def check_explain_dir(out: Path, force: bool) -> None:
    """Refuse an output folder that would overwrite a previous explanation, before any work."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder; give --out a folder name")
    taken = [name for name in EXPLAIN_FILES if (out / name).exists()]
    if taken and not force:
        raise UsageError(f"{out}: already holds {', '.join(taken)}; pass --force to replace them or choose another --out")


def write_explanation(e: Any, out: Path, classes: list[str]) -> list[str]:
    """The tables and figures of `gaa explain --out`, each written atomically; returns notes (a missing matplotlib)."""
    from . import plots

    out.mkdir(parents=True, exist_ok=True)
    lengths = [len(s) for s in e.steps]
    ids = pa.array(list(e.ids))
    steps = pa.table({e.id_col: pa.array(np.repeat(np.asarray(list(e.ids), dtype=object), lengths).tolist(), ids.type),
                      "step": pa.array(np.concatenate([np.arange(n) for n in lengths]) if lengths else [], pa.int64()),
                      "importance": pa.array(np.concatenate(e.steps) if lengths else [], pa.float32())})
    atomic_write(out / "importance.parquet", lambda tmp: pq.write_table(steps, tmp))
    if e.channels is not None:
        c = len(e.channel_names)
        table = pa.table({e.id_col: pa.array(np.repeat(np.asarray(list(e.ids), dtype=object), c).tolist(), ids.type),
                          "channel": pa.array(e.channel_names * len(lengths)), "importance": pa.array(e.channels.ravel(), pa.float32())})
        atomic_write(out / "channels.parquet", lambda tmp: pq.write_table(table, tmp))
    preds = pa.table({e.id_col: ids, "prediction": pa.array(e.predicted, pa.string()), "probability": pa.array(e.probability, pa.float32())})
    atomic_write(out / "predictions.parquet", lambda tmp: pq.write_table(preds, tmp))
    try:
        plots.require()
    except UsageError as err:
        return [f"{err}; wrote the tables only"]
    profiles = plots.class_profiles(e.steps, e.predicted, classes, PROFILE_BINS)
    per_class = None
    if e.channels is not None:
        per_class = {c: e.channels[[p == c for p in e.predicted]].mean(0) for c in classes if c in e.predicted}
    plots.importance_by_class(profiles, e.channel_names, per_class, out / "importance_by_class.png")
    items = []
    for c in classes:
        for i in [k for k, p in enumerate(e.predicted) if p == c][:3]:
            items.append({"class": c, "values": e.values[i], "importance": e.steps[i],
                          "title": f"{e.id_col} {e.ids[i]}: {c} ({e.probability[i]:.2f})"})
    if items:
        plots.examples(items, e.channel_names, out / "examples.png")
    return []


def explain_summary(e: Any, classes: list[str], bins: int = 24) -> list[tuple[str, int, str, str]]:
    """Per predicted class: (class, sequences, a sparkline of mean importance over the length, top channels)."""
    from .plots import class_profiles

    ticks = "▁▂▃▄▅▆▇█"
    rows = []
    for c, prof in class_profiles(e.steps, e.predicted, classes, bins).items():
        scaled = (prof - prof.min()) / (np.ptp(prof) or 1.0)
        line = "".join(ticks[min(len(ticks) - 1, int(v * len(ticks)))] for v in scaled)
        top = ""
        if e.channels is not None:
            share = e.channels[[p == c for p in e.predicted]].mean(0)
            top = ", ".join(f"{e.channel_names[k]} {share[k]:.0%}" for k in np.argsort(-share)[:3])
        rows.append((c, sum(p == c for p in e.predicted), line, top))
    return rows
