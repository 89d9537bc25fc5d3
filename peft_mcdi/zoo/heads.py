"""Trajectory collection for head episodes, vectorised: the generic recorder trains one task at a time, which for a
linear head on cached features is all Python overhead (≈ 0.1–0.3 s per task); here a chunk of episodes trains as one
batch. Each episode keeps its own noise stream (:func:`~peft_mcdi.zoo.recorder.batch_order_generator`), SAM's ascent
is normalised per episode and Adam is element-wise, so every trajectory equals the generic recorder's for that task
(tested), and the zoo files are interchangeable: resume, manifest and corruption checks are the store's.

:func:`train_heads` is that batched trainer; the logistic-regression baseline and the per-task reference of the
vision benchmark use it too. Episodes of a batch are independent: the losses are summed over episodes (Adam is
element-wise, and SAM's ascent is normalised per episode), so one batched run equals E separate runs.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from peft_mcdi.tasks.episodes import EpisodeBatch, HeadTask, head_accuracy, head_logits
from peft_mcdi.zoo.recorder import RecorderConfig, batch_order_generator
from peft_mcdi.zoo.store import ZooStore


def _episode_losses(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each episode's mean cross-entropy (E,): x (E, n, d), y (E, n)."""
    logits = head_logits(params, x)  # (E, n, N)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)


@dataclass
class HeadTraining:
    """Result of :func:`train_heads`: final heads; query accuracy (steps + 1, E) after 0..steps steps; training
    loss per step (steps, E); heads kept every ``keep_every`` steps {step: params}; seconds spent in the steps."""

    params: dict[str, torch.Tensor]
    accuracy: torch.Tensor
    losses: torch.Tensor
    kept: dict[int, dict[str, torch.Tensor]]
    seconds: float


def train_heads(
    batch: EpisodeBatch,
    num_steps: int,
    lr: float,
    rho: float = 0.0,
    init: dict[str, torch.Tensor] | None = None,
    feature_noise: float = 0.0,
    generators: list[torch.Generator] | None = None,
    weight_decay: float = 0.0,
    keep_every: int = 0,
    features=None,
) -> HeadTraining:
    """Adam (wrapped in per-episode SAM when ``rho > 0``, exactly as :class:`~peft_mcdi.zoo.sam.SAM` does per task)
    on each episode's support set, full batch, from ``init`` (default: zeros, the zoo's θ₀).

    ``feature_noise`` adds Gaussian noise to the support features at every step, drawn per episode from
    ``generators`` (one per episode; default: one seeded stream) — the recorder's augmentation, so with each task's
    :func:`~peft_mcdi.zoo.recorder.batch_order_generator` this retraces the zoo trajectories. ``features`` optionally
    maps (E, n, d) features before the head (Reptile's adapter).
    """
    E, _, d = batch.support_x.shape
    N = batch.num_ways
    if init is None:
        init = {"weight": torch.zeros(E, N, d), "bias": torch.zeros(E, N)}
    params = {k: v.detach().clone().requires_grad_(True) for k, v in init.items()}
    optimizer = torch.optim.Adam(list(params.values()), lr=lr, weight_decay=weight_decay)
    generators = generators or [torch.Generator().manual_seed(0)]
    transform = features or (lambda x, _params: x)

    def gradients(x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        losses = _episode_losses(params, transform(x, params), batch.support_y)
        return list(torch.autograd.grad(losses.sum(), list(params.values()))), losses.detach()

    def query_accuracy() -> torch.Tensor:
        with torch.no_grad():
            return head_accuracy(params, transform(batch.query_x, params), batch.query_y)

    accuracy, losses, kept, seconds = [query_accuracy()], [], {}, 0.0
    for step in range(1, num_steps + 1):
        start = time.perf_counter()
        x = batch.support_x
        if feature_noise > 0:
            shape = x.shape[1:]
            noise = [torch.randn(shape, generator=g) for g in generators] if len(generators) == E else None
            x = x + feature_noise * (torch.stack(noise) if noise else torch.randn(x.shape, generator=generators[0]))
        grads, loss = gradients(x)
        if rho > 0:  # SAM: ascend to w + ρ·g/‖g‖ (norm over each episode's parameters), take the gradient there
            norm = torch.sqrt(sum(gr.flatten(1).pow(2).sum(1) for gr in grads)) + 1e-12  # (E,)
            eps = [rho * gr / norm.view(-1, *[1] * (gr.dim() - 1)) for gr in grads]
            with torch.no_grad():
                for p, e in zip(params.values(), eps):
                    p.add_(e)
            grads, _ = gradients(x)
            with torch.no_grad():
                for p, e in zip(params.values(), eps):
                    p.sub_(e)
        for p, gr in zip(params.values(), grads):
            p.grad = gr
        optimizer.step()
        seconds += time.perf_counter() - start
        losses.append(loss)
        accuracy.append(query_accuracy())
        if keep_every and step % keep_every == 0:
            kept[step] = {k: v.detach().clone() for k, v in params.items()}
    params = {k: v.detach() for k, v in params.items()}
    loss_curve = torch.stack(losses) if losses else torch.zeros(0, E)
    return HeadTraining(params, torch.stack(accuracy), loss_curve, kept, seconds)


def collect_heads(
    tasks: Sequence[HeadTask], store: ZooStore, config: RecorderConfig, chunk_size: int = 256, progress: bool = True
) -> list[str]:
    """Record every task not yet in ``store`` (same files as :func:`~peft_mcdi.zoo.recorder.collect`); returns the
    ids recorded by this call."""
    todo = [t for t in tasks if not store.has(t.task_id)]
    groups: dict[tuple, list[HeadTask]] = defaultdict(list)  # episodes that stack: same shapes and recipe
    for t in todo:
        groups[(t.num_ways, tuple(t.pool_x.shape), tuple(t.query_x.shape), t.config.steps_per_epoch,
                t.config.feature_noise)].append(t)  # fmt: skip
    kept_epochs = set(config.kept_epochs())
    done = []
    bar = tqdm(total=len(todo), desc="collect heads", unit="task", disable=not progress or not todo)
    for group in groups.values():
        for start in range(0, len(group), chunk_size):
            chunk = group[start : start + chunk_size]
            batch = EpisodeBatch.stack(chunk, pool=True)
            spe = batch.steps_per_epoch
            run = train_heads(
                batch, config.num_epochs * spe, config.lr, rho=config.rho, feature_noise=batch.feature_noise,
                generators=[batch_order_generator(t, config) for t in chunk], weight_decay=config.weight_decay,
                keep_every=spe,
            )  # fmt: skip
            for j, task in enumerate(chunk):
                checkpoints = {0: task.init_params()}
                for step, params in run.kept.items():
                    if step // spe in kept_epochs:
                        checkpoints[step // spe] = {k: v[j] for k, v in params.items()}
                final_loss = float(run.losses[-spe:, j].mean())
                if final_loss != final_loss:
                    raise FloatingPointError(f"task {task.task_id!r} diverged (loss NaN); lower RecorderConfig.lr.")
                store.write(task.task_id, checkpoints, task.condition,
                            {"final_loss": final_loss, "num_epochs": config.num_epochs})  # fmt: skip
                done.append(task.task_id)
            bar.update(len(chunk))
    bar.close()
    return done
