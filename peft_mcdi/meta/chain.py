"""Functional fine-tuning through the sampling chain (SPEC §3.7; DRaFT, Clark et al. 2023, arXiv 2309.17400).

The functional term of :mod:`peft_mcdi.meta.functional` scores the denoiser's clean estimate of one step (from a noised
zoo target, or the sampler's first step). What a user receives is something else: the end of the whole *reverse* chain,
whose later steps, trained only to denoise zoo weights, can undo what the first one started. After meta-training, this
stage closes that gap: it runs the generator's own DDPM chain (all T steps) for a few training tasks, decodes x_0,
scores it with the tasks' loss on a batch of their examples through the frozen base, and backpropagates through the
last K denoiser calls only (the earlier ones run without a graph: DRaFT-K). K = 1 trains the last step to repair
whatever the chain hands it; K = T trains the whole chain as one deep network. Only the denoiser changes, so the
artefact is an ordinary generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from peft_mcdi.generator.model import McDiGenerator
from peft_mcdi.meta.data import ZooTensors
from peft_mcdi.meta.resumable import train_resumable
from peft_mcdi.tasks.base import Task
from peft_mcdi.utils import DictConfigMixin, stable_hash


@dataclass
class ChainFinetuneConfig(DictConfigMixin):
    """Fine-tuning of a trained generator through its sampling chain; ``steps = 0`` skips the stage."""

    steps: int = field(default=0, metadata={"help": "Adam steps (0: no chain fine-tuning, the generator as trained)."})
    last_steps: int = field(
        default=1, metadata={"help": "K: the last K denoiser calls of the chain carry gradients (1 … T)."}
    )
    tasks_per_step: int = field(
        default=8, metadata={"help": "Training tasks per step, each scored on one batch (one base-model pass)."}
    )
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate on the denoiser."})
    temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature of the chains fine-tuned through: the one generation will use."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of task sampling, batches and chain noise."})

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0 (0: skip the stage), got {self.steps}.")
        if self.tasks_per_step < 1:
            raise ValueError(f"tasks_per_step must be >= 1, got {self.tasks_per_step}.")
        if self.last_steps < 1:
            raise ValueError(f"last_steps (K) must be >= 1, got {self.last_steps}.")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}.")


def chain_sample(
    generator: McDiGenerator, condition: torch.Tensor, last_steps: int, temperature: float, rng: torch.Generator
) -> torch.Tensor:
    """x_0 (B, D) of the generator's DDPM chain over all T steps, differentiable through its last ``last_steps``
    denoiser calls: the same chain as :func:`~peft_mcdi.generator.sampling.sample`, written out of place so that
    autograd can follow it (the sampler updates one buffer in place for speed)."""
    scheduler, device = generator.scheduler, generator.device
    condition = condition.to(device, torch.float32)
    B, num_rows = condition.shape[0], generator.num_rows_of(condition)
    layout, dim = generator.layout(num_rows), generator.codec.dim(num_rows)
    steps = scheduler.timesteps_for(None)
    x = (torch.randn(B, dim, generator=rng) * temperature).to(device)
    for s, (t, t_prev) in enumerate(steps):
        c_x, c_eps, sigma = scheduler.step_coefficients(t, t_prev, "ddpm")
        with torch.set_grad_enabled(s >= len(steps) - last_steps):
            f = generator.denoiser(x, torch.full((B,), t, device=device), condition, None, layout)
            x = c_x * x - c_eps * f
        if sigma > 0 and temperature > 0:
            x = x + (sigma * temperature) * torch.randn(B, dim, generator=rng).to(device)
    return x


def finetune_through_chain(
    generator: McDiGenerator,
    data: ZooTensors,
    tasks: Sequence[Task],
    config: ChainFinetuneConfig,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
) -> list[float]:
    """Fine-tune ``generator``'s denoiser in place; returns the loss curve. ``tasks``: the training tasks in the order
    of ``data.task_ids`` (the zoo gives only their conditions). With ``checkpoint_dir`` the stage resumes."""
    if [t.task_id for t in tasks] != list(data.task_ids):
        raise ValueError("tasks must be the zoo's training tasks in the order of data.task_ids.")
    T = generator.scheduler.num_train_timesteps
    if config.last_steps > T:
        raise ValueError(f"last_steps (K) must be <= the generator's T = {T}, got {config.last_steps}.")

    def loss(rows: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        chosen = [tasks[i] for i in rows.tolist()]
        batches = [next(iter(t.train_batches(0, g))) for t in chosen]
        x0 = chain_sample(generator, data.conditions[rows], config.last_steps, config.temperature, g)
        weights = generator.decode(x0, data.conditions[rows].to(x0.device))
        return type(chosen[0]).grouped_loss(chosen, weights, batches).mean()

    run = {k: v for k, v in config.to_dict().items() if k != "steps"}  # a longer run continues a shorter one
    identity = stable_hash(["chain", run, list(data.task_ids)])
    desc = f"chain fine-tuning (last {config.last_steps} of {T} steps)"
    return train_resumable(
        generator.denoiser, loss, len(data), config.steps, config.tasks_per_step, config.lr, config.seed, identity,
        desc, progress, checkpoint_dir,
    )  # fmt: skip
