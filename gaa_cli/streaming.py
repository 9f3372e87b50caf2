"""Training from Parquet larger than memory: row groups streamed through a shuffle buffer.

`gaa train` streams a Parquet file or folder (wide or list layout: one row per sequence) when --stream is
given, or when its uncompressed size (from the footers) is above --stream-above GB; otherwise it loads the
data whole, as always. A streamed run holds in memory only:

- the shuffle buffer (about BUFFER_BYTES of normalised samples) and the row group being read;
- the validation split: the rows whose hash of their row number (seeded) falls under --val-split, at most
  VAL_MAX of them (the lowest hashes: which rows are held out depends on the file and the seed, never on the
  number of processes or the order of reading);
- a bounded training sample, SAMPLE_MAX rows chosen the same way by a second hash: the ridge half is fitted
  on it, and BatchNorm's statistics and a time limit's plan come from it.

Two passes: `survey` reads every row group once for the normalisation statistics, the class list, the
lengths, the fingerprint and the two in-memory sets; then each epoch reads the row groups again in a seeded
order. Under torchrun, rank r of N reads row groups r, r + N, ... in both passes, and the surveys are
merged on every rank, so all agree on the statistics; every rank takes the same number of steps per epoch
(from the total count), starting its own row groups over if it runs out.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .data import Schema, SequenceData, load_frame
from .data.read import _folder_files
from .distributed import Dist
from .errors import DataError, GaaError, UsageError
from .tensors import Tensors, class_list, plain, to_tensors

__all__ = ["STREAM_ABOVE_GB", "VAL_MAX", "SAMPLE_MAX", "BUFFER_BYTES", "Group", "row_groups", "uncompressed_bytes", "should_stream",
           "unit_hash", "StreamedData", "Survey", "Split", "split", "normalization", "fingerprint", "Plan", "in_memory", "class_names"]

STREAM_ABOVE_GB = 4.0  # default --stream-above: Parquet data above this many GB (uncompressed) is streamed
VAL_MAX = 10_000  # held-out samples kept in memory, at most
SAMPLE_MAX = 4_096  # training samples kept in memory: the ridge's fit, BatchNorm's re-estimation, a time limit's plan
BUFFER_BYTES = 256 << 20  # the shuffle buffer's size, in bytes of normalised tensors; $GAA_STREAM_BUFFER_MB


@dataclass(frozen=True)
class Group:
    """One row group of one Parquet file: the unit a rank reads."""

    path: Path
    shown: str  # the file's name in messages
    index: int  # within its file
    first: int  # the data's row number of its first row (over a folder's files in name order)
    rows: int
    nbytes: int  # uncompressed


def row_groups(path: Path) -> list[Group]:
    """Every row group of a Parquet file, or of a folder's Parquet files in name order, from the footers alone."""
    p = Path(path)
    if p.is_dir():
        files = _folder_files(p, str(p))
    elif p.name.lower().endswith(".parquet"):
        files = [(p, str(p))]
    else:
        raise UsageError(f"{p}: --stream reads Parquet (a file or a folder of files); convert it first, e.g. with pandas: "
                         "pd.read_csv(...).to_parquet(..., row_group_size=10000)")
    groups, first = [], 0
    for f, shown in files:
        try:
            meta = pq.ParquetFile(f).metadata
        except Exception as e:
            raise DataError(f"{shown}: cannot be read as Parquet ({str(e).splitlines()[0] if str(e) else type(e).__name__}); check the file") from None
        for i in range(meta.num_row_groups):
            g = meta.row_group(i)
            groups.append(Group(f, shown, i, first, g.num_rows, g.total_byte_size))
            first += g.num_rows
    return groups


def uncompressed_bytes(path: Path) -> int:
    return sum(g.nbytes for g in row_groups(path))


def _is_parquet(path: Path) -> bool:
    p = Path(path)
    return p.is_dir() or p.name.lower().endswith(".parquet")


def should_stream(path: Path, stream: bool | None, stream_above: float) -> bool:
    """--stream forces it (Parquet only), --no-stream forbids it; else Parquet above `stream_above` GB."""
    if stream is not None:
        if stream:
            row_groups(path)  # refuses what is not Parquet, by name
        return bool(stream)
    if not (_is_parquet(path) and Path(path).exists()):
        return False
    try:
        return uncompressed_bytes(path) > stream_above * 1e9
    except GaaError:  # unreadable (empty, not Parquet...): the whole read says what is wrong, in the words of every other command
        return False


def unit_hash(rows: np.ndarray, salt: int) -> np.ndarray:
    """A well-mixed number in [0, 1) per row number (splitmix64 of row + salt): which split a row is in depends on
    the row and the seed alone."""
    z = np.asarray(rows, dtype=np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (salt + 1)) % 2**64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


