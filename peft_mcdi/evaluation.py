"""Held-out metrics and the memorisation baselines of SPEC §4: mean of zoo, nearest training task (by condition),
and the distance of generated weights to their nearest zoo checkpoint."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

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
