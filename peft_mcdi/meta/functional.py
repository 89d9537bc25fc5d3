"""The functional term of SPEC §3.7: the task loss of the weights that the denoiser's clean estimate decodes to.

Zoo weights are mostly per-task optimiser noise, and a generator fitted to them alone learns that noise or their mean.
This term scores what the weights *do*. For a training task with final weights θ⁽ᵏ⁾, draw t uniform in 1..T and ε and
noise on the last segment, where the local schedule is the global one: x_t = √ᾱ_t·θ⁽ᵏ⁾ + √(1−ᾱ_t)·ε. The denoiser's
output f(x_t, t, c) implies a clean estimate x̂₀ of θ⁽ᵏ⁾; decode it into weights and score them with the task's own
loss on one batch of its training examples. The trainer minimises L_diffusion + λ·L_task; λ = 0 is the paper's Mc-Di,
and then nothing of this module runs (nothing is even drawn), so it is exactly today's training.

Where x_t comes from matters (``MetaTrainConfig.functional_input``). Noised zoo targets still carry θ⁽ᵏ⁾ at every t:
at the schedule's end ᾱ_T is small but not 0, and over thousands of coordinates that is enough for the denoiser to
read the weights back from x_t instead of deriving them from the condition — the term's loss falls on the training
tasks while chains started from pure noise (what generation does) stay at chance (measured on MiniLM WordNet,
docs/llm.md). ``"pure_noise"`` scores the sampler's own first step instead, x̂₀(ε, T, c) with ε ~ N(0, I): the
weights can only come from the condition, and the later steps, trained to denoise, refine what it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call, vmap

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
    generator: McDiGenerator, task: Task, num_samples: int, dim: int, rng: torch.Generator, pure_noise: bool = False
) -> FunctionalDraw:
    """t uniform in 1..T (T itself for ``pure_noise``), ε, and the first batch of one shuffled epoch of ``task``'s
    training examples."""
    T = generator.scheduler.num_train_timesteps
    timesteps = torch.randint(1, T + 1, (num_samples,), generator=rng)  # drawn either way: same ε and batch
    if pure_noise:
        timesteps = torch.full_like(timesteps, T)
    noise = torch.randn(num_samples, dim, generator=rng)
    batch = next(iter(task.train_batches(0, rng)))
    return FunctionalDraw(timesteps, noise, batch)


def functional_losses(
    generator: McDiGenerator,
    denoiser_params: dict[str, torch.Tensor],
    final_targets: torch.Tensor,
    conditions: torch.Tensor,
    draws: list[FunctionalDraw],
    tasks: list[Task],
    layout: TokenLayout | None = None,
    pure_noise: bool = False,
) -> torch.Tensor:
    """(m,) mean task loss of the weights decoded from the clean estimates of each slot's draw (with the
    generator's anchor, when it has one): a function of the slots' denoiser parameters to differentiate. One
    vectorised denoiser pass over the slots and one scoring pass over all m·n decoded weights
    (:meth:`~peft_mcdi.tasks.base.Task.grouped_loss`).

    denoiser_params: names without the ``denoiser.`` prefix, each (m, *shape) — slot j's own parameters (Reptile's
    fast weights, or φ repeated); final_targets: (m, D) the tasks' θ⁽ᵏ⁾ in codec space; conditions: (m, C) or
    (m, N, C); draws, tasks: one per slot; ``pure_noise``: the denoiser's input is the draws' ε itself (the
    sampler's start, drawn at t = T) rather than the noised final targets.
    """
    scheduler = generator.scheduler
    m, n = len(draws), draws[0].timesteps.shape[0]
    timesteps = torch.stack([d.timesteps for d in draws])  # (m, n)
    noise = torch.stack([d.noise for d in draws])  # (m, n, D)
    if pure_noise:
        x_t = noise
    else:  # global q(x_t | x_0)
        x_t = scheduler.add_noise(
            final_targets.repeat_interleave(n, 0), noise.flatten(0, 1), timesteps.flatten()
        ).view_as(noise)
    drop = torch.zeros(n, dtype=torch.bool, device=x_t.device)  # always conditioned: the term is about c → weights

    def clean_estimate(params, x, steps, condition):
        conditions = condition.expand(n, *condition.shape)
        f = functional_call(generator.denoiser, params, (x, steps, conditions, drop, layout))
        return scheduler.clean_estimate(x, f, steps)

    estimates = vmap(clean_estimate)(denoiser_params, x_t, timesteps, conditions)  # (m, n, D)
    weights = generator.decode(estimates.flatten(0, 1), conditions.repeat_interleave(n, 0))  # {name: (m·n, *shape)}
    groups = [task for task in tasks for _ in range(n)]
    batches = [d.batch for d in draws for _ in range(n)]
    return type(tasks[0]).grouped_loss(groups, weights, batches).view(m, n).mean(1).to(x_t.device)
