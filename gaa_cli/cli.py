"""The `gaa` command line: parse, call one function, report. No logic lives here."""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional, get_args, get_type_hints

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text  # user-supplied strings (labels, paths) as plain text, never as Rich markup

from .errors import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_TERMINATED, GaaError, Interrupted, Terminated


def _click_classes(name: str) -> tuple[type, ...]:
    """Click's exception `name`, from click and from the copy newer Typer versions vendor (typer._click)."""
    found = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


_EXITS = (typer.Exit, *_click_classes("Exit"))
_ABORTS = (typer.Abort, *_click_classes("Abort"))
_USAGE_ERRORS = _click_classes("UsageError")
_CLICK_ERRORS = _click_classes("ClickException")

app = typer.Typer(
    name="gaa",
    help="Train, evaluate and apply Gaussian Adaptive Attention classifiers on sequences in CSV or Parquet files.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(soft_wrap=True)  # results
err = Console(stderr=True, soft_wrap=True, highlight=False)  # progress and notes
_state = {"debug": False, "started": time.monotonic()}  # a --time-limit counts from the command's start


class Layout(str, Enum):
    auto = "auto"
    wide = "wide"
    long = "long"
    list = "list"


class Fill(str, Enum):
    mean = "mean"
    interpolate = "interpolate"
    ffill = "ffill"


class Format(str, Enum):
    csv = "csv"
    jsonl = "jsonl"
    parquet = "parquet"


def _other_rank() -> bool:
    """A process of a torchrun group other than rank 0: it works silently; rank 0 speaks for the run (distributed.py)."""
    return os.environ.get("RANK", "0").strip() not in ("", "0") and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1")


def _say(kind: str, message: str) -> None:
    if _other_rank():
        return
    # one line, whatever the message holds: a newline in a file name must not split it
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    sys.stderr.write(f"gaa: {kind}: {message}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """Turn every failure into one line on stderr and a stable exit code."""
    try:
        yield
    except _EXITS:
        raise
    except Interrupted as e:
        _say("interrupted", f"stopped by {e.by}: saved a resumable checkpoint at {e.path}; continue with: gaa train --resume {e.path.parent}")
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        _say("interrupted", "stopped by Ctrl-C")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Terminated:
        _say("interrupted", "stopped by SIGTERM")
        raise typer.Exit(EXIT_TERMINATED) from None
    except GaaError as e:
        if _state["debug"]:
            raise
        _notes(e.notes)
        _say("error", e.message)
        raise typer.Exit(e.exit_code) from None
    except Exception as e:  # a bug or an environment failure: still one line, unless --debug
        if _state["debug"]:
            raise
        _say("error", f"unexpected {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (rerun with --debug for the traceback)")
        raise typer.Exit(EXIT_RUNTIME) from None


def _notes(notes: list[str], kind: str = "note") -> None:
    for n in notes:
        _say(kind, n)


def _provenance(loaded: Any) -> None:
    """Which checkpoint a command uses, and a warning when it is not the best of a finished run."""
    _notes(loaded.notes)
    _notes(loaded.warnings, "warning")


def _version(value: bool) -> None:
    if value:
        from . import __version__  # loads torch: only when asked, so that --help stays quick

        out.print(f"gaa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
) -> None:
    """Exit codes: 0 success, 2 bad usage or bad input, 1 failure at run time, 130 interrupted."""
    _state["debug"] = debug


# --- gaa train -------------------------------------------------------------------------------------

DataArg = Annotated[Path, typer.Argument(help="CSV (.csv, .csv.gz) or Parquet file, or a folder of Parquet files.", show_default=False)]
AllowMissing = Annotated[bool, typer.Option("--allow-missing", help="Fill missing values (with the training mean, or as --fill says) instead of refusing the file.", rich_help_panel="Data")]
FillOption = Annotated[Optional[Fill], typer.Option("--fill", help="How to fill missing values; implies --allow-missing. mean: the training mean; interpolate: a straight line between the nearest values; ffill: the last value before the gap.", rich_help_panel="Data", show_default=False)]
SkipEmpty = Annotated[bool, typer.Option("--skip-empty-rows", help="Leave out rows with no values at all (a null list, or a wide row of empty cells) instead of refusing the file; predict writes them with empty prediction fields.", rich_help_panel="Data")]


def _read_options(layout: Optional[Layout], id_col: Optional[str], time_col: Optional[str], features: Optional[str],
                  allow_missing: bool, fill: Optional[Fill], skip_empty: bool, label: Optional[str] = None) -> Any:
    from .data import ReadOptions  # pandas and pyarrow load here, not for --help

    return ReadOptions(layout=layout.value if layout else "auto", label=label, id_col=id_col, time_col=time_col,
                       features=_features(features), allow_missing=allow_missing or fill is not None,
                       fill=fill.value if fill else "mean", skip_empty=skip_empty)


def _features(value: Optional[str]) -> Optional[list[str]]:
    return [c.strip() for c in value.split(",") if c.strip()] if value else None


def _config_options() -> list[inspect.Parameter]:
    """One `gaa train` option per field of ModelConfig and TrainConfig that declares one (config.option)."""
    from .config import ModelConfig, TrainConfig  # plain dataclasses: no torch

    params = []
    for cls in (TrainConfig, ModelConfig):
        hints = get_type_hints(cls)
        for f in fields(cls):
            if "help" not in f.metadata:
                continue
            kind = next(t for t in (get_args(hints[f.name]) or (hints[f.name],)) if t is not type(None))
            if f.metadata["choices"]:
                kind = Enum(f.name, {c: c for c in f.metadata["choices"]}, type=str)
            decls = [f.metadata["flag"]] if f.metadata["flag"] else []
            opt = typer.Option(*decls, help=f.metadata["help"], rich_help_panel=f.metadata["panel"], show_default=False)
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[kind], opt]))
    return params


def _with_config_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` the config options; it receives the values given as one dict, `options` (None = not given)."""
    extra = _config_options()
    names = {p.name for p in extra}

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        options = {k: v.value if isinstance(v, Enum) else v for k, v in kwargs.items() if k in names}
        command(**{k: v for k, v in kwargs.items() if k not in names}, options=options)

    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "options"]
    wrapper.__signature__ = inspect.Signature(own + extra)  # what Typer reads the options from
    return wrapper


@app.command(epilog="Examples:\n\n  gaa train sample_data/gestures_train.parquet\n\n  gaa train data.csv --label target --epochs 50 --out runs/first\n\n  gaa train --resume runs/first")
@_with_config_options
def train(
    data: Annotated[Optional[Path], typer.Argument(help="Training data: CSV (.csv, .csv.gz), Parquet, or a folder of Parquet files. Optional with --resume.", show_default=False)] = None,
    val: Annotated[Optional[Path], typer.Option(help="Validation file (same layout) used to pick the best checkpoint.", rich_help_panel="Data")] = None,
    layout: Annotated[Layout, typer.Option(help="Data layout; auto picks it from the file's columns.", rich_help_panel="Data")] = Layout.auto,
    label: Annotated[str, typer.Option(help="Label column.", rich_help_panel="Data")] = "label",
    id_col: Annotated[Optional[str], typer.Option(help="Sequence id column (long and list layouts).", rich_help_panel="Data")] = None,
    time_col: Annotated[Optional[str], typer.Option(help="Ordering column (long layout).", rich_help_panel="Data")] = None,
    features: Annotated[Optional[str], typer.Option(help="Comma-separated columns to use \\[default: every numeric column that is not label, id or time].", rich_help_panel="Data")] = None,
    allow_missing: AllowMissing = False,
    fill: FillOption = None,
    skip_empty_rows: SkipEmpty = False,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run directory \\[default: a new folder under runs/].", rich_help_panel="Run")] = None,
    force: Annotated[bool, typer.Option(help="Reuse a non-empty run directory, replacing its checkpoints.", rich_help_panel="Run")] = False,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory from its last checkpoint.", rich_help_panel="Run")] = None,
    config: Annotated[Optional[Path], typer.Option(help="TOML file with \\[model] and \\[train] tables; options given here win.", rich_help_panel="Run")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel="Run")] = False,
    options: Optional[dict] = None,
) -> None:
    """Train a classifier and write checkpoints, metrics and the resolved config to a run directory."""
    with _reported():
        from .config import ModelConfig, TrainConfig, options_of
        from .runs import TrainRequest, run_training  # torch loads here, where Ctrl-C is handled

        request = TrainRequest(
            data=data, val=val, out=out_dir, force=force, resume=resume, config=config,
            read=_read_options(layout, id_col, time_col, features, allow_missing, fill, skip_empty_rows, label=label),
            model_options=options_of(ModelConfig, options), train_options=options_of(TrainConfig, options), started=_state["started"],
        )
        result = run_training(request, console=err, show_progress=not quiet, notes=_notes)
        if _other_rank():
            return
        table = Table(title="gaa train", show_header=False, title_justify="left")
        table.add_row("run directory", Text(str(result.run_dir)))
        table.add_row("best checkpoint", Text(str(result.best_path)))
        best = f"{result.best_epoch} of {result.epochs_run}" if result.best_epoch else "the ridge half alone (no epoch of the network validated better)"
        table.add_row("best epoch", best)
        for k in ("val_acc", "val_loss", "train_loss"):
            if k in result.metrics:
                table.add_row(k.replace("_", " "), f"{result.metrics[k]:.4f}")
        if "blend" in result.metrics:
            table.add_row("network weight", f"{result.metrics['blend']:.1f} (ridge {1 - result.metrics['blend']:.1f}; chosen on held-out predictions)")
        if result.ridge:
            table.add_row("ridge leave-one-out acc", f"{result.ridge['loo_accuracy']:.4f} ({result.ridge['samples']} samples)")
        if result.plan:
            p = result.plan
            table.add_row("time limit", f"{p['limit_s']:.0f} s: planned {p['epochs']} of {p['default_epochs']} epochs, ran {p['epochs_run']}")
        table.add_row("time", f"{result.seconds:.1f} s")
        out.print(table)
        err.print(f"next: gaa evaluate {result.run_dir} TEST_FILE", markup=False)


