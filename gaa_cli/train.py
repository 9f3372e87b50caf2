"""The training recipe, as named phases over a typed loop state.

`fit` runs them in order:

1. `prepare`: data -> normalisation, resolved configs, tensors, the validation split;
2. `fit_ridge`: the random-feature ridge classifier, in closed form, from the training split; it is saved
   at once as the run's best model, so that a usable model exists within seconds;
3. `plan` (with a time limit only): a few timed steps size the network's schedule to end inside the budget;
4. `Trainer.train`: epochs of AdamW steps; each validated epoch (and the last one) first re-estimates
   BatchNorm's statistics (`refresh_batchnorm`), then weighs the network against the ridge on held-out
   predictions (`choose_blend`, whose grid includes the ridge alone) and keeps the best validated epoch;
   the first validated epoch always replaces the ridge-first model, whose ridge-or-blend question
   `choose_blend` has then answered on the evidence;
5. saving, all along: `last.safetensors` (resumable, every SAVE_EVERY_S seconds and at the end),
   `best.safetensors`, `metrics.jsonl`, `config.toml`.

The caller (runs.py) checks the inputs and reports the returned `TrainResult`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console

from . import __version__
from . import checkpoint as ckpt_io
from . import distributed, streaming
from .compiled import Compiler
from .config import SMALL, DataShape, ModelConfig, TrainConfig, parse_duration, resolve, to_toml
from .data import Schema, SequenceData
from .device import resolve_device, to_device
from .errors import DataError, Interrupted, Terminated, TrainingError, UsageError
from .files import atomic_write_text
from .model import MIN_LENGTH, SequenceClassifier
from .precision import resolve_precision
from .progress import TrainProgress
from .tensors import Tensors, class_list, encode_labels, fingerprint, fit_normalization, predict_proba, to_tensors

REFRESH_SAMPLES = 512  # training samples that BatchNorm's statistics are re-estimated from (see refresh_batchnorm)
SAVE_EVERY_S = 10.0  # the last checkpoint and metrics.jsonl are rewritten at most this often (and at the end); $GAA_SAVE_EVERY_S
BLENDS = [i / 10 for i in range(11)]  # the network's weights against the ridge that held-out predictions choose from
PROBE_STEPS = 3  # timed optimiser steps that plan a time-limited schedule

__all__ = ["LoopState", "Prepared", "TrainResult", "prepare", "fit_ridge", "choose_blend", "plan", "refresh_batchnorm", "Trainer", "fit"]


@dataclass
class LoopState:
    """Where a run is: everything a resumed run needs, besides tensors, to continue exactly."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished in the current epoch
    best_epoch: int = 0
    best_acc: float = -1.0
    best_loss: float = math.inf
    bad_epochs: int = 0  # epochs since the last improvement
    history: list[dict] = field(default_factory=list)  # one metrics dict per finished epoch
    finished: bool = False  # the run reached its last epoch or stopped early: nothing left to resume
    seconds: float = 0.0  # spent training so far, over every process of the run (a time limit counts it)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LoopState:
        """From `to_dict`'s output; fields added since (`finished`) take their defaults."""
        defaults = cls()
        return cls(**{f.name: d.get(f.name, getattr(defaults, f.name)) for f in dataclasses.fields(cls)})


@dataclass
class Prepared:
    """The inputs of a run, ready for the loop."""

    model_cfg: ModelConfig  # resolved: no None left
    train_cfg: TrainConfig
    shape: DataShape
    classes: list
    norm: dict[str, list[float]]
    device: torch.device
    train: Tensors  # the training split
    val: Tensors | None  # the validation split or file
    fingerprint: str  # of the training data, for --resume
    meta: dict  # what every checkpoint of the run records besides its weights
    every_epoch: bool = True  # validate (and keep the best of) every epoch; else only the last: a small set's
    # held-out part is too small to choose epochs, and only weighs the network against the ridge
    stream: streaming.Plan | None = None  # a streamed run's batches (then `train` is its bounded in-memory sample)


@dataclass
class TrainResult:
    run_dir: Path
    best_path: Path
    best_epoch: int
    epochs_run: int
    metrics: dict[str, float]  # the best epoch's
    seconds: float
    ridge: dict | None  # what the ridge classifier's fit chose (random_features.RandomFeatureRidge.fit), if it has one
    plan: dict | None = None  # with a time limit: the budget, the planned epochs and what was reached
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase of this process


