"""The generator's training data: every zoo task's local targets in codec space, stacked with its condition."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from peft_mcdi.generator.codec import WeightCodec
from peft_mcdi.generator.schedulers import local_target_epochs
from peft_mcdi.zoo.store import ZooStore


@dataclass
class ZooTensors:
    """targets (n_tasks, k, D) in codec space (θ⁽ᵏ⁾ = final weights last), conditions (n_tasks, C) or (n, N, C)."""

    task_ids: list[str]
    targets: torch.Tensor
    conditions: torch.Tensor

    def __len__(self) -> int:
        return len(self.task_ids)


def load_raw_targets(
    store: ZooStore, task_ids: Sequence[str], num_segments: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Local targets θ⁽¹⁾…θ⁽ᵏ⁾ of each task as {name: (n, k, *shape)}, plus conditions (n, ...)."""
    per_task, conditions = [], []
    for task_id in task_ids:
        trajectory = store.read(task_id)
        num_epochs = trajectory.metadata.get("num_epochs", max(trajectory.epochs))
        per_task.append(trajectory.at_epochs(local_target_epochs(num_epochs, num_segments)))
        conditions.append(trajectory.condition)
    names = per_task[0].keys()
    return {n: torch.stack([p[n] for p in per_task]) for n in names}, torch.stack(conditions)


def load_zoo_tensors(store: ZooStore, task_ids: Sequence[str], codec: WeightCodec, num_segments: int) -> ZooTensors:
    """Encode the zoo's local targets with ``codec`` (fit the codec first, e.g. with :func:`fit_codec`)."""
    raw, conditions = load_raw_targets(store, task_ids, num_segments)
    return ZooTensors(list(task_ids), codec.encode(raw), conditions)


def fit_codec(codec: WeightCodec, store: ZooStore, task_ids: Sequence[str], num_segments: int) -> WeightCodec:
    """Normalisation statistics over every local target of the training tasks (never the held-out ones)."""
    raw, _ = load_raw_targets(store, task_ids, num_segments)
    return codec.fit({n: v.flatten(0, 1) for n, v in raw.items()})
