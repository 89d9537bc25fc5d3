"""Held-out metrics and the memorisation baselines of SPEC §4: mean of zoo, nearest training task (by condition),
and the distance of generated weights to their nearest zoo checkpoint."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def mean_of_zoo(final_params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average of the training tasks' final weights: {name: (n, *shape)} → {name: shape}."""
    return {name: value.mean(0) for name, value in final_params.items()}


def nearest_task_indices(train_conditions: torch.Tensor, query_conditions: torch.Tensor) -> torch.Tensor:
    """Index of the nearest training condition (L2, per-token conditions pooled to their mean) for each query."""

    def pool(c: torch.Tensor) -> torch.Tensor:
        return c.reshape(c.shape[0], -1, c.shape[-1]).mean(1).float()

    return torch.cdist(pool(query_conditions), pool(train_conditions)).argmin(dim=1)


def nearest_checkpoint_distance(vectors: torch.Tensor, zoo_vectors: torch.Tensor) -> torch.Tensor:
    """Per generated vector (B, D), the L2 distance (codec space) to the closest zoo checkpoint (M, D)."""
    return torch.cdist(vectors.float(), zoo_vectors.float()).min(dim=1).values


METRIC_SCRIPTS = Path(__file__).with_name("metric_scripts")


@functools.cache
def load_metric(name: str):
    """An ``evaluate`` metric from the scripts kept in this package (``metric_scripts/<name>``): loading by name
    fetches the script from the Hub, which offline machines cannot reach."""
    import evaluate

    folder = METRIC_SCRIPTS / name
    if not (folder / f"{name}.py").is_file():
        known = sorted(p.name for p in METRIC_SCRIPTS.iterdir() if p.is_dir())
        raise ValueError(f"no metric script {name!r} in {METRIC_SCRIPTS}; available: {known}.")
    return evaluate.load(str(folder))


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of generated answers equal to their references (surrounding whitespace ignored), via ``evaluate``."""
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions for {len(references)} references.")
    return load_metric("exact_match").compute(predictions=list(predictions), references=list(references))[
        "exact_match"
    ]


def median_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _resident_mb(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name):
            return float(line.split()[1]) / 1024
    raise KeyError(field_name)


def measured(fn: Callable[[], object]) -> tuple[object, float, float | None]:
    """``fn()``'s result, its wall seconds, and the peak resident memory above the level before it, in MB (Linux:
    the high-water mark is reset through /proc/self/clear_refs; None where that is not available). Resident memory
    is what the process really holds, but the allocator may reuse freed pages, so a small call can read 0."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _resident_mb("VmRSS:")
    except (OSError, KeyError):
        before = None
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = None if before is None else max(_resident_mb("VmHWM:") - before, 0.0)
    return result, seconds, peak
