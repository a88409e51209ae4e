"""Labeled feature matrices for evaluation: ODDS http, NSL-KDD, or any matrix.

A :class:`Dataset` is what :func:`~netsentry.evaluate.evaluate` and
:func:`~netsentry.evaluate.evaluate_stream` take besides a
:class:`~netsentry.model.Batch`: rows in stream order, optional labels (1 = attack),
optional segment labels (one model per segment, like (measurement, service) for a
Batch) and an optional training mask (where the data set defines a training part).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl

Matrix = npt.NDArray[np.float64]

NSL_KDD_SYMBOLIC = ("protocol_type", "service", "flag")


@dataclass(frozen=True)
class Dataset:
    """Rows in stream order; ``labels`` 1 = anomaly; ``train`` rows to fit on, if given."""

    name: str
    x: Matrix
    labels: npt.NDArray[np.int64] | None = None
    segments: npt.NDArray[np.str_] | None = None
    train: npt.NDArray[np.bool_] | None = None
    features: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.x)
        for name in ("labels", "segments", "train"):
            column = getattr(self, name)
            if column is not None and len(column) != n:
                raise ValueError(f"{name} has {len(column)} rows, x has {n}")

    def __len__(self) -> int:
        return len(self.x)


def load_odds_http(path: Path) -> Dataset:
    """ODDS "http" (KDD Cup 99 http subset): log duration, src_bytes, dst_bytes; label."""
    with gzip.open(path, "rt") if path.suffix == ".gz" else path.open() as text:
        data = np.loadtxt(text, delimiter=",", skiprows=1)
    return Dataset(
        name=path.name.split(".")[0],
        x=data[:, :3],
        labels=data[:, 3].astype(np.int64),
        features=("duration", "src_bytes", "dst_bytes"),
    )


def _read_nsl_kdd(path: Path) -> pl.DataFrame:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as raw:
        return pl.read_csv(raw.read(), has_header=False)


def load_nsl_kdd(train_path: Path, test_path: Path, field_names: list[str]) -> Dataset:
    """NSL-KDD as a novelty-detection set: fit on the *normal* training connections.

    Rows: the normal connections of ``train_path`` (``train`` mask), then every
    connection of ``test_path``. Features: the 38 numeric fields, ``log1p`` of all but
    the ``*_rate`` ones (counts and bytes span orders of magnitude). Segments: the
    ``service`` field (http, private, ftp_data, ...). Labels: class != ``normal``.
    """
    train, test = _read_nsl_kdd(train_path), _read_nsl_kdd(test_path)
    names = [*field_names, "class", "difficulty"]
    train.columns, test.columns = names, names
    train = train.filter(pl.col("class") == "normal")
    frame = pl.concat([train, test])
    numeric = [f for f in field_names if f not in NSL_KDD_SYMBOLIC]
    x = frame.select(numeric).to_numpy().astype(np.float64)
    heavy = np.array([not name.endswith("rate") for name in numeric])
    x[:, heavy] = np.log1p(np.maximum(x[:, heavy], 0.0))
    return Dataset(
        name=f"nsl-kdd-{test_path.name.split('.')[0]}",
        x=x,
        labels=(frame["class"] != "normal").to_numpy().astype(np.int64),
        segments=np.asarray(frame["service"].to_list(), dtype=np.str_),
        train=np.r_[np.ones(train.height, bool), np.zeros(test.height, bool)],
        features=tuple(numeric),
    )


def nsl_kdd_field_names(path: Path) -> list[str]:
    """The 41 feature names from NSL-KDD's ``Field Names.csv`` (``name,type`` lines)."""
    lines = path.read_text().splitlines()
    return [line.split(",")[0] for line in lines if line.strip()]
