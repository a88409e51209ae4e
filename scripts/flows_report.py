"""What netsentry's flow signals report on the labelled Zeek captures, against the labels.

Run: ``.venv/bin/python scripts/flows_report.py [ZEEK_DIR]`` (default ../shared/data/zeek,
else the cuts in tests/data/flows); prints the tables of docs/flows.md.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import polars as pl

from netsentry.flows import Flows, FlowSignals, read_zeek

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "zeek"


def captures(base: Path) -> list[Path]:
    return sorted(p for p in base.glob("**/*") if p.is_file() and "conn" in p.name)


def main() -> int:
    base = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else (SHARED if SHARED.exists() else ROOT / "tests" / "data" / "flows")
    )
    print(
        "| capture | flows | span | labelled malicious | signals | signal sources that "
        "are malicious hosts |"
    )
    print("|---|---|---|---|---|---|")
    for path in captures(base):
        flows = Flows.concat(list(read_zeek(path)))
        frame = flows.frame
        signals = FlowSignals().update(flows)
        span_h = (frame["start"].max() - frame["start"].min()) / 3.6e12  # type: ignore[operator]
        labelled = "label" in frame.columns and frame["label"].null_count() < frame.height
        bad_hosts: set[str] = set()
        malicious = "n/a"
        if labelled:
            bad = frame.filter(pl.col("label").str.to_lowercase() == "malicious")
            malicious = f"{bad.height} ({100 * bad.height / frame.height:.0f}%)"
            bad_hosts = set(bad["src"].to_list())
        kinds = Counter(s.kind for s in signals)
        sources = {s.tags.get("src") for s in signals if s.tags.get("src")}
        hit = f"{len(sources & bad_hosts)} of {len(sources)}" if labelled and sources else "n/a"
        name = f"{path.parent.name}/{path.name}"
        summary = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) or "none"
        print(f"| {name} | {frame.height} | {span_h:.2f} h | {malicious} | {summary} | {hit} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
