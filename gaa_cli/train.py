"""The training recipe: setup, the loop, checkpoints, resume, interruption.

Phases: `setup` turns data and configs into tensors, a model and an optimiser;
`fit` runs epochs and writes the run directory (best and last checkpoints,
metrics.jsonl, config.toml); the caller reports the returned summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import __version__
from . import checkpoint as ckpt_io
from .config import DataShape, ModelConfig, TrainConfig, resolve, to_toml
from .data import SequenceData
from .errors import Interrupted, TrainingError, UsageError
from .files import atomic_write_text
from .model import MIN_LENGTH, SequenceClassifier

REFRESH_SAMPLES = 512  # training samples that BatchNorm's statistics are re-estimated from (see refresh_batchnorm)
SAVE_EVERY_S = 10.0  # the last checkpoint and metrics.jsonl are rewritten at most this often (and at the end)

__all__ = ["resolve_device", "Tensors", "to_tensors", "predict_proba", "fit", "TrainResult"]


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


# --- data to tensors -----------------------------------------------------------------


@dataclass
class Tensors:
    x: torch.Tensor  # (N, T, C) float32, normalised, padded steps and missing values 0
    mask: torch.Tensor  # (N, T) bool, True = real step
    y: torch.Tensor | None  # (N,) int64 class index, -1 = a label the model never saw


def fit_normalization(data: SequenceData) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation over the real (non-padded, non-missing) steps."""
    valid = np.arange(data.x.shape[1])[None, :] < data.lengths[:, None]  # (N, T)
    values = data.x[valid].astype(np.float64)  # (steps, C); float64: the variance of large float32 values overflows
    mean = np.nanmean(values, axis=0)
    std = np.nanstd(values, axis=0)
    std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
    return {"mean": np.nan_to_num(mean).tolist(), "std": std.tolist()}


def encode_labels(labels: np.ndarray, classes: list) -> np.ndarray:
    index = {repr(c): i for i, c in enumerate(classes)}
    return np.array([index.get(repr(_plain(v)), -1) for v in labels], dtype=np.int64)


def _plain(v: Any) -> Any:
    """numpy scalars -> Python values, so labels survive JSON unchanged."""
    return v.item() if isinstance(v, np.generic) else v


def to_tensors(data: SequenceData, norm: dict[str, list[float]], classes: list | None) -> Tensors:
    mean = np.asarray(norm["mean"], dtype=np.float64)
    std = np.asarray(norm["std"], dtype=np.float64)
    x = (data.x - mean) / std  # (N, T, C), in float64 so that large values do not overflow
    mask = np.arange(x.shape[1])[None, :] < data.lengths[:, None]  # (N, T)
    x = np.where(mask[:, :, None] & np.isfinite(x), x, 0.0).astype(np.float32)  # missing -> the training mean
    y = None
    if classes is not None and data.labels is not None:
        y = torch.from_numpy(encode_labels(data.labels, classes))
    return Tensors(torch.from_numpy(x), torch.from_numpy(mask), y)


@torch.no_grad()
def predict_proba(model: SequenceClassifier, t: Tensors, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, K), in input order."""
    model.eval()
    out = []
    for i in range(0, len(t.x), batch_size):
        x = t.x[i : i + batch_size].to(device)
        m = t.mask[i : i + batch_size].to(device)
        out.append(model.probabilities(x, m).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


@torch.no_grad()
def refresh_batchnorm(model: torch.nn.Module, t: Tensors, batch_size: int, device: torch.device, max_samples: int = REFRESH_SAMPLES) -> None:
    """Re-estimate every BatchNorm's running mean and variance from the training set; leaves the model in eval mode.

    During training they are an exponential average over the last few batches, and on small sets one of those
    is the short last batch (36 samples in batches of 32 end with a batch of 4), so they are noisy. Here each is
    the plain average of the statistics of equal-sized batches (of about `batch_size`, the size the layers were
    trained with) over up to `max_samples` samples, without augmentation.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    n = len(t.x)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:max_samples] if n > max_samples else torch.arange(n)
    momenta = {m: m.momentum for m in norms}
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
        m.train()  # normalise with batch statistics and record them; everything else (dropout) stays in eval mode
    try:
        for chunk in idx.tensor_split(math.ceil(len(idx) / batch_size)):  # sizes differ by at most one
            model(t.x[chunk].to(device), t.mask[chunk].to(device))
    finally:
        for m in norms:
            m.momentum = momenta[m]
            m.eval()