# --- gaa evaluate ----------------------------------------------------------------------------------

CheckpointArg = Annotated[Path, typer.Argument(help="A run directory (its best checkpoint) or a .safetensors checkpoint.", show_default=False)]
LayoutOverride = Annotated[Optional[Layout], typer.Option("--layout", help="Read DATA in this layout instead of the training data's.", rich_help_panel="Data")]
IdOverride = Annotated[Optional[str], typer.Option("--id-col", help="Id column, if it differs from the training data's.", rich_help_panel="Data")]
TimeOverride = Annotated[Optional[str], typer.Option("--time-col", help="Ordering column, if it differs from the training data's.", rich_help_panel="Data")]
FeaturesOverride = Annotated[Optional[str], typer.Option("--features", help="Comma-separated columns to read in place of the training data's feature columns, in the same order.", rich_help_panel="Data")]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]


@app.command(epilog="Examples:\n\n  gaa evaluate runs/first sample_data/gestures_test.parquet\n\n  gaa evaluate runs/first/best.safetensors test.csv --json > metrics.json")
def evaluate(
    checkpoint: CheckpointArg,
    data: DataArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of tables.")] = False,
    plot: Annotated[Optional[Path], typer.Option(help="Also draw the normalised confusion matrix (with counts) and the F1 of each class into this PNG file.")] = None,
    allow_unseen_labels: Annotated[bool, typer.Option(help="Count labels the model never saw as wrong instead of refusing the file.")] = False,
    allow_missing: AllowMissing = False,
    fill: FillOption = None,
    skip_empty_rows: SkipEmpty = False,
    device: DeviceOption = "auto",
    label: Annotated[Optional[str], typer.Option(help="Label column, if it differs from the training data's.", rich_help_panel="Data")] = None,
    layout: LayoutOverride = None,
    id_col: IdOverride = None,
    time_col: TimeOverride = None,
    features: FeaturesOverride = None,
) -> None:
    """Score a checkpoint on labelled data: accuracy, balanced accuracy, macro F1, log loss, per-class table, confusion matrix."""
    with _reported():
        from .inference import evaluate as run_evaluate
        from .inference import load_model
        from .runs import check_output

        loaded = load_model(checkpoint, device)
        _provenance(loaded)
        opts = _read_options(layout, id_col, time_col, features, allow_missing, fill, skip_empty_rows, label=label)
        if plot is not None:
            check_output("png", plot, force=False, option="--plot")
        report, notes = run_evaluate(loaded, data, opts, allow_unseen=allow_unseen_labels)
        _notes(notes)
        if plot is not None:
            from . import plots

            try:
                plots.confusion(report, plot)
            except GaaError as e:  # no matplotlib: the tables still come
                _notes([e.message])
        if as_json:  # strict JSON: an undefined metric (no known labels) is null, not NaN
            out.file.write(json.dumps(_finite_or_null(report), allow_nan=False) + "\n")
            return
        _print_report(report)