# --- phase 1: prepare ----------------------------------------------------------------------


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


def _meta(model_cfg: ModelConfig, train_cfg: TrainConfig, classes: list, schema: Schema, norm: dict, lengths: dict, n_train: int,
          sources: dict[str, str]) -> dict:
    """The metadata every checkpoint of a run carries (checkpoint.py validates it on load)."""
    return {
        "model_config": dataclasses.asdict(model_cfg),
        "train_config": dataclasses.asdict(train_cfg),
        "classes": classes,
        "schema": schema.to_dict(),
        "normalization": norm,
        "lengths": lengths,
        "n_train_samples": n_train,
        "sources": sources,
        "versions": {"gaa": __version__, "torch": torch.__version__, "format": ckpt_io.FORMAT_VERSION},
    }


def prepare(
    data: SequenceData, val_data: SequenceData | None, model_cfg: ModelConfig, train_cfg: TrainConfig, sources: dict[str, str],
    fill: str = "mean",
) -> Prepared:
    """Fit the normalisation, resolve the configs from the data's shape, and split off validation data."""
    if isinstance(data, streaming.StreamedData):
        return _prepare_streamed(data, val_data, model_cfg, train_cfg, sources, fill)
    assert data.lengths.min() >= MIN_LENGTH, "load() refuses sequences shorter than MIN_LENGTH"
    classes = class_list(data.labels)
    norm = fit_normalization(data)
    shape = DataShape(len(data.lengths), data.x.shape[1], data.x.shape[2], len(classes))
    model_cfg, train_cfg = resolve(model_cfg, train_cfg, shape)
    device = resolve_device(train_cfg.device)

    y = encode_labels(data.labels, classes)
    val = None
    train_idx = np.arange(len(y))
    if val_data is not None:
        val = to_tensors(val_data, norm, classes, fill)
    elif train_cfg.val_split > 0:
        train_idx, val_idx = _split(y, train_cfg.val_split, train_cfg.seed)
        val = to_tensors(data, norm, classes, fill, rows=val_idx) if len(val_idx) else None
    # each split's tensors straight from the data: no tensor of every sample to copy them out of
    train = to_tensors(data, norm, classes, fill, rows=None if len(train_idx) == len(y) else train_idx)
    lengths = {"min": int(data.lengths.min()), "max": int(data.lengths.max()), "mean": float(data.lengths.mean())}
    meta = _meta(model_cfg, train_cfg, classes, data.schema, norm, lengths, len(train), sources)
    every_epoch = val_data is not None or shape.n_samples >= SMALL
    return Prepared(model_cfg, train_cfg, shape, classes, norm, device, train, val, fingerprint(data), meta, every_epoch)


def _prepare_streamed(
    data: streaming.StreamedData, val_data: SequenceData | None, model_cfg: ModelConfig, train_cfg: TrainConfig, sources: dict[str, str],
    fill: str,
) -> Prepared:
    """`prepare` for data streamed from Parquet (see streaming.py): a first pass over the row groups gives what
    `prepare` computes on data in memory; the validation split and a bounded training sample stay in memory."""
    dist = distributed.current()
    s = data.survey(train_cfg.seed, dist)
    classes = streaming.class_names(s.labels)
    if len(classes) < 2:
        raise DataError(f"{data.source}: label column {data.schema.label!r} has only {len(classes)} class(es); training needs at least 2 classes")
    norm = streaming.normalization(s, data.source)
    shape = DataShape(s.n, s.max_length, s.channels, len(classes))
    model_cfg, train_cfg = resolve(model_cfg, train_cfg, shape)
    train_cfg.stream = True  # recorded: a resumed run streams too
    device = resolve_device(train_cfg.device)
    cut = train_cfg.val_split if val_data is None else 0.0
    sp = streaming.split(s, cut, train_cfg.seed)
    kept = dict(length=s.max_length, schema=data.schema, source=data.source, norm=norm, classes=classes, fill=fill)
    val = to_tensors(val_data, norm, classes, fill) if val_data is not None else None
    if val_data is None and sp.val.any():
        val = streaming.in_memory(s.val, sp.val, **kept)
    train = streaming.in_memory(s.sample, sp.sample, **kept)
    per_rank = max(1, round(train_cfg.batch_size / dist.world))  # --batch-size is the global batch
    steps = math.ceil(sp.n_train / (per_rank * dist.world))
    plan_ = streaming.Plan(data, sp.cut, train_cfg.seed, norm, classes, fill, s.max_length, per_rank, steps, sp.n_train, dist)
    lengths = {"min": s.min_length, "max": s.max_length, "mean": s.total_length / max(1, s.n)}
    meta = _meta(model_cfg, train_cfg, classes, data.schema, norm, lengths, sp.n_train, dict(sources, stream="True"))
    meta["stream"] = {"row_groups": len(data.groups), "validation_hash_below": sp.cut, "ridge_sample": len(train), "processes": dist.world}
    every_epoch = val_data is not None or shape.n_samples >= SMALL
    return Prepared(model_cfg, train_cfg, shape, classes, norm, device, train, val, streaming.fingerprint(s), meta, every_epoch, plan_)


