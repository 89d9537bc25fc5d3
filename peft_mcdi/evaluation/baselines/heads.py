"""The non-generative head baselines of the vision benchmarks, each vectorised over a batch of episodes:

* :func:`prototype_head` — the nearest-centroid classifier written as a linear head (no training);
* gradient training of the head on the support set is :func:`~peft_mcdi.zoo.heads.train_heads`, the zoo's own
  trainer (the logistic-regression baseline and the per-task reference);
* :class:`ReptileHeadInit` — Reptile meta-initialisation of a feature-wise affine adapter and a shared head row,
  then fine-tuning on the support set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from peft_mcdi.tasks.episodes import EpisodeBatch
from peft_mcdi.utils import DictConfigMixin
from peft_mcdi.zoo.heads import HeadTraining, train_heads


def prototype_head(batch: EpisodeBatch) -> dict[str, torch.Tensor]:
    """Nearest centroid as a head: argmin_c ‖x − p_c‖² = argmax_c (2 p_c·x − ‖p_c‖²)."""
    protos = batch.prototypes  # (E, N, d)
    return {"weight": 2 * protos, "bias": -protos.pow(2).sum(-1)}


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
