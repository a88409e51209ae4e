"""Best-of-n wall time, the one timer every benchmark here uses (the machine is shared:
the best of a few runs is the least disturbed one)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def best_of(
    run: Callable[..., Any], repeat: int, prepare: Callable[[], Any] | None = None
) -> tuple[float, Any]:
    """Seconds of the fastest of ``repeat`` calls of ``run``, and the last call's result.

    With ``prepare``, each call gets ``prepare()``'s result as its argument, made
    outside the timed part (e.g. a fresh stream to read).
    """
    best, result = float("inf"), None
    for _ in range(repeat):
        args = () if prepare is None else (prepare(),)
        start = time.perf_counter()
        result = run(*args)
        best = min(best, time.perf_counter() - start)
    return best, result