@dataclass
class _Kept:
    """The rows with the lowest hashes seen so far, at most `limit` of them (raw values, trimmed to length)."""

    limit: int
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    x: list = field(default_factory=list)  # (length, C) float32 arrays
    labels: list = field(default_factory=list)

    def offer(self, h: np.ndarray, rows: np.ndarray, data: SequenceData) -> None:
        if not len(h):
            return
        take = np.argsort(h, kind="stable")[: self.limit]
        if len(self.hashes) >= self.limit and h[take[0]] >= self.hashes.max():
            return
        self.hashes = np.concatenate([self.hashes, h[take]])
        self.rows = np.concatenate([self.rows, rows[take]])
        self.x += [data.x[i, : data.lengths[i]].copy() for i in take]
        self.labels += [plain(data.labels[i]) for i in take]
        self._prune()

    def merge(self, other: _Kept) -> None:
        self.hashes = np.concatenate([self.hashes, other.hashes])
        self.rows = np.concatenate([self.rows, other.rows])
        self.x += other.x
        self.labels += other.labels
        self._prune()

    def _prune(self) -> None:
        order = np.lexsort((self.rows, self.hashes))[: self.limit]  # ties broken by row: the same set on every rank
        self.hashes, self.rows = self.hashes[order], self.rows[order]
        self.x = [self.x[i] for i in order]
        self.labels = [self.labels[i] for i in order]

    def data(self, keep: np.ndarray, length: int, schema: Schema, source: str) -> SequenceData:
        idx = np.flatnonzero(keep)
        c = self.x[0].shape[1] if self.x else 1
        x = np.zeros((len(idx), length, c), dtype=np.float32)
        lengths = np.zeros(len(idx), dtype=np.int64)
        for j, i in enumerate(idx):
            x[j, : len(self.x[i])] = self.x[i]
            lengths[j] = len(self.x[i])
        labels = np.empty(len(idx), dtype=object)
        labels[:] = [self.labels[i] for i in idx]
        return SequenceData(x, lengths, labels, None, schema, [], 0, source)


