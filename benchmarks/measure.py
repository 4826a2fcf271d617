"""The suite's one throughput helper and one memory helper."""

import resource
import statistics
import time
from collections.abc import Callable


def median_seconds(call: Callable[[], object], min_seconds: float = 3.0, min_calls: int = 3, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``call()`` after ``warmup`` untimed calls.

    Calls until both ``min_seconds`` and ``min_calls`` are reached; the median, so that a burst of load from other
    processes on the machine does not skew the result.
    """
    for _ in range(warmup):
        call()
    durations: list[float] = []
    while len(durations) < min_calls or sum(durations) < min_seconds:
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def peak_rss_mb() -> int:
    """Peak resident memory of this process so far, in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def interleaved_images_per_second(
    calls: dict[str, Callable[[], object]], batch_size: int, min_seconds: float = 3.0, min_rounds: int = 5
) -> dict[str, float]:
    """Images/s of each call, timed in interleaved rounds (one call of each per round), medians over rounds.

    Interleaving exposes every call to the same machine load, so their ratio holds even when the load changes; one
    untimed round warms them up.
    """
    durations: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    while len(durations[next(iter(calls))]) < min_rounds or sum(map(sum, durations.values())) < min_seconds:
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            durations[name].append(time.perf_counter() - start)
    return {name: batch_size / statistics.median(times) for name, times in durations.items()}