# --- the recipe ------------------------------------------------------------------------


def augment(x: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random per-sample, per-channel scaling plus a little jitter, on real steps only."""
    b, _, c = x.shape
    scale = 1 + 0.1 * torch.randn(b, 1, c, generator=gen)
    noise = 0.05 * torch.randn(x.shape, generator=gen)
    return (x * scale + noise) * mask[:, :, None]


def lr_at(step: int, total: int, peak: float) -> float:
    """One cycle: linear warm-up over the first 10% of steps, then cosine decay to zero."""
    warm = max(1, total // 10)
    if step < warm:
        return peak * (step + 1) / warm
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of indices into (train, validation); every class keeps a training sample."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_val = min(len(idx) - 1, int(round(fraction * len(idx))))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def data_fingerprint(data: SequenceData) -> str:
    h = hashlib.sha256(data.x.tobytes())
    h.update(data.lengths.tobytes())
    h.update(repr(list(map(_plain, data.labels))).encode())
    return h.hexdigest()[:16]


@dataclass
class TrainResult:
    run_dir: Path
    best_path: Path
    best_epoch: int
    epochs_run: int
    metrics: dict[str, float]  # the best epoch's
    seconds: float
    ridge: dict | None  # what the ridge classifier's fit chose (random_features.RandomFeatureRidge.fit), if it has one


def fit(
    data: SequenceData,
    val_data: SequenceData | None,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    run_dir: Path,
    *,
    console: Console,
    show_progress: bool = True,
    resume: ckpt_io.Checkpoint | None = None,
    sources: dict[str, str] | None = None,
) -> TrainResult:
    """Train a classifier on `data` and write the run directory. See the module docstring."""
    started = time.perf_counter()
    assert data.lengths.min() >= MIN_LENGTH, "load() refuses sequences shorter than MIN_LENGTH"
    classes = sorted({_plain(v) for v in data.labels}, key=lambda v: (str(type(v)), v))
    y_all = encode_labels(data.labels, classes)
    norm = fit_normalization(data)
    shape = DataShape(len(data.lengths), data.x.shape[1], data.x.shape[2], len(classes))
    model_cfg, train_cfg = resolve(model_cfg, train_cfg, shape)
    device = resolve_device(train_cfg.device)

    all_t = to_tensors(data, norm, classes)
    if val_data is not None:
        tr_idx, val_t = np.arange(len(y_all)), to_tensors(val_data, norm, classes)
    elif train_cfg.val_split > 0:
        tr_idx, va_idx = _split(y_all, train_cfg.val_split, train_cfg.seed)
        val_t = Tensors(all_t.x[va_idx], all_t.mask[va_idx], all_t.y[va_idx]) if len(va_idx) else None
    else:
        tr_idx, val_t = np.arange(len(y_all)), None
    tr = Tensors(all_t.x[tr_idx], all_t.mask[tr_idx], all_t.y[tr_idx])

    torch.manual_seed(train_cfg.seed)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    model = SequenceClassifier(model_cfg, shape.channels, len(classes)).to(device)
    ridge = resume.meta.get("ridge") if resume is not None else None  # a resumed run reports its ridge as first fitted
    if not (isinstance(ridge, dict) and isinstance(ridge.get("loo_accuracy"), float) and isinstance(ridge.get("samples"), int)):
        ridge = None
    if model.ridge is not None and resume is None:  # closed form, from the training split alone; the network never sees it
        with console.status("fitting the random-feature ridge classifier") if show_progress else contextlib.nullcontext():
            ridge = model.ridge.fit(tr.x, tr.mask, tr.y, torch.Generator().manual_seed(train_cfg.seed), smoothing=train_cfg.label_smoothing)
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    n = len(tr.x)
    bs = min(train_cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    total_steps = steps_per_epoch * train_cfg.epochs
    fingerprint = data_fingerprint(data)

    # everything a resumed run needs to continue exactly where this one stopped
    loop = {"epoch": 0, "step": 0, "best_epoch": 0, "best_acc": -1.0, "best_loss": math.inf, "bad_epochs": 0, "history": []}
    perm = torch.empty(0, dtype=torch.long)  # this epoch's sample order, drawn at its start
    losses: list[float] = []  # this epoch's losses so far
    if resume is not None:
        r = resume.meta["resume"]
        if r["fingerprint"] != fingerprint:
            raise UsageError(f"{run_dir}: the data differs from the data this run was trained on; resume with the same file or start a new run")
        model.load_state_dict(resume.model)
        opt.load_state_dict(_optimizer_from(resume.state, r["param_groups"]))
        for p in model.parameters():  # gaa 0.1 kept each head's (G,) parameters apart; now they are rows of (H, G)
            state = opt.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape != p.shape and value.numel() == p.numel():
                    state[key] = value.reshape(p.shape)
        loop = r["loop"]
        torch.set_rng_state(resume.state["rng.torch"])
        gen.set_state(resume.state["rng.gen"])
        if loop["step"] > 0:
            perm = resume.state["perm"].clone()
            losses = resume.state["losses"].tolist() if "losses" in resume.state else []

    meta_base = {
        "model_config": dataclasses.asdict(model_cfg),
        "train_config": dataclasses.asdict(train_cfg),
        "classes": classes,
        "schema": data.schema.to_dict(),
        "normalization": norm,
        "lengths": {"min": int(data.lengths.min()), "max": int(data.lengths.max()), "mean": float(data.lengths.mean())},
        "n_train_samples": int(n),
        "ridge": ridge,
        "sources": sources or {},
        "versions": {"gaa": __version__, "torch": torch.__version__, "format": ckpt_io.FORMAT_VERSION},
    }

    def save_last(epoch: int, step: int) -> Path:
        state = {f"optim.{k}": v for k, v in _optimizer_tensors(opt).items()}
        state["rng.torch"] = torch.get_rng_state()
        state["rng.gen"] = gen.get_state()
        if step > 0:
            state["perm"] = perm
            state["losses"] = torch.tensor(losses, dtype=torch.float64)
        loop.update(epoch=epoch, step=step)
        meta = dict(meta_base, kind="last", epoch=epoch, metrics=loop["history"][-1] if loop["history"] else {})
        meta["resume"] = {"loop": loop, "fingerprint": fingerprint, "param_groups": _param_groups(opt)}
        path = run_dir / ckpt_io.LAST
        ckpt_io.save(path, ckpt_io.Checkpoint(meta, model.state_dict(), state))
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in loop["history"]))
        return path

    def save_best(epoch: int, metrics: dict) -> None:
        meta = dict(meta_base, kind="best", epoch=epoch, metrics=metrics)
        ckpt_io.save(run_dir / ckpt_io.BEST, ckpt_io.Checkpoint(meta, model.state_dict(), {}))

    atomic_write_text(run_dir / "config.toml", to_toml(model_cfg, train_cfg))
    if resume is None:
        save_last(0, 0)

    stop = {"flag": False}
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):  # first Ctrl-C: stop at the next step boundary; second: at once
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True

    in_main = _is_main_thread()
    if in_main:
        signal.signal(signal.SIGINT, on_sigint)
    progress = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  val acc {task.fields[val]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not show_progress,
        transient=False,
    )
    saved_at = time.perf_counter()
    try:
        with progress:
            task = progress.add_task("train", total=total_steps, completed=loop["epoch"] * steps_per_epoch + loop["step"], epoch="-", loss="-", val="-")
            while loop["epoch"] < train_cfg.epochs:
                epoch = loop["epoch"]
                t0 = time.perf_counter()
                model.train()
                if loop["step"] == 0:
                    perm = torch.randperm(n, generator=gen)
                    losses = []
                for step in range(loop["step"], steps_per_epoch):
                    idx = perm[step * bs : (step + 1) * bs]
                    xb, mb, yb = tr.x[idx], tr.mask[idx], tr.y[idx]
                    if train_cfg.augment:
                        xb = augment(xb, mb, gen)
                    xb, mb, yb = xb.to(device), mb.to(device), yb.to(device)
                    for group in opt.param_groups:
                        group["lr"] = lr_at(epoch * steps_per_epoch + step, total_steps, train_cfg.lr)
                    logits = model(xb, mb)
                    loss = F.cross_entropy(logits, yb, label_smoothing=train_cfg.label_smoothing)
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"{run_dir}: the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                            f"the last good checkpoint is {run_dir / ckpt_io.LAST}. Try a lower --lr (now {train_cfg.lr}) or check the data for extreme values"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                    opt.step()
                    if not bool(torch.stack([t.isfinite().all() for t in model.state_dict().values() if t.is_floating_point()]).all()):
                        raise TrainingError(
                            f"{run_dir}: the weights became NaN or infinite at epoch {epoch + 1}, step {step + 1} (the loss was {loss.item():.3g}); "
                            f"the last good checkpoint is {run_dir / ckpt_io.LAST}. Try a lower --lr (now {train_cfg.lr}) or check the data for extreme values"
                        )
                    losses.append(loss.item())
                    progress.update(task, advance=1, epoch=f"{epoch + 1}/{train_cfg.epochs}", loss=f"{np.mean(losses):.3f}")
                    if stop["flag"]:
                        raise Interrupted(save_last(epoch, step + 1))
                metrics = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"), "lr": lr_at((epoch + 1) * steps_per_epoch - 1, total_steps, train_cfg.lr)}
                if val_t is not None or epoch + 1 == train_cfg.epochs:  # before the model is validated, or kept as the final one
                    refresh_batchnorm(model, tr, bs, device)
                if val_t is not None:
                    probs = predict_proba(model, val_t, device)
                    yv = val_t.y.numpy()
                    ok = yv >= 0
                    metrics["val_acc"] = float((probs.argmax(1) == yv).mean())
                    metrics["val_loss"] = float(-np.log(np.clip(probs[np.flatnonzero(ok), yv[ok]], 1e-15, 1)).mean()) if ok.any() else float("nan")
                metrics["seconds"] = round(time.perf_counter() - t0, 3)
                loop["history"].append(metrics)
                loop.update(epoch=epoch + 1, step=0)
                improved = val_t is None or (metrics["val_acc"], -metrics["val_loss"]) > (loop["best_acc"], -loop["best_loss"])
                if improved:
                    loop.update(best_epoch=epoch + 1, best_acc=metrics.get("val_acc", -1.0), best_loss=metrics.get("val_loss", math.inf), bad_epochs=0)
                    if val_t is not None:
                        save_best(epoch + 1, metrics)
                else:
                    loop["bad_epochs"] += 1
                if val_t is not None:
                    progress.update(task, val=f"{metrics['val_acc']:.3f}")
                done = epoch + 1 == train_cfg.epochs or (train_cfg.patience > 0 and loop["bad_epochs"] >= train_cfg.patience)
                if val_t is None and done:  # without validation the best model is the final one
                    save_best(epoch + 1, metrics)
                # short epochs would spend more time writing than training: save every few seconds
                if done or time.perf_counter() - saved_at >= SAVE_EVERY_S:
                    save_last(epoch + 1, 0)
                    saved_at = time.perf_counter()
                if done:
                    break
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
    best = next(m for m in loop["history"] if m["epoch"] == loop["best_epoch"])
    return TrainResult(run_dir, run_dir / ckpt_io.BEST, loop["best_epoch"], len(loop["history"]), best, time.perf_counter() - started, ridge)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# --- optimiser state in and out of safetensors ---------------------------------------------


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for pid, st in opt.state_dict()["state"].items():
        for key, value in st.items():
            out[f"{pid}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def _param_groups(opt: torch.optim.Optimizer) -> list[dict]:
    return [{k: v for k, v in g.items()} for g in opt.state_dict()["param_groups"]]


def _optimizer_from(state: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in state.items():
        if name.startswith("optim."):
            pid, key = name[len("optim."):].split(".", 1)
            per_param.setdefault(int(pid), {})[key] = value
    return {"state": per_param, "param_groups": groups}
