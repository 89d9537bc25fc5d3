"""The generator's training data: every zoo task's local targets in codec space, stacked with its condition."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from peft_mcdi.generator.anchor import PrototypeAnchor
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
    store: ZooStore, task_ids: Sequence[str], num_segments: int, anchor: PrototypeAnchor | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Local targets θ⁽¹⁾…θ⁽ᵏ⁾ of each task as {name: (n, k, *shape)}, plus conditions (n, ...). With an
    ``anchor``, the targets minus its rule on each task's condition: the residuals an anchored generator models."""
    per_task, conditions = [], []
    for task_id in task_ids:
        trajectory = store.read(task_id)
        num_epochs = trajectory.metadata.get("num_epochs", max(trajectory.epochs))
        per_task.append(trajectory.at_epochs(local_target_epochs(num_epochs, num_segments)))
        conditions.append(trajectory.condition)
    names = per_task[0].keys()
    raw, conditions = {n: torch.stack([p[n] for p in per_task]) for n in names}, torch.stack(conditions)
    if anchor is not None:
        rule = anchor(conditions)
        raw = {n: v - rule[n][:, None] for n, v in raw.items()}
    return raw, conditions


def load_zoo_tensors(
    store: ZooStore,
    task_ids: Sequence[str],
    codec: WeightCodec,
    num_segments: int,
    anchor: PrototypeAnchor | None = None,
) -> ZooTensors:
    """Encode the zoo's local targets (residuals on ``anchor``) with ``codec`` (fit it first: :func:`fit_codec`)."""
    raw, conditions = load_raw_targets(store, task_ids, num_segments, anchor)
    return ZooTensors(list(task_ids), codec.encode(raw), conditions)


def fit_codec(
    codec: WeightCodec,
    store: ZooStore,
    task_ids: Sequence[str],
    num_segments: int,
    anchor: PrototypeAnchor | None = None,
) -> WeightCodec:
    """Normalisation statistics over every local target (residual on ``anchor``) of the training tasks (never the
    held-out ones)."""
    raw, _ = load_raw_targets(store, task_ids, num_segments, anchor)
    return codec.fit({n: v.flatten(0, 1) for n, v in raw.items()})
