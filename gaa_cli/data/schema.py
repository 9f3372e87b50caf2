"""The data model: how a file's columns map onto sequences (`Schema`), and the sequences read (`SequenceData`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LAYOUTS", "Schema", "SequenceData", "ReadOptions"]


LAYOUTS = ("wide", "long", "list")


@dataclass
class Schema:
    """How a file's columns map onto sequences; saved in checkpoints as JSON."""

    layout: str  # "wide" | "long" | "list"
    label: str | None  # label column; None if the training data had none
    id_col: str | None  # sequence id (long: required; wide/list: optional)
    time_col: str | None  # long only: orders the steps; None means file order
    features: list[str]  # wide: columns in time order; long/list: channel columns in order

    def to_dict(self) -> dict:
        return {
            "layout": self.layout,
            "label": self.label,
            "id_col": self.id_col,
            "time_col": self.time_col,
            "features": list(self.features),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        """Rebuild a schema saved by `to_dict`; any other shape is a ValueError naming the problem."""
        if not isinstance(d, dict):
            raise ValueError(f"schema must be a JSON object, found {type(d).__name__}")
        fields = ("layout", "label", "id_col", "time_col", "features")
        unknown = sorted(str(k) for k in d if k not in fields)
        if unknown:
            raise ValueError(f"unknown schema keys: {', '.join(unknown)} (expected {', '.join(fields)})")
        missing = [k for k in fields if k not in d]
        if missing:
            raise ValueError(f"schema is missing keys: {', '.join(missing)}")
        if d["layout"] not in LAYOUTS:
            raise ValueError(f"schema key 'layout' must be one of {', '.join(LAYOUTS)}, found {d['layout']!r}")
        wrong = [k for k in ("label", "id_col", "time_col") if d[k] is not None and not isinstance(d[k], str)]
        feats = d["features"]
        if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
            wrong.append("features")
        if wrong:
            raise ValueError(
                f"schema keys with wrong types: {', '.join(wrong)} "
                "(label, id_col, time_col: string or null; features: list of strings)"
            )
        return cls(d["layout"], d["label"], d["id_col"], d["time_col"], list(feats))


@dataclass
class SequenceData:
    """Sequences read from one file, padded to a common length."""

    x: np.ndarray  # (N, T, C) float32, left-aligned, zero-padded after each length
    lengths: np.ndarray  # (N,) int64, each >= 1
    labels: np.ndarray | None  # (N,) object array of original label values, or None
    ids: np.ndarray | None  # (N,) object array of id values, or None
    schema: Schema  # how the file was read
    notes: list[str] = field(default_factory=list)  # messages for the user's stderr
    missing: int = 0  # NaN values kept in x (only with allow_missing=True)
    source: str = ""  # the file, as the user named it

    def subset(self, keep: np.ndarray) -> SequenceData:
        """The sequences at the indices (or boolean mask) `keep`, in that order."""
        pick = lambda a: None if a is None else a[keep]  # noqa: E731
        return SequenceData(self.x[keep], self.lengths[keep], pick(self.labels), pick(self.ids), self.schema,
                            self.notes, self.missing, self.source)

    def channel_names(self) -> list[str]:
        """The input column(s) behind each channel of x: a wide file's one channel spans all its columns."""
        return [", ".join(self.schema.features)] if self.schema.layout == "wide" else list(self.schema.features)


@dataclass
class ReadOptions:
    """How a command reads a data file: column roles (None = found by name, or the model's saved schema) and
    what to do with gaps. The CLI's data options, once."""

    layout: str = "auto"
    label: str | None = None  # training: "label" when None
    id_col: str | None = None
    time_col: str | None = None
    features: list[str] | None = None
    allow_missing: bool = False  # keep missing values (filled, see `fill`) instead of refusing the file
    fill: str = "mean"  # how gaps are filled: mean (the training mean), interpolate or ffill (see tensors.fill_gaps)
    skip_empty: bool = False  # rows with no values at all are left out (predict: written with empty fields)

    def roles(self) -> dict:
        """The column-role keyword arguments of `load` that were given."""
        given = {"layout": None if self.layout == "auto" else self.layout, "label": self.label, "id_col": self.id_col,
                 "time_col": self.time_col, "features": self.features}
        return {k: v for k, v in given.items() if v is not None}
