"""Multi-task LoRA (Text-to-LoRA's multi-task baseline): one adapter (+ head) trained on the union of every training
task's examples, each example preceded by its task's description. A held-out task is then answered with its own
description in the prompt: the task lives in the prompt, not in the adapter — the opposite bet to a generator, which
must put the task into the weights and keep the prompt bare."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from peft_mcdi.utils import DictConfigMixin


@dataclass
class MultiTaskLoRAConfig(DictConfigMixin):
    num_epochs: float = field(default=1.0, metadata={"help": "Passes over the union of the training examples."})
    batch_size: int = field(default=32, metadata={"help": "Examples per step, drawn across tasks."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (constant)."})
    seed: int = field(default=0, metadata={"help": "Seed of the example order."})

    def __post_init__(self) -> None:
        if self.num_epochs <= 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(
                f"MultiTaskLoRAConfig needs num_epochs > 0, batch_size >= 1 and lr > 0, got num_epochs="
                f"{self.num_epochs}, batch_size={self.batch_size}, lr={self.lr}."
            )


def train_multitask_lora(tasks: Sequence, config: MultiTaskLoRAConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """Train one LoRA (+ head) of the tasks' shared layout from their common θ₀ on all their training examples,
    prompted with the descriptions (``ConceptLoRATask``s of one ``SharedLoRAModel``). Returns the weights and
    ``{"steps", "seconds", "final_loss"}``."""
    if not tasks:
        raise ValueError("train_multitask_lora needs at least one training task, got none.")
    shared = tasks[0].shared
    examples = [(t.concept.description, word, label) for t in tasks for word, label in t.concept.train]
    params = {k: v.clone().requires_grad_(True) for k, v in shared.theta0.items()}
    optimizer = torch.optim.Adam(params.values(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    num_steps = math.ceil(config.num_epochs * len(examples) / config.batch_size)
    epochs = math.ceil(num_steps * config.batch_size / len(examples))
    order = torch.cat([torch.randperm(len(examples), generator=generator) for _ in range(epochs)]).tolist()
    start, losses = time.perf_counter(), []
    for step in range(num_steps):
        chosen = [examples[i] for i in order[step * config.batch_size : (step + 1) * config.batch_size]]
        batch = shared.batch([(w, y) for _, w, y in chosen], [d for d, _, _ in chosen])
        optimizer.zero_grad()
        loss = shared.loss(params, batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    tail = losses[-max(1, len(losses) // 10) :]
    info = {"steps": num_steps, "seconds": time.perf_counter() - start, "final_loss": sum(tail) / len(tail)}
    return {k: v.detach() for k, v in params.items()}, info
