"""The toy family of SPEC §3.3: logistic-regression tasks whose optimum depends non-linearly on a task descriptor.

A task is a descriptor z ∈ [−1, 1]^4 (its condition). A fixed random 2-layer tanh network maps z to the true
weights w*(z) ∈ R^16 and bias b*(z); examples are x ~ N(0, I), y ~ Bernoulli(σ(w*·x + b*)). With 256 training
examples a task's own trained weights are noisy estimates of w*, so a generator that has learned z ↦ weights across
many tasks can beat both the average weights and the nearest training task's weights on unseen descriptors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from peft_mcdi.tasks.base import Task, TaskSet, TaskSets, register_tasksets
from peft_mcdi.utils import DictConfigMixin


@dataclass
class LogisticFamilyConfig(DictConfigMixin):
    dim: int = field(default=16, metadata={"help": "Input dimension of each logistic-regression task."})
    descriptor_dim: int = field(default=4, metadata={"help": "Width of the task descriptor (the condition)."})
    hidden_dim: int = field(default=32, metadata={"help": "Width of the random map descriptor → optimum."})
    weight_scale: float = field(default=3.0, metadata={"help": "Typical norm of the true weights (sharpness)."})
    num_train_tasks: int = field(default=400, metadata={"help": "Tasks whose trajectories train the generator."})
    num_test_tasks: int = field(default=100, metadata={"help": "Held-out tasks (disjoint descriptors)."})
    num_train_examples: int = field(default=256, metadata={"help": "Training examples per task."})
    num_test_examples: int = field(default=2000, metadata={"help": "Held-out examples per task for evaluation."})
    batch_size: int = field(default=64, metadata={"help": "Mini-batch size of trajectory training."})
    family_seed: int = field(default=0, metadata={"help": "Seed of the descriptor → optimum map (the family)."})
    seed: int = field(default=0, metadata={"help": "Seed of descriptors and examples (the split)."})


def _optimum_map(config: LogisticFamilyConfig) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(config.family_seed)
    a1 = torch.randn(config.hidden_dim, config.descriptor_dim, generator=g) * 1.5
    c1 = torch.randn(config.hidden_dim, generator=g) * 0.5
    a2 = torch.randn(config.dim + 1, config.hidden_dim, generator=g) / config.hidden_dim**0.5
    return a1, c1, a2


def true_parameters(descriptors: torch.Tensor, config: LogisticFamilyConfig) -> torch.Tensor:
    """(n, descriptor_dim) → (n, dim + 1): the weights and bias that generate each task's labels."""
    a1, c1, a2 = _optimum_map(config)
    out = torch.tanh(descriptors @ a1.T + c1) @ a2.T  # (n, dim + 1)
    return config.weight_scale * out / out[:, :-1].norm(dim=1, keepdim=True).clamp(min=1e-6) ** 0.5


class LogisticTask(Task):
    def __init__(
        self, task_id: str, descriptor: torch.Tensor, truth: torch.Tensor, config: LogisticFamilyConfig, seed: int
    ) -> None:
        self.task_id = task_id
        self.condition = descriptor
        self.config = config
        g = torch.Generator().manual_seed(seed)
        n = config.num_train_examples + config.num_test_examples
        x = torch.randn(n, config.dim, generator=g)
        y = torch.bernoulli(torch.sigmoid(x @ truth[:-1] + truth[-1]), generator=g)
        k = config.num_train_examples
        self.train_x, self.train_y, self.test_x, self.test_y = x[:k], y[:k], x[k:], y[k:]

    def init_params(self) -> dict[str, torch.Tensor]:
        # All-zero weights: the shared θ₀ of SPEC §3.1 for linear heads.
        return {"weight": torch.zeros(self.config.dim), "bias": torch.zeros(())}

    @staticmethod
    def _nll(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # params may carry leading dims (...): logits (..., n)
        logits = torch.einsum("...d,nd->...n", params["weight"], x) + params["bias"][..., None]
        return F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none").mean(-1)

    def loss(self, params, batch):
        return self._nll(params, *batch)

    @classmethod
    def grouped_loss(cls, tasks, params, batches):
        """One pass for every group: the batches of a family have one size, so they stack."""
        x, y = (torch.stack(parts) for parts in zip(*batches))  # (G, n, d), (G, n)
        logits = torch.einsum("gd,gnd->gn", params["weight"], x) + params["bias"][:, None]
        return F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(-1)

    def train_batches(self, epoch, generator):
        order = torch.randperm(self.config.num_train_examples, generator=generator)
        for idx in order.split(self.config.batch_size):
            yield self.train_x[idx], self.train_y[idx]

    def evaluate(self, params):
        return self._nll(params, self.test_x, self.test_y)


@register_tasksets("logistic")
def logistic_tasksets(**kwargs) -> TaskSets:
    """Train/test split of the logistic family; descriptors of the two splits are independent draws."""
    config = LogisticFamilyConfig(**kwargs)
    g = torch.Generator().manual_seed(10_000 + config.seed)
    n = config.num_train_tasks + config.num_test_tasks
    descriptors = torch.rand(n, config.descriptor_dim, generator=g) * 2 - 1
    truths = true_parameters(descriptors, config)
    tasks = [
        LogisticTask(
            f"{'train' if i < config.num_train_tasks else 'test'}-{i:05d}",
            descriptors[i],
            truths[i],
            config,
            seed=config.seed * 1_000_003 + i,
        )
        for i in range(n)
    ]
    return TaskSets(
        TaskSet(tasks[: config.num_train_tasks], "logistic/train"),
        TaskSet(tasks[config.num_train_tasks :], "logistic/test"),
    )
