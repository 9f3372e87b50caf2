"""The pointing-game set: where the evidence for each class is known, so an importance map can be checked.

Each sequence is noise with one class pattern, L = round(0.05 T) steps long (at least 3), placed at a uniform
random start. The background is white noise (std 0.35) plus two slow sinusoids (amplitude 0.25, periods drawn
from T/2..T). The four class patterns, each of amplitude 1, are one sine period, a plateau over the middle
three fifths, a V down to -1, and two sine periods. A Gaussian bump of the same length and height, the same for
every class, goes elsewhere in the sequence without overlapping the pattern: it stands out but says nothing
about the class, so a map that only finds the salient steps points at the wrong place about half the time.

Written as list-layout Parquet (series_id, c0, label) by ucr_data.write_parquet, with the pattern's
[start, end) per sequence in pos_train.npy / pos_test.npy, in file order.

    python benchmarks/pointing_data.py OUT_DIR [--length 256] [--train 400] [--test 400]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ucr_data import write_parquet

NAME = "Pointing"  # the set's name in the benchmarks' tables


@dataclass(frozen=True)
class PointingConfig:
    length: int = 256
    n_train: int = 400
    n_test: int = 400
    classes: int = 4
    noise: float = 0.35
    seed: int = 1

    @property
    def pattern(self) -> int:
        return max(3, round(0.05 * self.length))


def _shape(kind: int, n: int) -> np.ndarray:
    """Class `kind`'s pattern over n steps; each starts and ends near 0."""
    u = np.linspace(0.0, 1.0, n)
    if kind == 0:
        return np.sin(2 * np.pi * u)
    if kind == 1:
        return ((u > 0.2) & (u < 0.8)).astype(float)
    if kind == 2:
        return -(1 - np.abs(2 * u - 1))
    return np.sin(4 * np.pi * u)


def make(cfg: PointingConfig, n: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """n sequences as (1, T) arrays, their labels ("0".."3"), and the pattern's (start, end) per sequence (n, 2)."""
    t_len, p_len = cfg.length, cfg.pattern
    t = np.arange(t_len)
    bump = np.exp(-0.5 * ((np.arange(p_len) - (p_len - 1) / 2) / (p_len / 6)) ** 2)
    labels = rng.integers(0, cfg.classes, n)
    pos = np.zeros((n, 2), dtype=np.int64)
    series = []
    for i in range(n):
        start = int(rng.integers(0, t_len - p_len + 1))
        pos[i] = start, start + p_len
        x = cfg.noise * rng.standard_normal(t_len)
        for _ in range(2):
            x += 0.25 * np.sin(2 * np.pi * t / rng.uniform(t_len / 2, t_len) + rng.uniform(0, 2 * np.pi))
        x[start : start + p_len] += _shape(int(labels[i]) % 4, p_len)
        while True:  # the distractor, anywhere the pattern is not
            d = int(rng.integers(0, t_len - p_len + 1))
            if d + p_len <= start or d >= start + p_len:
                break
        x[d : d + p_len] += bump
        series.append(x[None, :])
    return series, labels.astype(str), pos


def write(folder: Path, cfg: PointingConfig = PointingConfig()) -> tuple[Path, Path]:
    """train.parquet, test.parquet and pos_{train,test}.npy under folder; returns the two Parquet paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    for split, n in (("train", cfg.n_train), ("test", cfg.n_test)):
        series, labels, pos = make(cfg, n, rng)
        write_parquet(series, labels, folder / f"{split}.parquet")
        np.save(folder / f"pos_{split}.npy", pos)
    return folder / "train.parquet", folder / "test.parquet"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--length", type=int, default=PointingConfig.length)
    p.add_argument("--train", type=int, default=PointingConfig.n_train)
    p.add_argument("--test", type=int, default=PointingConfig.n_test)
    p.add_argument("--seed", type=int, default=PointingConfig.seed)
    a = p.parse_args()
    train, test = write(a.out, PointingConfig(a.length, a.train, a.test, seed=a.seed))
    print(f"wrote {train} and {test}")


if __name__ == "__main__":
    main()