# --- phase 2: the ridge classifier -----------------------------------------------------------


def fit_ridge(model: SequenceClassifier, run: Prepared, console: Console, show_progress: bool) -> dict | None:
    """Solve the model's ridge half in closed form, from the training split alone; None if it has none."""
    if model.ridge is None:
        return None
    with console.status("fitting the random-feature ridge classifier") if show_progress else contextlib.nullcontext():
        t = run.train
        return model.ridge.fit(t.x, t.mask, t.y, torch.Generator().manual_seed(run.train_cfg.seed), smoothing=run.train_cfg.label_smoothing)


def _saved_ridge(meta: dict) -> dict | None:
    """A resumed run reports its ridge as first fitted."""
    ridge = meta.get("ridge")
    ok = isinstance(ridge, dict) and isinstance(ridge.get("loo_accuracy"), float) and isinstance(ridge.get("samples"), int)
    return ridge if ok else None


def _scores(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Accuracy and log loss on held-out data (labels -1, never seen in training, count as wrong)."""
    ok = y >= 0
    return {
        "val_acc": float((probs.argmax(1) == y).mean()),
        "val_loss": float(-np.log(np.clip(probs[np.flatnonzero(ok), y[ok]], 1e-15, 1)).mean()) if ok.any() else float("nan"),
    }


def choose_blend(net: np.ndarray, ridge: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, float]]:
    """The network's weight w in `w net + (1 - w) ridge`, from held-out probabilities of both halves (N, K) and
    labels (N,), and the scores of that blend.

    The even average (w = 0.5) stands unless another weight on the grid lowers the held-out log loss by more than
    two standard errors of the per-sample difference: on a handful of held-out samples the weight stays even,
    and a half that is clearly worse gets little or no weight (w = 0: the ridge alone; w = 1: the network alone).
    """
    rows = np.arange(len(y))

    def losses(w: float) -> np.ndarray:
        p = w * net + (1 - w) * ridge
        return -np.log(np.clip(p[rows, np.maximum(y, 0)], 1e-15, 1)) * (y >= 0)

    even = losses(0.5)
    best, gain = 0.5, 0.0
    for w in BLENDS:
        diff = even - losses(w)  # > 0 where w does better
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else np.inf
        if diff.mean() > max(2 * se, gain):
            best, gain = w, diff.mean()
    return best, _scores(best * net + (1 - best) * ridge, y)


# --- phase 3: planning a time-limited schedule ------------------------------------------------


def plan(run: Prepared, model: SequenceClassifier, steps_per_epoch: int, batch_size: int, budget_s: float) -> tuple[int, dict]:
    """Epochs of the default schedule that fit in `budget_s` seconds, timed on a copy of the model.

    PROBE_STEPS optimiser steps (after one untimed warm-up step) give the cost of a step; one validation pass
    and one BatchNorm re-estimation give the cost of an epoch's end. 10% of the budget is kept back for noise.
    Returns the epochs (at most the configured ones; 0 when not even one fits) and the plan's figures.
    """
    cfg, t, device = run.train_cfg, run.train, run.device
    amp = resolve_precision(cfg.precision, device)
    scaler = amp.grad_scaler()
    probe = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    idx = torch.arange(min(batch_size, len(t)))
    times = []
    for _ in range(PROBE_STEPS + 1):
        t0 = time.perf_counter()
        with amp.autocast():
            logits = probe(to_device(t.x[idx], device), to_device(t.mask[idx], device))
        loss = F.cross_entropy(logits.float(), to_device(t.y[idx], device))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss.item()  # waits for the GPU, as a training step does
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times[1:]))
    t0 = time.perf_counter()
    with amp.autocast():
        refresh_batchnorm(probe, t, batch_size, device)
    if run.val is not None:
        predict_proba(probe, run.val, device, part="network", precision=amp)
    end_s = time.perf_counter() - t0
    epoch_s = steps_per_epoch * step_s + (end_s if run.val is not None and run.every_epoch else 0.0)
    epochs = int(min(cfg.epochs, max(0.0, (0.9 * budget_s - end_s) // epoch_s)))
    return epochs, {"budget_s": round(budget_s, 3), "step_s": round(step_s, 5), "epoch_s": round(epoch_s, 4), "epochs": epochs,
                    "steps": epochs * steps_per_epoch, "default_epochs": cfg.epochs}


# --- phase 4: the loop -------------------------------------------------------------------------


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
            model(to_device(t.x[chunk], device), to_device(t.mask[chunk], device))  # (under the caller's autocast, if any)
    finally:
        for m in norms:
            m.momentum = momenta[m]
            m.eval()


class _StopFlag:
    """Set by the first Ctrl-C or SIGTERM; the loop stops at the next step boundary. A second one stops at once."""

    def __init__(self) -> None:
        self.set = False
        self.terminated = False  # by SIGTERM, not Ctrl-C

    def __call__(self, signum: int, frame: object) -> None:
        if self.set:
            raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()
        self.set, self.terminated = True, signum == signal.SIGTERM


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_StopFlag]:
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield flag
        return
    previous = {s: signal.signal(s, flag) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Trainer:
    """The optimiser loop of one run, with the state it saves and restores."""

    def __init__(self, run: Prepared, model: SequenceClassifier, run_dir: Path, ridge: dict | None) -> None:
        self.run, self.model, self.run_dir = run, model, run_dir
        self.dist = distributed.current()
        self.net = self.dist.wrap(model, run.device)  # what the optimiser steps run through (DDP under torchrun)
        cfg = run.train_cfg
        self.amp = resolve_precision(cfg.precision, run.device)  # autocast of every forward pass (precision.py)
        self.scaler = self.amp.grad_scaler()  # enabled for fp16 on CUDA only
        self.compiler: Compiler | None = None  # --compile, once the loop starts (fit)
        self.meta = dict(run.meta, ridge=ridge, precision=self.amp.name)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.n = len(run.train) if run.stream is None else run.stream.n_train
        self.batch_size = min(cfg.batch_size, self.n)
        self.steps_per_epoch = math.ceil(self.n / self.batch_size) if run.stream is None else run.stream.steps
        self.batches: Iterator[Tensors] | None = None  # a streamed run's batches of this epoch (this rank's part of each)
        self.loop = LoopState()
        self.perm = torch.empty(0, dtype=torch.long)  # this epoch's sample order, drawn at its start
        self.losses: list[float] = []  # this epoch's losses so far
        self.deadline: float | None = None  # time.monotonic() by which the run must have ended (--time-limit)
        self.timings: dict[str, float] = {}
        self._ridge_val: np.ndarray | None = None

    @property
    def ridge_val(self) -> np.ndarray | None:
        """The ridge's probabilities on the validation data (None without either), computed once: the ridge is
        fixed once fitted, so validation never recomputes its features."""
        model, run = self.model, self.run
        if self._ridge_val is None and model.ridge is not None and model.ridge.fitted and run.val is not None:
            with self.timed("validate"):
                self._ridge_val = self.dist.gather_rows(
                    len(run.val), lambda rows: predict_proba(model, run.val.subset(rows), run.device, part="ridge", precision=self.amp))
        return self._ridge_val

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.run.train_cfg.epochs

    @contextlib.contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0

    def restore(self, ck: ckpt_io.Checkpoint) -> None:
        """Continue from a `last` checkpoint written by `save_last` (checked by checkpoint.check_resume_state)."""
        r = ck.meta["resume"]
        if r["fingerprint"] != self.run.fingerprint:
            raise UsageError(f"{self.run_dir}: the data differs from the data this run was trained on; resume with the same file or start a new run")
        self.model.load_state_dict(ck.model)
        self.opt.load_state_dict(ckpt_io.optimizer_state(ck.state, r["param_groups"]))
        for p in self.model.parameters():  # gaa 0.1 kept each head's (G,) parameters apart; now they are rows of (H, G)
            state = self.opt.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape != p.shape and value.numel() == p.numel():
                    state[key] = value.reshape(p.shape)
        self.loop = LoopState.from_dict(r["loop"])
        if isinstance(ck.meta.get("ridge_first"), dict):
            self.meta["ridge_first"] = ck.meta["ridge_first"]
        torch.set_rng_state(ck.state["rng.torch"])
        self.gen.set_state(ck.state["rng.gen"])
        if self.loop.step > 0:
            self.perm = ck.state["perm"].clone()
            self.losses = ck.state["losses"].tolist() if "losses" in ck.state else []
        scaler = ck.state.get("amp.scaler")  # fp16: the loss scale reached, so that steps go on as they would have
        if self.scaler.is_enabled() and scaler is not None and scaler.shape == (2,) and bool(torch.isfinite(scaler).all()) and scaler[0] > 0:
            self.scaler.load_state_dict({**self.scaler.state_dict(), "scale": float(scaler[0]), "_growth_tracker": int(scaler[1])})

    # --- saving

    def save_last(self, epoch: int, step: int) -> Path:
        with self.timed("save"):
            state = {f"optim.{k}": v for k, v in ckpt_io.optimizer_tensors(self.opt).items()}
            state["rng.torch"] = torch.get_rng_state()
            state["rng.gen"] = self.gen.get_state()
            if self.scaler.is_enabled():
                scaler = self.scaler.state_dict()
                state["amp.scaler"] = torch.tensor([scaler["scale"], scaler["_growth_tracker"]], dtype=torch.float64)
            if step > 0:
                state["perm"] = self.perm
                state["losses"] = torch.tensor(self.losses, dtype=torch.float64)
            self.loop.epoch, self.loop.step = epoch, step
            history = self.loop.history
            meta = dict(self.meta, kind="last", epoch=epoch, metrics=history[-1] if history else {})
            meta["resume"] = {"loop": self.loop.to_dict(), "fingerprint": self.run.fingerprint, "param_groups": ckpt_io.param_groups(self.opt)}
            path = self.run_dir / ckpt_io.LAST
            if self.dist.is_main:  # the state is the same on every rank: one writes it
                ckpt_io.save(path, ckpt_io.Checkpoint(meta, self.model.state_dict(), state))
                atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))
        return path

    def save_best(self, epoch: int, metrics: dict) -> None:
        """The model as it is, with the blend in `metrics` (if any), as the run's best; epoch 0 = the ridge alone."""
        with self.timed("save"):
            if "blend" in metrics:
                self.model.blend.fill_(metrics["blend"])
            meta = dict(self.meta, kind="best", epoch=epoch, metrics=metrics)
            if self.dist.is_main:
                ckpt_io.save(self.run_dir / ckpt_io.BEST, ckpt_io.Checkpoint(meta, self.model.state_dict(), {}))

    def save_ridge_first(self) -> dict:
        """Ridge first: the ridge alone, saved as the best model before the network's first step; its metrics."""
        metrics = {"epoch": 0, "blend": 0.0, "ridge_loo_acc": self.meta["ridge"]["loo_accuracy"]}
        if self.ridge_val is not None:  # reported; not a bar for the network's epochs to clear (see the module's docstring)
            metrics.update(_scores(self.ridge_val, self.run.val.y.numpy()))
        self.meta["ridge_first"] = metrics  # in every later checkpoint's metadata: a resumed run reports it
        self.save_best(0, metrics)
        return metrics

    # --- the loop

    def _step(self, epoch: int, step: int) -> float:
        cfg, t, device = self.run.train_cfg, self.run.train, self.run.device
        if self.batches is not None:  # streamed: this rank's part of the batch, from its own row groups
            b = next(self.batches)
            xb, mb, yb = b.x, b.mask, b.y
        else:
            idx = self.perm[step * self.batch_size : (step + 1) * self.batch_size]
            xb, mb, yb = t.x[idx], t.mask[idx], t.y[idx]
        if cfg.augment:
            xb = augment(xb, mb, self.gen)
        if self.dist.active and self.batches is None:  # the whole batch is drawn and augmented on every rank (the same random stream), each steps on its part
            part = self.dist.shard(torch.arange(len(yb)))
            xb, mb, yb = xb[part], mb[part], yb[part]
        xb, mb, yb = to_device(xb, device), to_device(mb, device), to_device(yb, device)  # pinned, non-blocking on a GPU
        for group in self.opt.param_groups:
            group["lr"] = lr_at(epoch * self.steps_per_epoch + step, self.total_steps, cfg.lr)
        where = f"at epoch {epoch + 1}, step {step + 1}"
        advice = f"the last good checkpoint is {self.run_dir / ckpt_io.LAST}. Try a lower --lr (now {cfg.lr}) or check the data for extreme values"

        def forward_backward() -> tuple[torch.Tensor, float]:  # repeatable: see Compiler.run
            with self.amp.autocast():
                logits = self.net(xb, mb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)  # float32, outside autocast
            value = loss.item()
            if self.dist.active:  # every rank stops on a non-finite loss on any; the loss reported is the mean over ranks
                _, bad, value = self.dist.agree_step(False, loss)
                value = math.nan if bad else value
            if not math.isfinite(value):
                raise TrainingError(f"{self.run_dir}: the loss became {value} {where}; {advice}")
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            return loss, value

        _, value = self.compiler.run(forward_backward) if self.compiler is not None else forward_backward()
        self.scaler.unscale_(self.opt)  # fp16: true gradients before clipping; otherwise nothing
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.scaler.step(self.opt)  # fp16: skipped when a gradient overflowed (the scale then shrinks)
        self.scaler.update()
        if not bool(torch.stack([p.isfinite().all() for p in self.model.state_dict().values() if p.is_floating_point()]).all()):
            raise TrainingError(f"{self.run_dir}: the weights became NaN or infinite {where} (the loss was {value:.3g}); {advice}")
        return value

    def _validate(self) -> dict[str, float]:
        """The network alone on the validation data, and, with a ridge, the blend of both that validates best."""
        run = self.run
        with self.timed("validate"):
            net = self.dist.gather_rows(len(run.val), lambda rows: self._predict(run.val.subset(rows)))
        y = run.val.y.numpy()
        if self.ridge_val is None:
            return _scores(net, y)
        blend, scores = choose_blend(net, self.ridge_val, y)
        return {**scores, "blend": blend, "val_acc_network": _scores(net, y)["val_acc"], "val_acc_ridge": _scores(self.ridge_val, y)["val_acc"]}

    def _predict(self, t: Tensors) -> np.ndarray:
        """The network's probabilities on `t`, at the run's precision (compiled with --compile)."""
        step = lambda: predict_proba(self.model, t, self.run.device, part="network", precision=self.amp)  # noqa: E731
        return self.compiler.run(step) if self.compiler is not None else step()

    def _end_epoch(self, epoch: int, seconds_from: float) -> tuple[dict, bool]:
        """Re-estimate the norms, validate, keep the best; returns the epoch's metrics and whether the run is done.

        The run ends at its last epoch, when patience runs out, or when another epoch would overrun the time
        limit; its final epoch is always validated and may replace the best model.
        """
        run, loop, cfg = self.run, self.loop, self.run.train_cfg
        metrics = {"epoch": epoch + 1, "train_loss": float(np.mean(self.losses)) if self.losses else float("nan"),
                   "lr": lr_at((epoch + 1) * self.steps_per_epoch - 1, self.total_steps, cfg.lr)}
        steps_s = time.perf_counter() - seconds_from
        out_of_time = self.dist.broadcast(self.deadline is not None and time.monotonic() + steps_s > self.deadline)  # rank 0's clock decides
        final = epoch + 1 == cfg.epochs or out_of_time  # (patience can end the run too, once validated below)
        validate = run.val is not None and (run.every_epoch or final)
        if validate or final:  # before the model is validated, or kept as the final one
            # under the run's autocast: the statistics of what the layers see in use; eagerly, even with --compile
            # (a few batches, not worth a compiled variant of their own)
            with self.timed("refresh_norms"), self.amp.autocast(), torch.compiler.set_stance("force_eager"):
                refresh_batchnorm(self.model, run.train, self.batch_size, run.device)
        if validate:
            metrics.update(self._validate())
        metrics["seconds"] = round(time.perf_counter() - seconds_from, 3)
        loop.history.append(metrics)
        loop.epoch, loop.step = epoch + 1, 0
        improved = validate and (metrics["val_acc"], -metrics["val_loss"]) > (loop.best_acc, -loop.best_loss)
        if improved:
            loop.best_epoch, loop.bad_epochs = epoch + 1, 0
            loop.best_acc, loop.best_loss = metrics["val_acc"], metrics["val_loss"]
            self.save_best(epoch + 1, metrics)
        elif validate:
            loop.bad_epochs += 1
        done = final or (cfg.patience > 0 and loop.bad_epochs >= cfg.patience)
        loop.finished = done
        if run.val is None and done:  # without validation the best model is the final one
            loop.best_epoch = epoch + 1
            self.save_best(epoch + 1, metrics)
        return metrics, done

    def train(self, progress: TrainProgress, stop: _StopFlag) -> None:
        """Epochs until the budget, the time limit or patience runs out; Ctrl-C or SIGTERM saves and raises Interrupted."""
        epochs = self.run.train_cfg.epochs
        save_every = float(os.environ.get("GAA_SAVE_EVERY_S") or SAVE_EVERY_S)
        saved_at = time.perf_counter()
        while self.loop.epoch < epochs:
            epoch = self.loop.epoch
            t0 = time.perf_counter()
            self.model.train()
            if self.loop.step == 0:
                self.perm = torch.randperm(self.n, generator=self.gen) if self.run.stream is None else self.perm
                self.losses = []
            if self.run.stream is not None:
                self.batches = self.run.stream.epoch(epoch, skip=self.loop.step)
            with self.timed("steps"):
                for step in range(self.loop.step, self.steps_per_epoch):
                    self.losses.append(self._step(epoch, step))
                    progress.step(epoch + 1, epochs, float(np.mean(self.losses)))
                    if self.dist.any(stop.set) if self.dist.active else stop.set:  # every rank stops at the same step
                        self.loop.seconds += time.perf_counter() - t0
                        raise Interrupted(self.save_last(epoch, step + 1), terminated=stop.terminated)
            metrics, done = self._end_epoch(epoch, t0)
            self.loop.seconds += time.perf_counter() - t0
            progress.epoch_done(metrics.get("val_acc"), done)
            # short epochs would spend more time writing than training: save every few seconds
            if done or time.perf_counter() - saved_at >= save_every:
                self.save_last(epoch + 1, 0)
                saved_at = time.perf_counter()
            if done:
                break


# --- all phases ----------------------------------------------------------------------------------


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
    fill: str = "mean",
    replaces: list[str] = (),
    notes: Callable[[list[str]], None] = lambda lines: None,
    started: float | None = None,
) -> TrainResult:
    """Train a classifier on `data` and write the run directory. See the module docstring.

    `replaces` names a previous run's files in `run_dir` (--force): they stay until this run has written its first
    complete checkpoint, then those it did not rewrite are removed, so a run that fails before that point leaves
    the old one whole. `notes` receives what the user should know (the plan, the ridge); `started` is when the
    command began (time.monotonic()), from which a time limit counts.
    """
    started = time.monotonic() if started is None else started
    t0 = time.perf_counter()
    run = prepare(data, val_data, model_cfg, train_cfg, sources or {}, fill)
    dist = distributed.current()
    run.device = dist.device(run.device)
    cfg = run.train_cfg
    torch.manual_seed(cfg.seed)
    model = SequenceClassifier(run.model_cfg, run.shape.channels, len(run.classes)).to(run.device)
    prepare_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if resume is not None:
        ridge = _saved_ridge(resume.meta)
    else:  # under torchrun, rank 0 fits it and the others receive it
        ridge = dist.main_first(lambda: fit_ridge(model, run, console, show_progress))
        if model.ridge is not None:
            dist.share(model.ridge)
    ridge_s = time.perf_counter() - t0
    if ridge is not None and resume is None and "subsampled_from" in ridge:
        notes([f"the ridge half was fitted on a random {ridge['samples']:,} of the {ridge['subsampled_from']:,} training samples "
               "(random_features.MAX_SAMPLES); the network trains on all of them"])
    trainer = Trainer(run, model, run_dir, ridge)
    trainer.timings.update(prepare=prepare_s, ridge=ridge_s)
    result_plan = None
    if resume is not None:
        trainer.restore(resume)
    else:
        if ridge is not None:  # a complete, usable model within seconds: the ridge alone
            first = trainer.save_ridge_first()
            val = f", validation accuracy {first['val_acc']:.3f}" if "val_acc" in first else ""
            notes([f"saved the ridge half as the run's first model ({run_dir / ckpt_io.BEST}; leave-one-out accuracy "
                   f"{ridge['loo_accuracy']:.3f}{val}); the network now trains, and replaces it only if the two validate better together"])
            if run.val is None:
                model.blend.fill_(0.5)
                notes(["no held-out data to weigh the network against the ridge: they are averaged 50/50; "
                       "give --val or --val-split to weigh them by evidence"])
        if cfg.time_limit is not None:
            budget = parse_duration(cfg.time_limit)
            left = budget - (time.monotonic() - started)
            with trainer.timed("plan"):
                if left > 0:  # timed on rank 0, for every rank
                    epochs, result_plan = dist.main_first(lambda: plan(run, model, trainer.steps_per_epoch, trainer.batch_size, left))
                else:  # spent before the network could start (loading, the ridge)
                    epochs, result_plan = 0, {"budget_s": round(left, 3), "epoch_s": float("nan"), "epochs": 0, "steps": 0, "default_epochs": cfg.epochs}
            if epochs == 0 and ridge is None:
                epochs = 1  # a model must exist: one epoch, even past the limit
            if epochs == 0:
                why = "loading and the ridge used it up" if left <= 0 else f"an epoch takes about {result_plan['epoch_s']:.2f} s"
                notes([f"the {cfg.time_limit} time limit leaves no room for an epoch of the network ({why}): the ridge half alone is the model"])
            else:
                notes([f"plan: {epochs} epochs of {trainer.steps_per_epoch} steps ({epochs * trainer.steps_per_epoch} steps, about "
                       f"{epochs * result_plan['epoch_s']:.0f} s) to end inside the {cfg.time_limit} time limit "
                       f"(the default schedule is {cfg.epochs} epochs)"])
            cfg.epochs = epochs
            result_plan["limit_s"] = budget
            trainer.meta["train_config"] = dataclasses.asdict(cfg)
    if cfg.time_limit is not None:
        trainer.deadline = time.monotonic() + parse_duration(cfg.time_limit) - (time.monotonic() - started) - trainer.loop.seconds
    if resume is None:
        trainer.save_last(0, 0)
    if dist.is_main:
        atomic_write_text(run_dir / "config.toml", to_toml(run.model_cfg, cfg))
    for name in (set(replaces) if dist.is_main else set()) - {ckpt_io.LAST, ckpt_io.BEST if ridge else "", "metrics.jsonl", "config.toml"}:  # the old run's, out of date
        (run_dir / name).unlink(missing_ok=True)
    loop = trainer.loop
    if cfg.epochs > 0:
        # after plan(), whose probe runs eagerly; $GAA_COMPILE_BACKEND names another torch.compile backend (aot_eager:
        # the same tracing without generated code, for tests and debugging)
        trainer.compiler = Compiler(model, cfg.compile, run.device, notes, backend=os.environ.get("GAA_COMPILE_BACKEND") or "inductor")
        done_steps = loop.epoch * trainer.steps_per_epoch + loop.step
        with _stop_on_signals() as stop, TrainProgress(console, trainer.total_steps, done_steps, disable=not show_progress) as progress:
            trainer.train(progress, stop)
    else:
        loop.finished = True
        trainer.save_last(0, 0)
    if result_plan is not None:
        result_plan.update(epochs_run=len(loop.history), seconds=round(time.monotonic() - started, 2))
    best = next((m for m in loop.history if m["epoch"] == loop.best_epoch), None) or trainer.meta.get("ridge_first") or {}
    return TrainResult(run_dir, run_dir / ckpt_io.BEST, loop.best_epoch, len(loop.history), best, time.monotonic() - started, ridge,
                       result_plan, trainer.timings)
