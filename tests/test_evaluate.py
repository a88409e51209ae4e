"""``netsentry evaluate`` logic: per-segment EM/MV report, and the prequential stream mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import HOUR
from netsentry.evaluate import (
    Dataset,
    batch_dataset,
    evaluate,
    evaluate_stream,
    load_nsl_kdd,
    load_odds_http,
    nsl_kdd_field_names,
)
from netsentry.evaluate.report import kendall_tau, markdown_table
from netsentry.evaluate.stream import windows_auc
from netsentry.model import Batch

DATA = Path(__file__).parent / "data"
PNG = b"\x89PNG\r\n\x1a\n"


def traffic(rows: int = 1200, seed: int = 0) -> Batch:
    """Two services over 50 days, each entity at its own level, with a daily rhythm."""
    rng = np.random.default_rng(seed)
    service = np.where(rng.uniform(size=rows) < 0.5, "dns", "web")
    src = rng.integers(0, 6, rows)
    time = np.sort(rng.integers(0, 50 * 24, rows)) * HOUR
    hour = (time // HOUR) % 24
    level = np.where(service == "dns", 200.0, 50_000.0) * (1 + src)
    value = level * (1.5 + np.sin(2 * np.pi * hour / 24)) * rng.lognormal(0, 0.1, rows)
    tags = {"service": service.tolist(), "src": src.astype(str).tolist()}
    return Batch.from_columns(time, ["bytes"] * rows, value, tags)


def test_batch_report_per_segment(tmp_path):
    extra = Batch.from_columns([0] * 10, ["bytes"] * 10, np.arange(10.0), {"service": ["ssh"] * 10})
    batch = Batch.concat([traffic(), extra])
    report = evaluate(batch, tmp_path, n_generated=5000)
    table = report.table
    assert sorted(set(table["segment"])) == ["bytes/dns", "bytes/web"]
    assert table.height == 6 and set(table["rank"]) == {1, 2, 3}
    assert set(report.best) == {"bytes/dns", "bytes/web"}
    for segment, best in report.best.items():
        part = table.filter(table["segment"] == segment)
        assert part.filter(part["rank"] == 1)["detector"].item() == best
    assert table["roc_auc"].is_nan().all()  # no labels
    assert report.files["curves"].read_bytes().startswith(PNG)
    text = report.files["report"].read_text()
    assert text == report.markdown and "| bytes/dns | iforest |" in text
    assert "Skipped (too few rows): bytes/ssh" in text and "curves.png" in text


def test_a_batch_is_split_in_time_and_a_dataset_at_random(tmp_path):
    batch = traffic(seed=1)
    data = batch_dataset(batch)
    assert data.x.shape == (len(batch), 4) and data.segments is not None
    report = evaluate(batch, tmp_path / "b", n_generated=2000)
    web = (data.segments == "bytes/web").sum()
    rows = report.table.filter(report.table["segment"] == "bytes/web").row(0, named=True)
    assert rows["train_rows"] == web // 2 and rows["test_rows"] == web - web // 2
    shuffled = evaluate(data, tmp_path / "d", n_generated=2000)  # a Dataset: random half
    assert shuffled.table["train_rows"].to_list() == report.table["train_rows"].to_list()
    assert not np.allclose(shuffled.table["em"].to_numpy(), report.table["em"].to_numpy())


def test_stream_against_true_labels(tmp_path):
    data = load_odds_http(DATA / "odds_http_460k_520k.csv.gz")
    report = evaluate_stream(data, tmp_path, window=10_000)
    table = {row["detector"]: row for row in report.table.iter_rows(named=True)}
    assert set(table) == {"hst", "ocsvm_online", "zscore"}
    assert all(row["roc_auc"] > 0.95 and row["windows"] >= 3 for row in table.values())
    assert report.windows is not None and report.windows["auc"].min() > 0.9
    assert report.scores["hst"].shape == (len(data),)
    assert "circular" not in report.markdown and "true labels" in report.markdown
    assert report.files["windows"].read_bytes().startswith(PNG)


def test_stream_without_labels_uses_the_zscore_verdicts_and_says_why_that_is_circular(
    tmp_path,
):
    batch = traffic(rows=3000, seed=2)
    spikes = Batch.from_columns(
        [49 * 24 * HOUR + HOUR] * 3,
        ["bytes"] * 3,
        [1e9, 2e9, 3e9],
        {"service": ["web"] * 3, "src": ["1", "2", "3"]},
    )
    report = evaluate_stream(
        Batch.concat([batch, spikes]), tmp_path, frequency_hours=24, window=1000
    )
    zscore = report.table.filter(report.table["detector"] == "zscore").row(0, named=True)
    assert zscore["roc_auc"] == 1.0  # judged against itself
    assert "**The reference is circular.**" in report.markdown
    assert "z-score verdicts (|z| > 3.0)" in report.markdown


def test_a_training_part_is_learned_not_judged(tmp_path):
    data = load_nsl_kdd(
        DATA / "nsl_kdd_train20_head6000.txt.gz",
        DATA / "nsl_kdd_test_head4000.txt.gz",
        nsl_kdd_field_names(DATA / "nsl_kdd_field_names.csv"),
    )
    assert data.train is not None and data.x.shape[1] == 38
    report = evaluate_stream(data, tmp_path, chunk=500, window=2000)
    assert f"({data.train.sum():,} of a training part, learned, not judged)" in report.markdown
    assert report.windows is not None and report.windows["end"].min() > data.train.sum()
    with pytest.raises(ValueError, match="labels has"):
        Dataset("bad", np.zeros((3, 2)), labels=np.zeros(2, dtype=np.int64))


def test_windows_auc_skips_windows_with_one_class():
    truth = np.zeros(100, dtype=bool)
    truth[[10, 80]] = True
    scores = truth.astype(float)
    assert windows_auc(truth, scores, 40) == [(40, 1.0), (100, 1.0)]
    scores[10] = np.inf  # a zero-variance z-score: ranked first, no error
    assert windows_auc(truth, scores, 40)[0] == (40, 1.0)


def test_small_report_helpers():
    assert kendall_tau(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == -1.0
    assert np.isnan(kendall_tau(np.array([1.0]), np.array([1.0])))
    import polars as pl

    text = markdown_table(pl.DataFrame({"a": [1.5, float("nan")], "b": ["x", None]}))
    assert text.splitlines()[2:] == ["| 1.5000 | x |", "|  |  |"]
