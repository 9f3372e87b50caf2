"""The data model: how a file's columns map onto sequences (`Schema`), and the sequences read (`SequenceData`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LAYOUTS", "Schema", "SequenceData"]


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
