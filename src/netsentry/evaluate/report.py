"""The written side of an evaluation: a Markdown table, PNG figures, one Report object."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from netsentry.detect.selection import Criteria


@dataclass(frozen=True)
class Report:
    """What an evaluation found and where it wrote it.

    ``table`` holds one row per (segment, detector) offline, one per detector in stream
    mode; ``best`` maps each segment to its chosen detector (offline only); ``files``
    names the written Markdown report and figures; ``scores`` are the prequential
    scores of each streaming detector, row by row (stream mode only).
    """

    title: str
    table: pl.DataFrame
    markdown: str
    files: dict[str, Path]
    best: dict[str, str] = field(default_factory=dict)
    windows: pl.DataFrame | None = None  # stream mode: ROC-AUC per window and detector
    scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # stream mode


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if abs(value) >= 1e4 or 0 < abs(value) < 1e-3
            else (f"{value:.{digits}f}")
        )
    return str(value)


def markdown_table(frame: pl.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (floats to ``digits`` places).

    >>> print(markdown_table(pl.DataFrame({"detector": ["iforest"], "em": [0.5]})))
    | detector | em |
    |---|---|
    | iforest | 0.5000 |
    """
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(_cell(v, digits) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([head, rule, *rows])


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    per_segment: Mapping[str, Mapping[str, Criteria]], path: Path, max_segments: int = 6
) -> Path:
    """EM(t) and MV(alpha) of every detector, one row of two panels per segment.

    Where features were drawn at random (more than 8), the first draw's curves are shown.
    ``t`` is shown times the box volume, so every draw shares one axis.
    """
    plt = _pyplot()
    shown = list(per_segment)[:max_segments]
    fig, axes = plt.subplots(
        max(1, len(shown)), 2, figsize=(10, 3.2 * max(1, len(shown))), squeeze=False
    )
    for row, segment in enumerate(shown):
        em_ax, mv_ax = axes[row]
        for name, found in per_segment[segment].items():
            curve = found.curves[0]
            em_ax.plot(curve.t * curve.volume, curve.em, label=f"{name} ({found.em:.3g})")
            mv_ax.plot(curve.alpha, curve.mv, label=f"{name} ({found.mv:.3g})")
        em_ax.set(title=f"{segment}: Excess-Mass", xlabel="t x volume", ylabel="EM(t)")
        em_ax.set_xscale("symlog", linthresh=0.1)
        mv_ax.set(title=f"{segment}: Mass-Volume", xlabel="alpha", ylabel="MV(alpha)")
        mv_ax.set_yscale("log")
        em_ax.legend(fontsize="small")
        mv_ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_windows(windows: pl.DataFrame, path: Path, reference: str) -> Path:
    """ROC-AUC per sliding window over the stream, one line per detector."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for name in windows["detector"].unique(maintain_order=True).to_list():
        part = windows.filter(pl.col("detector") == name)
        ax.plot(part["end"].to_numpy(), part["auc"].to_numpy(), marker=".", label=name)
    ax.set(xlabel="rows seen (window end)", ylabel="ROC-AUC", ylim=(0, 1.02))
    ax.set_title(f"Prequential ROC-AUC per window, against {reference}")
    ax.axhline(0.5, color="grey", linewidth=0.5)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Rank agreement of two score lists over the same items (1: same order, -1: reversed).

    >>> kendall_tau(np.array([3.0, 2.0, 1.0]), np.array([0.9, 0.8, 0.1]))
    1.0
    """
    n = len(a)
    if n < 2:
        return float("nan")
    i, j = np.triu_indices(n, k=1)
    return float(np.mean(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])))
