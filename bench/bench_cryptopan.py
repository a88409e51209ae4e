"""Pseudonymized addresses per second, beside yacryptopan in the same run.

Four sets of 1M addresses:

* ``traffic v4``: a few thousand /24 networks with Zipf-like popularity, hosts inside a
  network Zipf-like too (most flows go to few hosts), as in real flow data;
* ``random v4``: uniform over the 32-bit space (no shared prefixes beyond chance);
* ``traffic v6``: /64s under a few /48s, random interface ids from a pool of hosts drawn
  with Zipf-like popularity;
* ``random v6``: uniform over the 128-bit space.

For each, netsentry is timed on the whole set in three ways: the keyed permutation on
integer arrays (``CryptoPAn.anonymize_ipv4/ipv6``), the ingest path on a polars column
of address strings with hourly epoch keys (``Pseudonymizer.pseudonymize``: parse,
permute, format; strings in, strings out as for yacryptopan), and the list API (strings
in, ``ipaddress`` objects out). yacryptopan (strings in, strings out, one address at a
time) runs on the first ``--baseline`` addresses of the same set (20k by default; it
does a few thousand per second), and its per-address throughput is compared. The
outputs of both are checked to agree on that subset.

    .venv/bin/python bench/bench_cryptopan.py            # 1M addresses per set
    .venv/bin/python bench/bench_cryptopan.py --quick    # 200k, baseline 5k
"""

from __future__ import annotations

import argparse
import importlib.metadata
import ipaddress
import secrets

import numpy as np
import polars as pl

from netsentry.privacy import CryptoPAn, Pseudonymizer
from timing import best_of

try:
    import yacryptopan
except ImportError as error:  # pragma: no cover - bench dependency
    raise SystemExit("pip install yacryptopan  (the baseline of this benchmark)") from error

HOUR_NS = 3_600 * 10**9


def zipf_choice(rng: np.random.Generator, count: int, size: int, s: float) -> np.ndarray:
    """``size`` indices into ``count`` items with popularity ~ 1 / rank**s."""
    weights = 1.0 / np.arange(1, count + 1) ** s
    return rng.choice(count, size=size, p=weights / weights.sum())


def traffic_v4(rng: np.random.Generator, n: int, networks: int = 4000) -> np.ndarray:
    nets = rng.integers(0, 2**24, networks, dtype=np.uint64) << np.uint64(8)
    hosts = np.minimum(rng.zipf(1.3, n), 254).astype(np.uint64)
    return nets[zipf_choice(rng, networks, n, 1.1)] | hosts


def traffic_v6(rng: np.random.Generator, n: int, hosts: int = 200_000) -> np.ndarray:
    sites = rng.integers(0, 2**48, 40, dtype=np.uint64) << np.uint64(16)  # /48s
    subnets = sites[rng.integers(0, 40, 3000)] | rng.integers(0, 2**16, 3000, dtype=np.uint64)
    pool = np.stack(
        [subnets[zipf_choice(rng, 3000, hosts, 1.0)], rng.integers(0, 2**64, hosts, np.uint64)],
        axis=1,
    )
    return pool[zipf_choice(rng, hosts, n, 1.05)]


def as_strings(values: np.ndarray) -> list[str]:
    if values.ndim == 1:
        return [str(ipaddress.IPv4Address(v)) for v in values.tolist()]
    return [str(ipaddress.IPv6Address((h << 64) | lo)) for h, lo in values.tolist()]


def bench_set(name: str, values: np.ndarray, baseline: int, key: bytes, master: bytes) -> None:
    n = len(values)
    strings = as_strings(values)
    column = pl.Series("src", strings)
    times = pl.Series(np.sort(np.random.default_rng(1).integers(0, HOUR_NS, n)))  # one epoch
    pan = CryptoPAn(key)
    pseudonymizer = Pseudonymizer(master, period="hour")
    ints = pan.anonymize_ipv4 if values.ndim == 1 else pan.anonymize_ipv6
    distinct = len(np.unique(values, axis=0))

    t_ints, anonymized = best_of(lambda: ints(values), 2)
    t_column, _ = best_of(lambda: pseudonymizer.pseudonymize(column, times), 2)
    t_list, _ = best_of(lambda: pan.anonymize(strings), 1)
    back = pan.deanonymize_ipv4 if values.ndim == 1 else pan.deanonymize_ipv6
    t_back, restored = best_of(lambda: back(anonymized), 1)
    assert np.array_equal(np.asarray(restored), values)

    reference = yacryptopan.CryptoPAn(key)
    subset = strings[:baseline]
    t_ref, expected = best_of(lambda: [reference.anonymize(a) for a in subset], 1)
    ours = [ipaddress.ip_address(a) for a in as_strings(np.asarray(anonymized)[:baseline])]
    assert ours == [ipaddress.ip_address(a) for a in expected], "outputs disagree"

    ref_rate = baseline / t_ref
    print(f"\n{name}: {n:,} addresses, {distinct:,} distinct")
    print(f"  yacryptopan, str -> str, first {baseline:,}   {ref_rate:>12,.0f} /s")
    for label, seconds in [
        ("netsentry, uint arrays (CryptoPAn)   ", t_ints),
        ("netsentry, polars str column (ingest)", t_column),
        ("netsentry, list of str -> ipaddress  ", t_list),
        ("netsentry, reversal on uint arrays   ", t_back),
    ]:
        rate = n / seconds
        print(f"  {label}   {rate:>12,.0f} /s   {rate / ref_rate:>6.0f}x   ({seconds:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200k addresses, baseline 5k")
    parser.add_argument("-n", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=int, default=20_000)
    args = parser.parse_args()
    n, baseline = (200_000, 5_000) if args.quick else (args.n, args.baseline)
    version = importlib.metadata.version("yacryptopan")
    rng = np.random.default_rng(20240607)
    key, master = secrets.token_bytes(32), secrets.token_bytes(32)
    print(f"Crypto-PAn addresses per second; ratios per address against yacryptopan {version}")
    print(
        f"(yacryptopan runs on the first {baseline:,} addresses of a set, IPv6: {baseline // 4:,})"
    )
    bench_set("traffic v4", traffic_v4(rng, n), baseline, key, master)
    bench_set("random v4", rng.integers(0, 2**32, n, dtype=np.uint64), baseline, key, master)
    bench_set("traffic v6", traffic_v6(rng, n), baseline // 4, key, master)
    random_v6 = rng.integers(0, 2**64, (n, 2), dtype=np.uint64)
    bench_set("random v6", random_v6, baseline // 4, key, master)


if __name__ == "__main__":
    main()