@dataclass
class Survey:
    """What the first pass learns, merged over the ranks."""

    n: int = 0
    channels: int = 0
    min_length: int = 1 << 62
    max_length: int = 0
    total_length: int = 0
    count: np.ndarray | None = None  # (C,) values seen per channel
    mean: np.ndarray | None = None  # (C,) float64
    m2: np.ndarray | None = None  # (C,) float64: sum of squared deviations from the mean
    labels: set = field(default_factory=set)
    digests: dict = field(default_factory=dict)  # row group number -> sha256 of its values, lengths and labels
    val: _Kept = field(default_factory=lambda: _Kept(VAL_MAX))
    sample: _Kept = field(default_factory=lambda: _Kept(SAMPLE_MAX + VAL_MAX))  # before the validation rows leave it
    missing: int = 0

    def add_moments(self, count: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        """Chan et al.'s pairwise update of per-channel count, mean and M2."""
        if self.count is None:
            self.count, self.mean, self.m2 = count.astype(np.float64), mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean = np.where(total > 0, self.mean + delta * count / np.maximum(total, 1), 0.0)
            self.m2 = self.m2 + m2 + delta**2 * self.count * count / np.maximum(total, 1)
        self.count = total

    def merge(self, other: Survey) -> None:
        self.n += other.n
        self.channels = max(self.channels, other.channels)
        self.min_length, self.max_length = min(self.min_length, other.min_length), max(self.max_length, other.max_length)
        self.total_length += other.total_length
        if other.count is not None:
            self.add_moments(other.count, other.mean, other.m2)
        self.labels |= other.labels
        self.digests.update(other.digests)
        self.val.merge(other.val)
        self.sample.merge(other.sample)
        self.missing += other.missing


class StreamedData:
    """A Parquet file or folder to train from without loading it whole (see the module's docstring).

    `read` holds `load`'s column-role and gap options; the schema is decided on the first row group exactly as
    `load` decides it on a whole file (or taken from `schema`, when a run resumes).
    """

    def __init__(self, path: Path, read: dict, schema: Schema | None = None) -> None:
        self.path, self.source = Path(path), str(path)
        self.groups = row_groups(path)
        if not self.groups or not sum(g.rows for g in self.groups):
            raise DataError(f"{path}: has no rows; add rows")
        self.read = {k: v for k, v in read.items() if k not in ("schema", "min_classes")}
        roles = {k: self.read.pop(k) for k in ("layout", "label", "id_col", "time_col", "features") if k in self.read}
        first = load_frame(pq.ParquetFile(self.groups[0].path).read_row_group(self.groups[0].index), name=self._name(0),
                           schema=schema, min_classes=1, **(roles if schema is None else {}), **self.read)
        self.schema = first.schema
        self.notes = [n.replace(self._name(0), self.source) for n in first.notes]
        if self.schema.layout == "long":
            raise UsageError(f"{path}: is in the long layout (one row per step); streaming needs one row per sequence: store it in the "
                             "list layout (a list column per channel) or train without --stream")

    def _name(self, k: int) -> str:
        g = self.groups[k]
        return f"{g.shown} (row group {g.index}, rows {g.first + 1}-{g.first + g.rows})"

    def read_group(self, k: int) -> tuple[SequenceData, np.ndarray]:
        """Row group `k`'s sequences (without the rows --skip-empty-rows leaves out) and their row numbers."""
        g = self.groups[k]
        table = pq.ParquetFile(g.path).read_row_group(g.index)
        data = load_frame(table, name=self._name(k), schema=Schema.from_dict(self.schema.to_dict()), min_classes=1, **self.read)
        del table
        pa.default_memory_pool().release_unused()  # else Arrow's allocator keeps every row group's buffers cached
        rows = g.first + np.arange(len(data.lengths), dtype=np.int64)
        if not data.lengths.all():
            keep = data.lengths > 0
            data, rows = data.subset(keep), rows[keep]
        return data, rows

    def mine(self, dist: Dist) -> list[int]:
        """The row groups this rank reads."""
        if len(self.groups) < dist.world:
            raise UsageError(f"{self.source}: has {len(self.groups)} row group(s) for {dist.world} processes; each process streams its own "
                             "row groups: write the file with more (pyarrow's row_group_size) or start fewer processes")
        return list(range(dist.rank, len(self.groups), dist.world))

    # --- the first pass

    def survey(self, seed: int, dist: Dist) -> Survey:
        """Read this rank's row groups once; the ranks' surveys merged, on every rank. A problem in any rank's row
        groups stops every rank, with the first such rank's message (which rank 0 prints)."""
        try:
            s, error = self._survey(seed, dist), None
        except GaaError as e:
            if not dist.active:
                raise
            s, error = None, e
        if not dist.active:
            return s
        import torch.distributed as td

        parts: list = [None] * dist.world
        td.all_gather_object(parts, (s, error))
        errors = [e for _, e in parts if e is not None]
        if errors:
            raise errors[0]
        merged = Survey()
        for part, _ in parts:  # in rank order: the same merge on every rank
            merged.merge(part)
        return merged

    def _survey(self, seed: int, dist: Dist) -> Survey:
        s = Survey()
        for k in self.mine(dist):
            data, rows = self.read_group(k)
            if not len(rows):
                continue
            n, t, c = data.x.shape
            s.n += n
            s.channels = c
            s.min_length, s.max_length = min(s.min_length, int(data.lengths.min())), max(s.max_length, int(data.lengths.max()))
            s.total_length += int(data.lengths.sum())
            valid = np.arange(t)[None, :] < data.lengths[:, None]  # (n, T)
            values = data.x[valid].astype(np.float64)  # (steps, C)
            ok = ~np.isnan(values)
            count = ok.sum(0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(count > 0, np.where(ok, values, 0).sum(0) / np.maximum(count, 1), 0.0)
            m2 = np.where(ok, values - mean, 0.0).__pow__(2).sum(0)
            s.add_moments(count, mean, m2)
            s.labels |= {plain(v) for v in set(data.labels.tolist())}
            h = hashlib.sha256(data.x.tobytes())
            h.update(data.lengths.tobytes())
            h.update(repr(list(map(plain, data.labels))).encode())
            s.digests[k] = h.hexdigest()
            s.val.offer(unit_hash(rows, seed), rows, data)
            s.sample.offer(unit_hash(rows, seed + 1), rows, data)
            s.missing += data.missing
        return s

    # --- each epoch

    def batches(self, survey_cut: float, seed: int, norm: dict, classes: list, fill: str, length: int, batch: int, epoch: int,
                dist: Dist) -> Iterator[Tensors]:
        """This rank's training batches of `batch` samples, without end: its row groups in a seeded order, again
        and again, through the shuffle buffer; rows whose validation hash is under `survey_cut` are held out."""
        mine = self.mine(dist)
        capacity = 0  # samples, once the first row group says how large one is
        gen = torch.Generator().manual_seed(hash((seed, epoch, dist.rank)) % 2**63)
        rng = np.random.default_rng([seed, epoch, dist.rank])
        held: list[Tensors] = []
        n_held = 0
        while True:
            produced = 0
            for k in rng.permutation(mine):
                data, rows = self.read_group(int(k))
                keep = unit_hash(rows, seed) >= survey_cut
                if not keep.any():
                    continue
                t = to_tensors(data.subset(keep) if not keep.all() else data, norm, classes, fill)
                held.append(_pad(t, length))
                capacity = capacity or max(2 * batch, _buffer_bytes() // (held[0].x[0].numel() * 4 + length))
                n_held += len(t)
                produced += len(t)
                if n_held >= capacity:
                    buf = _cat(held)
                    order = torch.randperm(len(buf), generator=gen)
                    out = (len(buf) - capacity // 2) // batch * batch
                    for i in range(0, out, batch):
                        yield buf.subset(order[i : i + batch])
                    rest = buf.subset(order[out:])
                    held, n_held = [rest], len(rest)
            if produced == 0:
                raise DataError(f"{self.source}: row groups {mine[:5]} hold no training rows for process {dist.rank}; "
                                "give the file more row groups or start fewer processes")
            if n_held >= batch:  # the end of a pass over this rank's row groups: what the buffer holds, shuffled
                buf = _cat(held)
                order = torch.randperm(len(buf), generator=gen)
                out = len(buf) // batch * batch
                for i in range(0, out, batch):
                    yield buf.subset(order[i : i + batch])
                rest = buf.subset(order[out:])
                held, n_held = [rest], len(rest)


@dataclass
class Split:
    """Which rows a streamed run holds out, and what it keeps in memory."""

    cut: float  # a row is held out when its validation hash is below this
    val: np.ndarray  # (len(survey.val.rows),) bool: the kept rows that are the validation split
    sample: np.ndarray  # (len(survey.sample.rows),) bool: the kept rows that are the in-memory training sample
    n_train: int


def split(s: Survey, val_split: float, seed: int) -> Split:
    """The validation rows: hash under `val_split`, at most VAL_MAX of them (the lowest hashes); the sample:
    up to SAMPLE_MAX of the training rows, by the second hash."""
    under = s.val.hashes < val_split
    if len(under) and under.all() and len(under) == s.val.limit:  # the cap binds: more rows hash under val_split
        cut = float(np.nextafter(s.val.hashes.max(), 1.0))
    else:
        cut = float(val_split)
    val = s.val.hashes < cut
    sample = unit_hash(s.sample.rows, seed) >= cut
    sample &= np.cumsum(sample) <= SAMPLE_MAX
    return Split(cut, val, sample, s.n - int(val.sum()))


def normalization(s: Survey, source: str) -> dict[str, list[float]]:
    """As tensors.fit_normalization, from the survey's moments; a channel without a value is refused."""
    if s.count is None or not (s.count > 0).all():
        empty = 0 if s.count is None else int(np.flatnonzero(s.count == 0)[0])
        raise DataError(f"{source}: channel {empty} has no values at all in any row; fill it in or leave it out with --features")
    std = np.sqrt(s.m2 / s.count)
    std = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
    return {"mean": s.mean.tolist(), "std": std.tolist()}


def fingerprint(s: Survey) -> str:
    h = hashlib.sha256()
    for k in sorted(s.digests):
        h.update(s.digests[k].encode())
    return h.hexdigest()[:16]


@dataclass
class Plan:
    """A streamed run's batches: this rank's `batch` samples a step, `steps` steps an epoch."""

    data: StreamedData
    cut: float
    seed: int
    norm: dict
    classes: list
    fill: str
    length: int
    batch: int
    steps: int
    n_train: int
    dist: Dist

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Tensors]:
        """The batches of `epoch` from step `skip` on (a resumed run reads past the steps it has taken: the same
        batches, since the order is seeded)."""
        import itertools

        stream = self.data.batches(self.cut, self.seed, self.norm, self.classes, self.fill, self.length, self.batch, epoch, self.dist)
        return itertools.islice(stream, skip, self.steps)


def _buffer_bytes() -> int:
    raw = os.environ.get("GAA_STREAM_BUFFER_MB", "").strip()
    return int(float(raw) * (1 << 20)) if raw else BUFFER_BYTES


def _pad(t: Tensors, length: int) -> Tensors:
    """(n, T, C) -> (n, length, C), zero-padded (every row group pads to its own longest sequence)."""
    n, steps, c = t.x.shape
    if steps == length:
        return t
    x = torch.zeros(n, length, c, dtype=t.x.dtype)
    mask = torch.zeros(n, length, dtype=torch.bool)
    x[:, :steps], mask[:, :steps] = t.x, t.mask
    return Tensors(x, mask, t.y)


def _cat(parts: list[Tensors]) -> Tensors:
    if len(parts) == 1:
        return parts[0]
    return Tensors(torch.cat([p.x for p in parts]), torch.cat([p.mask for p in parts]), torch.cat([p.y for p in parts]))


def in_memory(kept: _Kept, keep: np.ndarray, length: int, schema: Schema, source: str, norm: dict, classes: list, fill: str) -> Tensors:
    """A kept set's rows at `keep`, as normalised tensors."""
    return to_tensors(kept.data(keep, length, schema, source), norm, classes, fill)


def class_names(labels: set) -> list[str]:
    arr = np.empty(len(labels), dtype=object)
    arr[:] = sorted(labels, key=repr)
    return class_list(arr)
