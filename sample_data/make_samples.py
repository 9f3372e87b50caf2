"""Regenerate the sample datasets in this folder, deterministically (fixed seeds).

    python sample_data/make_samples.py          # write the files next to this script
    python sample_data/make_samples.py --check  # also print simple baseline accuracies

Two synthetic problems whose classes differ in the *order* of events, so a
model must read the time axis: the classes of each pair below are time
reversals of one another and have the same distribution of values.

- gestures: 3-axis accelerometer (m/s^2), 32-72 steps, 4 classes.
  right / left: a swipe along x, push-then-brake vs brake-then-push.
  cw / ccw: a circle; x and y rotate about one turn, clockwise vs counter-clockwise.
  Written twice with the same samples: long CSV and list-column Parquet.
- sensor: one reading per step (100 steps), 3 classes, wide CSV.
  normal: slow wave plus correlated noise.
  spike: a sudden jump that decays slowly.   drift: a slow rise that drops suddenly.

Only numpy, pandas and pyarrow are used.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
SEED = 20240917
GESTURES = ("right", "left", "cw", "ccw")  # swipe right / left, circle clockwise / counter-clockwise
SENSOR = ("normal", "spike", "drift")
GESTURE_SIZES = {"train": 220, "test": 100}
SENSOR_SIZES = {"train": 260, "test": 140}
SENSOR_LENGTH = 100


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([SEED, *key])


def _quantise(x: np.ndarray) -> np.ndarray:
    """One decimal, as a sensor would report it (and no '-0.0')."""
    return np.round(x, 1) + 0.0


def gesture(rng: np.random.Generator, cls: str) -> np.ndarray:
    """One gesture, (L, 3) accelerometer x/y/z in m/s^2."""
    length = int(rng.integers(32, 73))
    t = np.arange(length)
    # the gesture fills part of the recording, starting anywhere
    dur = int(round(length * rng.uniform(0.45, 0.85)))
    start = int(rng.integers(0, length - dur + 1))
    u = np.clip((t - start) / max(dur - 1, 1), 0.0, 1.0)  # 0..1 inside the gesture
    inside = (t >= start) & (t < start + dur)
    warp = rng.uniform(-0.6, 0.6)
    w = u + warp * u * (1 - u)  # monotone random time warp
    amp = rng.uniform(1.5, 4.0)
    acc = np.zeros((length, 3))
    if cls in ("right", "left"):
        sign = 1.0 if cls == "right" else -1.0
        push = sign * amp * np.sin(2 * np.pi * w)  # accelerate, then brake
        slant = rng.uniform(-0.5, 0.5)  # swipes are never quite horizontal
        acc[:, 0], acc[:, 1] = push, slant * push
    else:
        turn = 1.0 if cls == "ccw" else -1.0
        phase = rng.uniform(0, 2 * np.pi)
        theta = phase + turn * rng.uniform(0.8, 1.2) * 2 * np.pi * w  # about one turn
        env = np.sin(np.pi * u) ** 0.5  # ease in and out
        acc[:, 0] = amp * env * np.cos(theta)
        acc[:, 1] = amp * env * np.sin(theta) * rng.uniform(0.6, 1.0)  # an ellipse, more or less round
    acc[:, 2] = rng.uniform(0.3, 1.2) * np.sin(np.pi * u) * rng.choice([-1, 1])  # a small lift or dip
    acc *= inside[:, None] * rng.uniform(0.85, 1.15, size=3)  # per-axis gain
    if rng.random() < 0.5:  # a jolt: a short bump on one axis, anywhere
        at, width = rng.integers(0, length), rng.uniform(1.0, 2.5)
        acc[:, rng.integers(0, 3)] += rng.choice([-1, 1]) * rng.uniform(1.0, 2.5) * np.exp(-0.5 * ((t - at) / width) ** 2)
    # gravity, with the device held at a slight tilt
    roll, pitch = np.radians(rng.normal(0, 8, size=2))
    gravity = 9.81 * np.array([np.sin(pitch), -np.sin(roll) * np.cos(pitch), np.cos(roll) * np.cos(pitch)])
    tremor = rng.uniform(0.05, 0.4) * np.sin(2 * np.pi * rng.uniform(0.18, 0.3) * t + rng.uniform(0, 6.3))
    noise = rng.normal(0, rng.uniform(0.25, 0.7), size=(length, 3))
    return _quantise(acc + gravity + tremor[:, None] + noise)


def sensor(rng: np.random.Generator, cls: str) -> np.ndarray:
    """One reading per step, (SENSOR_LENGTH,)."""
    n = SENSOR_LENGTH
    t = np.arange(n)
    level = rng.uniform(18.0, 24.0)
    wave = rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * t / rng.uniform(30, 90) + rng.uniform(0, 6.3))
    # AR(1) noise: neighbouring readings are correlated
    phi, sigma = 0.7, rng.uniform(0.12, 0.25)
    eps = rng.normal(0, sigma, size=n)
    ar = np.zeros(n)
    for k in range(n):
        ar[k] = phi * (ar[k - 1] if k else 0.0) + eps[k]
    event = np.zeros(n)
    if cls != "normal":
        height = rng.uniform(1.0, 2.5)
        tau = rng.uniform(4.0, 12.0)
        if cls == "spike":  # jumps at p, then decays
            p = int(rng.integers(5, 80))
            after = t >= p
            event[after] = height * np.exp(-(t[after] - p) / tau)
        else:  # rises slowly up to p, then drops back at once
            p = int(rng.integers(20, 95))
            before = t <= p
            event[before] = height * np.exp(-(p - t[before]) / tau)
    return _quantise(level + wave + ar + event)


def _balanced(rng: np.random.Generator, classes: tuple[str, ...], n: int) -> list[str]:
    labels = [classes[i % len(classes)] for i in range(n)]
    return [labels[i] for i in rng.permutation(n)]


def make_gestures() -> dict[str, tuple[list[str], list[str], list[np.ndarray]]]:
    out, first_id = {}, 1
    for k, (split, n) in enumerate(GESTURE_SIZES.items()):
        rng = _rng(1, k)
        labels = _balanced(rng, GESTURES, n)
        seqs = [gesture(rng, c) for c in labels]
        ids = [f"g{first_id + i:03d}" for i in range(n)]
        first_id += n
        out[split] = (ids, labels, seqs)
    return out


def make_sensor() -> dict[str, tuple[list[str], np.ndarray]]:
    out = {}
    for k, (split, n) in enumerate(SENSOR_SIZES.items()):
        rng = _rng(2, k)
        labels = _balanced(rng, SENSOR, n)
        out[split] = (labels, np.stack([sensor(rng, c) for c in labels]))
    return out


def write(folder: Path) -> list[Path]:
    written = []
    for split, (ids, labels, seqs) in make_gestures().items():
        lengths = [len(s) for s in seqs]
        values = np.concatenate(seqs)
        long = pd.DataFrame(
            {
                "series_id": np.repeat(ids, lengths),
                "t": np.concatenate([np.arange(n) for n in lengths]),
                "acc_x": values[:, 0],
                "acc_y": values[:, 1],
                "acc_z": values[:, 2],
                "label": np.repeat(labels, lengths),
            }
        )
        path = folder / f"gestures_long_{split}.csv"
        long.to_csv(path, index=False, float_format="%.1f", lineterminator="\n")
        written.append(path)
        lists = pa.table(
            {
                "series_id": pa.array(ids, pa.string()),
                **{
                    name: pa.array([s[:, j].tolist() for s in seqs], pa.list_(pa.float32()))
                    for j, name in enumerate(("acc_x", "acc_y", "acc_z"))
                },
                "label": pa.array(labels, pa.string()),
            }
        )
        path = folder / f"gestures_{split}.parquet"
        pq.write_table(lists, path, compression="zstd")
        written.append(path)
    for split, (labels, x) in make_sensor().items():
        wide = pd.DataFrame(x, columns=[f"t{i:03d}" for i in range(x.shape[1])])
        wide["label"] = labels
        path = folder / f"sensor_wide_{split}.csv"
        wide.to_csv(path, index=False, float_format="%.1f", lineterminator="\n")
        written.append(path)
    return written


# ----------------------------------------------------------------------------
# Baselines (numpy only): how hard is each problem?


def _pad(seqs: list[np.ndarray]) -> np.ndarray:
    t = max(len(s) for s in seqs)
    out = np.zeros((len(seqs), t, seqs[0].shape[1]))
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def _summary(seqs: list[np.ndarray]) -> np.ndarray:
    """Statistics that ignore the order of steps."""
    rows = []
    for s in seqs:
        q = np.percentile(s, [5, 25, 50, 75, 95], axis=0)
        rows.append(np.concatenate([s.mean(0), s.std(0), s.min(0), s.max(0), q.ravel(), [len(s)]]))
    return np.array(rows)


def _ordered(seqs: list[np.ndarray]) -> np.ndarray:
    """Hand-made features that read the order of steps."""
    rows = []
    for s in seqs:
        c = s - np.median(s, axis=0)
        d = np.diff(c, axis=0)
        rel = (np.argmax(c, 0) - np.argmin(c, 0)) / len(s)  # does the high come before the low?
        spin = [np.mean(c[:-1, 0] * d[:, 1] - c[:-1, 1] * d[:, 0])] if s.shape[1] > 1 else []
        rows.append(np.concatenate([rel, d.max(0), d.min(0), spin]))
    return np.hstack([_summary(seqs), np.array(rows)])


def _logreg(xtr, ytr, xte, classes, steps=3000, lr=0.1, l2=1e-3) -> np.ndarray:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-9
    a, b = (xtr - mu) / sd, (xte - mu) / sd
    y = np.eye(len(classes))[[classes.index(c) for c in ytr]]
    w = np.zeros((a.shape[1], len(classes)))
    bias = np.zeros(len(classes))
    for _ in range(steps):
        z = a @ w + bias
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - y) / len(a)
        w -= lr * (a.T @ g + l2 * w)
        bias -= lr * g.sum(0)
    return np.array(classes)[(b @ w + bias).argmax(1)]


def _nearest(xtr, ytr, xte) -> np.ndarray:
    d = ((xte[:, None, :] - xtr[None, :, :]) ** 2).sum(-1)
    return np.asarray(ytr)[d.argmin(1)]


def baselines() -> dict[str, dict[str, float]]:
    results = {}
    g = make_gestures()
    (_, ytr, str_), (_, yte, ste) = g["train"], g["test"]
    s = make_sensor()
    (ytr2, xtr2), (yte2, xte2) = s["train"], s["test"]
    for name, ytr_, ste_tr, yte_, ste_te, classes in (
        ("gestures", ytr, str_, yte, ste, list(GESTURES)),
        ("sensor", ytr2, [r[:, None] for r in xtr2], yte2, [r[:, None] for r in xte2], list(SENSOR)),
    ):
        yte_ = np.asarray(yte_)
        majority = max(classes, key=list(ytr_).count)
        padded_tr, padded_te = _pad(ste_tr + ste_te)[: len(ste_tr)], _pad(ste_tr + ste_te)[len(ste_tr) :]
        results[name] = {
            "majority class": float(np.mean(yte_ == majority)),
            "1-NN, raw padded": float(np.mean(_nearest(padded_tr.reshape(len(ste_tr), -1), ytr_, padded_te.reshape(len(ste_te), -1)) == yte_)),
            "logreg, order-free stats": float(np.mean(_logreg(_summary(ste_tr), ytr_, _summary(ste_te), classes) == yte_)),
            "logreg, order-aware features": float(np.mean(_logreg(_ordered(ste_tr), ytr_, _ordered(ste_te), classes) == yte_)),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into")
    parser.add_argument("--check", action="store_true", help="print baseline test accuracies")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in write(args.out):
        print(f"{path.name:28s} {path.stat().st_size / 1024:7.1f} KB")
    if args.check:
        for name, accs in baselines().items():
            for how, acc in accs.items():
                print(f"{name:9s} {how:30s} {acc:.3f}")


if __name__ == "__main__":
    main()
