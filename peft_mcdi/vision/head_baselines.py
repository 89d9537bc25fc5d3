"""The non-generative head baselines of the vision benchmarks, each vectorised over a batch of episodes:

* :func:`prototype_head` — the nearest-centroid classifier written as a linear head (no training);
* :func:`train_heads` — gradient training of the head on the support set (Adam, optionally wrapped in per-episode
  SAM: the logistic-regression baseline and the per-task reference), recording query accuracy after every step;
* :class:`ReptileHeadInit` — Reptile meta-initialisation of a feature-wise affine adapter and a shared head row,
  then fine-tuning on the support set.

Episodes of a batch are independent: the losses are summed over episodes (Adam is element-wise, and SAM's ascent is
normalised per episode), so one batched run equals E separate runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from peft_mcdi.utils import DictConfigMixin
from peft_mcdi.vision.episodes import EpisodeBatch, head_logits


def prototype_head(batch: EpisodeBatch) -> dict[str, torch.Tensor]:
    """Nearest centroid as a head: argmin_c ‖x − p_c‖² = argmax_c (2 p_c·x − ‖p_c‖²)."""
    protos = batch.prototypes  # (E, N, d)
    return {"weight": 2 * protos, "bias": -protos.pow(2).sum(-1)}


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
            logits = head_logits(params, transform(batch.query_x, params))
            return (logits.argmax(-1) == batch.query_y).float().mean(-1)

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


def steps_to_match(accuracy_curve: torch.Tensor, target: float) -> int | None:
    """First step whose mean accuracy over episodes reaches ``target`` (None: never within the budget)."""
    reached = torch.nonzero(accuracy_curve.mean(-1) >= target).flatten()
    return int(reached[0]) if len(reached) else None


@dataclass
class ReptileHeadConfig(DictConfigMixin):
    outer_steps: int = field(default=300, metadata={"help": "Reptile outer steps."})
    meta_batch_size: int = field(default=16, metadata={"help": "Episodes per outer step."})
    inner_steps: int = field(default=5, metadata={"help": "Adam steps per episode in the inner loop."})
    inner_lr: float = field(default=0.05, metadata={"help": "Inner (and fine-tuning) Adam learning rate."})
    outer_lr: float = field(default=0.01, metadata={"help": "Adam learning rate on the Reptile pseudo-gradient."})
    seed: int = field(default=0, metadata={"help": "Seed of episode sampling."})


class ReptileHeadInit:
    """Reptile (SPEC §3.4) on φ = {γ, β (d,): feature-wise affine adapter x ↦ (1 + γ)·x + β; w (d,), b (): the
    head row shared by every class}. A head must start class-symmetric (classes are unordered), so what meta-learning
    can carry over to new classes is a better feature space for fast fine-tuning — the adapter."""

    def __init__(self, dim: int, config: ReptileHeadConfig | None = None) -> None:
        self.config = config or ReptileHeadConfig()
        self.phi = {"gamma": torch.zeros(dim), "beta": torch.zeros(dim), "w": torch.zeros(dim), "b": torch.zeros(())}

    def expand(self, num_episodes: int, num_ways: int) -> dict[str, torch.Tensor]:
        """φ copied per episode (E, …), the head row per class (E, N, d)."""
        E, N = num_episodes, num_ways
        return {
            "gamma": self.phi["gamma"].expand(E, -1).clone(),
            "beta": self.phi["beta"].expand(E, -1).clone(),
            "weight": self.phi["w"].expand(E, N, -1).clone(),
            "bias": self.phi["b"].expand(E, N).clone(),
        }

    @staticmethod
    def adapt_features(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return x * (1 + params["gamma"][:, None]) + params["beta"][:, None]

    def meta_train(self, sample_batch) -> list[float]:
        """``sample_batch(step) -> EpisodeBatch`` of ``meta_batch_size`` training episodes (their pools as support).
        The outer update is the pseudo-gradient φ − mean φᵢ fed to Adam."""
        cfg = self.config
        leaves = {k: v.clone().requires_grad_(True) for k, v in self.phi.items()}
        optimizer = torch.optim.Adam(list(leaves.values()), lr=cfg.outer_lr)
        history = []
        for step in range(cfg.outer_steps):
            self.phi = {k: v.detach() for k, v in leaves.items()}
            batch = sample_batch(step)
            run = train_heads(
                batch, cfg.inner_steps, cfg.inner_lr, init=self.expand(len(batch.support_x), batch.num_ways),
                features=self.adapt_features,
            )  # fmt: skip
            adapted = {
                "gamma": run.params["gamma"].mean(0),
                "beta": run.params["beta"].mean(0),
                "w": run.params["weight"].mean((0, 1)),
                "b": run.params["bias"].mean(),
            }
            for k, leaf in leaves.items():
                leaf.grad = leaf.detach() - adapted[k]  # Reptile pseudo-gradient
            optimizer.step()
            history.append(float(run.accuracy[-1].mean()))
        self.phi = {k: v.detach() for k, v in leaves.items()}
        return history

    def fine_tune(self, batch: EpisodeBatch, num_steps: int) -> HeadTraining:
        init = self.expand(len(batch.support_x), batch.num_ways)
        return train_heads(batch, num_steps, self.config.inner_lr, init=init, features=self.adapt_features)
