"""The functional term of SPEC §3.7: the task loss of the weights that the denoiser's clean estimate decodes to.

Zoo weights are mostly per-task optimiser noise, and a generator fitted to them alone learns that noise or their mean.
This term scores what the weights *do*. For a training task with final weights θ⁽ᵏ⁾, draw t uniform in 1..T and ε and
noise on the last segment, where the local schedule is the global one: x_t = √ᾱ_t·θ⁽ᵏ⁾ + √(1−ᾱ_t)·ε. The denoiser's
output f(x_t, t, c) implies a clean estimate x̂₀ of θ⁽ᵏ⁾; decode it into weights and score them with the task's own
loss on one batch of its training examples. The trainer minimises L_diffusion + λ·L_task; λ = 0 is the paper's Mc-Di,
and then nothing of this module runs (nothing is even drawn), so it is exactly today's training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call

from peft_mcdi.generator.codec import TokenLayout
from peft_mcdi.generator.model import McDiGenerator
from peft_mcdi.tasks.base import Task


@dataclass
class FunctionalDraw:
    """Pre-drawn randomness of one task's functional term: steps (n,), noise (n, D) and one training batch."""

    timesteps: torch.Tensor
    noise: torch.Tensor
    batch: Any


def draw_functional(
    generator: McDiGenerator, task: Task, num_samples: int, dim: int, rng: torch.Generator
) -> FunctionalDraw:
    """t uniform in 1..T, ε, and the first batch of one shuffled epoch of ``task``'s training examples."""
    timesteps = torch.randint(1, generator.scheduler.num_train_timesteps + 1, (num_samples,), generator=rng)
    noise = torch.randn(num_samples, dim, generator=rng)
    batch = next(iter(task.train_batches(0, rng)))
    return FunctionalDraw(timesteps, noise, batch)


def functional_loss(
    generator: McDiGenerator,
    denoiser_params: dict[str, torch.Tensor],
    final_target: torch.Tensor,
    condition: torch.Tensor,
    draw: FunctionalDraw,
    task: Task,
    layout: TokenLayout | None = None,
) -> torch.Tensor:
    """Mean task loss of the weights decoded from the clean estimates of the ``draw``'s samples: a function of the
    denoiser's parameters (``denoiser_params``, names without the ``denoiser.`` prefix) to differentiate.

    final_target: (D,) the task's θ⁽ᵏ⁾ in codec space; condition: (C,) or (N, C).
    """
    n = draw.timesteps.shape[0]
    scheduler = generator.scheduler
    x_t = scheduler.add_noise(final_target.expand(n, -1), draw.noise, draw.timesteps)  # (n, D), global q(x_t | x_0)
    drop = torch.zeros(n, dtype=torch.bool, device=x_t.device)  # always conditioned: the term is about c → weights
    f = functional_call(
        generator.denoiser, denoiser_params, (x_t, draw.timesteps, condition.expand(n, *condition.shape), drop, layout)
    )
    weights = generator.codec.decode(scheduler.clean_estimate(x_t, f, draw.timesteps))  # {name: (n, *shape)}
    return torch.stack([task.loss({k: v[s] for k, v in weights.items()}, draw.batch) for s in range(n)]).mean()
