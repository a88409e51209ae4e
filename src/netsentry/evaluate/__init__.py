"""Evaluation of the detectors: label-free model choice and prequential ROC-AUC.

* :func:`evaluate`: rank the batch detectors (Isolation Forest, LOF, One-Class SVM) per
  segment by the Excess-Mass and Mass-Volume criteria, pick the best per segment, write
  ``report.md`` and ``curves.png`` (:mod:`netsentry.evaluate.offline`);
* :func:`evaluate_stream`: prequential ROC-AUC over time of Half-Space Trees, the online
  One-Class SVM and the z-score, against labels or the z-score's verdicts, written to
  ``stream.md`` and ``stream.png`` (:mod:`netsentry.evaluate.stream`).
"""

from netsentry.evaluate.datasets import Dataset, load_nsl_kdd, load_odds_http, nsl_kdd_field_names
from netsentry.evaluate.offline import agreement, batch_dataset, default_models, evaluate
from netsentry.evaluate.report import Report
from netsentry.evaluate.stream import evaluate_stream

__all__ = [
    "Dataset",
    "Report",
    "agreement",
    "batch_dataset",
    "default_models",
    "evaluate",
    "evaluate_stream",
    "load_nsl_kdd",
    "load_odds_http",
    "nsl_kdd_field_names",
]