def _finite_or_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def _print_report(r: dict) -> None:
    summary = Table(title=Text(f"{r['data']} ({r['n_samples']} samples)"), show_header=False, title_justify="left")
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss"):
        summary.add_row(k.replace("_", " "), f"{r[k]:.4f}")
    out.print(summary)
    per = Table("label", "precision", "recall", "f1", "support", title="per class", title_justify="left")
    for row in r["per_class"]:
        per.add_row(Text(str(row["label"])), f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    out.print(per)
    cm = Table("true \\ predicted", title="confusion matrix", title_justify="left")
    for lab in r["labels"]:
        cm.add_column(Text(str(lab)))
    for lab, row in zip(r["labels"], r["confusion_matrix"]):
        cm.add_row(Text(str(lab)), *map(str, row))
    out.print(cm)


# --- gaa predict -----------------------------------------------------------------------------------


@app.command(epilog="Examples:\n\n  gaa predict runs/first new.parquet > predictions.csv\n\n  gaa predict runs/first new.csv --format jsonl\n\n  gaa predict runs/first new.csv --format parquet --output predictions.parquet")
def predict(
    checkpoint: CheckpointArg,
    data: DataArg,
    fmt: Annotated[Format, typer.Option("--format", help="Output format; parquet needs --output.")] = Format.csv,
    output: Annotated[Optional[Path], typer.Option(help="Write here instead of stdout.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite --output if it exists.")] = False,
    allow_missing: AllowMissing = False,
    fill: FillOption = None,
    skip_empty_rows: SkipEmpty = False,
    device: DeviceOption = "auto",
    layout: LayoutOverride = None,
    id_col: IdOverride = None,
    time_col: TimeOverride = None,
    features: FeaturesOverride = None,
) -> None:
    """Predict a label and class probabilities for every sample, in input order. Needs no label column."""
    with _reported():
        from .inference import load_model
        from .inference import predict_frames as run_predict
        from .runs import check_output, write_predictions

        check_output(fmt.value, output, force)
        loaded = load_model(checkpoint, device)
        _provenance(loaded)
        frames, notes = run_predict(loaded, data, _read_options(layout, id_col, time_col, features, allow_missing, fill, skip_empty_rows))
        write_predictions(frames, fmt.value, output, sys.stdout)  # chunk by chunk, as the data is read
        _notes(notes)


# --- gaa explain -----------------------------------------------------------------------------------


@app.command(epilog="Examples:\n\n  gaa explain runs/first sample_data/gestures_test.parquet\n\n  gaa explain runs/first new.parquet --out explained/")
def explain(
    checkpoint: CheckpointArg,
    data: DataArg,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Write importance.parquet, channels.parquet, predictions.parquet and PNG figures here \\[default: a summary on stdout].")] = None,
    force: Annotated[bool, typer.Option(help="Replace the files of an earlier explanation in --out.")] = False,
    allow_missing: AllowMissing = False,
    fill: FillOption = None,
    skip_empty_rows: SkipEmpty = False,
    device: DeviceOption = "auto",
    layout: LayoutOverride = None,
    id_col: IdOverride = None,
    time_col: TimeOverride = None,
    features: FeaturesOverride = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Show what each prediction depends on: an importance for every input step (and every channel), from the network's exact step-by-step split of its logits."""
    with _reported():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from .inference import explain as run_explain
        from .inference import load_model
        from .runs import check_explain_dir, explain_summary, write_explanation

        if out_dir is not None:
            check_explain_dir(out_dir, force)
        loaded = load_model(checkpoint, device)
        _provenance(loaded)
        opts = _read_options(layout, id_col, time_col, features, allow_missing, fill, skip_empty_rows)
        with Progress(TextColumn("explaining"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                      disable=quiet or not err.is_terminal, transient=True) as bar:
            task = bar.add_task("explain", total=None)
            result, notes = run_explain(loaded, data, opts, progress=lambda n: bar.update(task, advance=n))
        _notes(notes)
        classes = loaded.meta["classes"]
        if out_dir is not None:
            _notes(write_explanation(result, out_dir, classes))
            err.print(f"wrote {len(result.steps)} explanations to {out_dir}", markup=False)
            return
        table = Table("class", "sequences", "where in time the model looks (start to end)", *(["top channels"] if result.channels is not None else []),
                      title=Text(f"gaa explain: {data} ({len(result.steps)} sequences)"), title_justify="left")
        for row in explain_summary(result, classes):
            table.add_row(Text(row[0]), str(row[1]), row[2], *([Text(row[3])] if result.channels is not None else []))
        out.print(table)


# --- gaa info --------------------------------------------------------------------------------------


@app.command(epilog="Examples:\n\n  gaa info runs/first\n\n  gaa info runs/first/best.safetensors --json")
def info(
    checkpoint: CheckpointArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout instead of a table.")] = False,
) -> None:
    """Show what a checkpoint holds: classes, input schema, model and training config, parameters, metrics, versions, size."""
    with _reported():
        from .inference import info as read_info

        d = read_info(checkpoint)
        if as_json:
            out.file.write(json.dumps(_finite_or_null(d)) + "\n")
            return
        s = d["schema"]
        rows = [
            ("checkpoint", f"{d['checkpoint']} ({d['size_bytes'] / 1e6:.2f} MB)"),
            ("status", d["status"].split(": ", 1)[-1]),
            ("classes", f"{len(d['classes'])}: {', '.join(d['classes'][:12])}{', ...' if len(d['classes']) > 12 else ''}"),
            ("layout", f"{s['layout']}; label {s['label']!r}, id {s['id_col']!r}, time {s['time_col']!r}"),
            ("input columns", f"{len(s['features'])}: {', '.join(s['features'][:8])}{', ...' if len(s['features']) > 8 else ''}"),
            ("lengths", f"{d['lengths']['min']} to {d['lengths']['max']} steps (mean {d['lengths'].get('mean', float('nan')):.1f}), {d['n_train_samples']} training samples"),
            ("parameters", f"{d['parameters']['network']:,} in the network; {d['parameters']['ridge_features']:,} ridge features"),
            ("network weight", f"{d['network_weight']:.1f} (the ridge {1 - d['network_weight']:.1f})"),
            ("model", " ".join(f"{k}={v}" for k, v in d["model_config"].items())),
            ("training", " ".join(f"{k}={v}" for k, v in d["train_config"].items())),
            ("metrics", " ".join(f"{k}={v:.4g}" for k, v in d["metrics"].items()) or "-"),
            ("versions", " ".join(f"{k} {v}" for k, v in (d["versions"] or {}).items())),
        ]
        table = Table(title="gaa info", show_header=False, title_justify="left")
        for k, v in rows:
            table.add_row(k, Text(v))
        out.print(table)


def _given_value(e: Exception, args: list[str]) -> Optional[str]:
    """The value the user gave the option a click error is about, if the message does not show it."""
    found = None
    for opt in getattr(getattr(e, "param", None), "opts", None) or []:
        if not opt.startswith("-"):
            continue
        for i, a in enumerate(args):  # the last one given is the one used
            if a == opt and i + 1 < len(args):
                found = args[i + 1]
            elif a.startswith(opt + "="):
                found = a[len(opt) + 1 :]
    return found


def main() -> None:
    """Entry point of `gaa` and `python -m gaa_cli`: one-line usage errors, stable exit codes."""
    try:
        rc = app(prog_name="gaa", standalone_mode=False)
    except _USAGE_ERRORS as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `gaa`: the help (Typer has printed it already)
            if e.format_message().strip():
                sys.stdout.write(e.format_message() + "\n")
            sys.exit(e.exit_code)
        message = " ".join(e.format_message().split())
        value = _given_value(e, sys.argv[1:])
        if value is not None and repr(value) not in message:
            message += f" (got {value!r})"
        hint = f" (see: {e.ctx.command_path} --help)" if getattr(e, "ctx", None) is not None else ""
        _say("error", f"{message}{hint}")
        sys.exit(e.exit_code)
    except _ABORTS:
        _say("interrupted", "stopped by Ctrl-C")
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        _say("interrupted", "stopped by SIGTERM")
        sys.exit(EXIT_TERMINATED)
    except _EXITS as e:
        sys.exit(e.exit_code)
    except _CLICK_ERRORS as e:
        _say("error", " ".join(e.format_message().split()))
        sys.exit(e.exit_code)
    except GaaError as e:  # only with --debug: the traceback, then the same exit code as without
        traceback.print_exc()
        sys.exit(e.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)
