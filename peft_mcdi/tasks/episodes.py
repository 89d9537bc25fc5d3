"""Classification episodes over frozen-backbone features, as tasks of the engine (SPEC §3.1, §3.5).

An episode is N classes with K labelled *support* images and Q *query* images each. Its parameters are a linear head
``{"weight": (N, d), "bias": (N,)}`` starting from all zeros (so class order does not matter); its condition is the
set of class prototypes (N, d), the mean support feature per class, tied row by row to the head (the codec's rows
layout). Its trajectory is trained with Adam+SAM on its *training pool*: for a meta-training episode that may be
more labelled images of the same classes than the K it is conditioned on (background classes are fully labelled, so
the generator learns to map a K-shot condition to a better head than K shots alone would give); for a test episode
the pool is the support set itself, all a user has.

Features are L2-normalised once, so that heads from different backbones and datasets live on one scale.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from peft_mcdi.tasks.base import Task, accuracy
from peft_mcdi.utils import DictConfigMixin


@dataclass
class FeatureSet:
    """Backbone features (n, d) float32, L2-normalised, with int64 class labels (n,) and an optional domain (n,)."""

    name: str
    features: torch.Tensor
    labels: torch.Tensor
    domains: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.features.dim() != 2 or self.labels.shape != (self.features.shape[0],):
            raise ValueError(
                f"{self.name}: features must be (n, d) with labels (n,), got {tuple(self.features.shape)} and "
                f"{tuple(self.labels.shape)}."
            )
        self.features = F.normalize(self.features.float(), dim=1)
        self.labels = self.labels.long()

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def indices_by_class(self, classes: Iterable[int], domain: int | None = None) -> dict[int, torch.Tensor]:
        """Image indices of each class (restricted to one domain when given)."""
        keep = torch.ones_like(self.labels, dtype=torch.bool)
        if domain is not None:
            if self.domains is None:
                raise ValueError(f"{self.name} has no domains; cannot select domain {domain}.")
            keep = self.domains == domain
        return {c: torch.nonzero(keep & (self.labels == c)).flatten() for c in classes}


@dataclass
class EpisodeConfig(DictConfigMixin):
    """Shape of episodes and how a meta-training episode's trajectory is trained."""

    num_ways: int = field(default=5, metadata={"help": "N, classes per episode."})
    num_shots: list[int] = field(
        default_factory=lambda: [1, 5],
        metadata={"help": "K, support images per class; a list draws K per episode (meta-training on mixed shots)."},
    )
    num_queries: int = field(default=15, metadata={"help": "Q, query images per class (the test metric)."})
    pool_shots: int = field(
        default=0,
        metadata={
            "help": "Labelled images per class a meta-training episode's trajectory trains on (≥ K; drawn beside "
            "the support set). 0: the support set only, as for test episodes."
        },
    )
    steps_per_epoch: int = field(default=5, metadata={"help": "Full-batch Adam+SAM steps per trajectory epoch."})
    feature_noise: float = field(
        default=0.02, metadata={"help": "Std of Gaussian feature noise added to each training batch (augmentation)."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.num_shots, int):
            self.num_shots = [self.num_shots]
        if self.num_ways < 2:
            raise ValueError(f"num_ways must be >= 2, got {self.num_ways}.")
        if not self.num_shots or min(self.num_shots) < 1:
            raise ValueError(f"num_shots must be a non-empty list of ints >= 1, got {self.num_shots}.")
        if self.num_queries < 1 or self.steps_per_epoch < 1:
            raise ValueError(
                f"num_queries and steps_per_epoch must be >= 1, got {self.num_queries} and {self.steps_per_epoch}."
            )
        if self.pool_shots and self.pool_shots < max(self.num_shots):
            raise ValueError(f"pool_shots ({self.pool_shots}) must be 0 or >= max(num_shots) {max(self.num_shots)}.")


class HeadTask(Task):
    """One N-way K-shot episode; see the module docstring. Metric: query accuracy (higher is better)."""

    metric = "accuracy"
    higher_is_better = True
    class_rows = True

    def __init__(
        self,
        task_id: str,
        support: tuple[torch.Tensor, torch.Tensor],
        query: tuple[torch.Tensor, torch.Tensor],
        pool: tuple[torch.Tensor, torch.Tensor],
        classes: list[int],
        config: EpisodeConfig,
    ) -> None:
        self.task_id = task_id
        self.support_x, self.support_y = support  # (N·K, d), (N·K,) in 0..N−1
        self.query_x, self.query_y = query
        self.pool_x, self.pool_y = pool
        self.classes = classes  # dataset class of each head row
        self.config = config
        self.condition = prototypes(self.support_x, self.support_y, len(classes))  # (N, d)

    @property
    def num_ways(self) -> int:
        return len(self.classes)

    def init_params(self) -> dict[str, torch.Tensor]:
        n, d = self.condition.shape
        return {"weight": torch.zeros(n, d), "bias": torch.zeros(n)}

    def loss(self, params: dict[str, torch.Tensor], batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(head_logits(params, x), y)

    @classmethod
    def grouped_loss(cls, tasks, params: dict[str, torch.Tensor], batches) -> torch.Tensor:
        """(G,) cross-entropies of heads ``params`` (weight (G, N, d), bias (G, N)) on ``batches[g]``: one batched
        pass when the batches have one shape (a meta-batch of episodes), one per episode otherwise."""
        if len({tuple(x.shape) for x, _ in batches}) > 1:
            return super().grouped_loss(tasks, params, batches)
        x, y = torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])  # (G, n, d), (G, n)
        logits = head_logits(params, x)  # (G, n, N)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)

    def train_batches(self, epoch: int, generator: torch.Generator):
        for _ in range(self.config.steps_per_epoch):
            yield self.pool_x, self.pool_y

    def augment(self, batch, generator: torch.Generator):
        x, y = batch
        if self.config.feature_noise <= 0:
            return batch
        return x + self.config.feature_noise * torch.randn(x.shape, generator=generator), y

    def evaluate(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Query accuracy (ties split, :func:`~peft_mcdi.tasks.base.accuracy`); params may carry leading batch dims
        (…, N, d), the result has them."""
        return head_accuracy(params, self.query_x, self.query_y)


def head_logits(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Linear head logits: weight (…, N, d), bias (…, N), x (…, n, d) or (n, d) → (…, n, N)."""
    return torch.einsum("...nd,...cd->...nc", x, params["weight"]) + params["bias"][..., None, :]


def head_accuracy(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy of linear heads on x (…, n, d) with labels y (…, n) → (…). Classes whose logits differ only by
    rounding tie (:func:`~peft_mcdi.tasks.base.accuracy`, sized by |x|·|w| + |b|), so identical head rows score
    exactly 1/N on every CPU."""
    magnitude = head_logits({"weight": params["weight"].abs(), "bias": params["bias"].abs()}, x.abs())
    return accuracy(head_logits(params, x), y, magnitude)


def prototypes(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean feature per class: x (…, n, d), y (…, n) in 0..N−1 → (…, N, d)."""
    one_hot = F.one_hot(y, num_classes).to(x.dtype)  # (…, n, N)
    return torch.einsum("...nc,...nd->...cd", one_hot, x) / one_hot.sum(-2)[..., None].clamp(min=1)


def sample_episodes(
    features: FeatureSet,
    classes: Sequence[int],
    config: EpisodeConfig,
    num_episodes: int,
    seed: int,
    prefix: str,
    domain: int | None = None,
) -> list[HeadTask]:
    """``num_episodes`` episodes over ``classes`` (and one domain when given), deterministic in ``seed``.

    Per episode: N classes without replacement, K drawn from ``config.num_shots``, then per class K support, Q query
    and (meta-training) ``pool_shots − K`` extra pool images, all distinct images.
    """
    by_class = features.indices_by_class(classes, domain)
    classes = [c for c in classes if len(by_class[c])]
    if len(classes) < config.num_ways:
        raise ValueError(f"{features.name}: {len(classes)} classes available, an episode needs {config.num_ways}.")
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for e in range(num_episodes):
        chosen = [classes[i] for i in torch.randperm(len(classes), generator=g)[: config.num_ways].tolist()]
        shots = config.num_shots[int(torch.randint(len(config.num_shots), (1,), generator=g))]
        extra = max(config.pool_shots - shots, 0)
        parts = {"support": [], "query": [], "extra": []}
        for row, c in enumerate(chosen):
            idx = by_class[c]
            need = shots + config.num_queries + extra
            if len(idx) < need:
                raise ValueError(
                    f"{features.name}: class {c} has {len(idx)} images, an episode needs {need} "
                    f"(K={shots} + Q={config.num_queries} + pool extra {extra})."
                )
            pick = idx[torch.randperm(len(idx), generator=g)[:need]]
            for name, chunk in zip(parts, pick.split([shots, config.num_queries, extra])):
                parts[name].append((chunk, torch.full((len(chunk),), row)))

        support, query = _gather(features, parts["support"]), _gather(features, parts["query"])
        pool = support
        if extra:
            more = _gather(features, parts["extra"])
            pool = (torch.cat([support[0], more[0]]), torch.cat([support[1], more[1]]))
        task = HeadTask(f"{prefix}-{e:05d}", support, query, pool, chosen, config)
        # Provenance, for leakage checks: which feature set, domain and images the episode was drawn from.
        task.source, task.domain = features.name, domain
        task.image_indices = {k: torch.cat([i for i, _ in v]) if v else torch.zeros(0, dtype=torch.long)
                              for k, v in parts.items()}  # fmt: skip
        tasks.append(task)
    return tasks


def _gather(features: FeatureSet, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(image indices, head rows) per class → stacked features and labels."""
    return features.features[torch.cat([i for i, _ in parts])], torch.cat([r for _, r in parts])


@dataclass
class EpisodeBatch:
    """Episodes of one shape stacked for batched methods: support (E, N·K, d), query (E, N·Q, d), labels alike."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    num_ways: int
    steps_per_epoch: int = 1  # the episodes' trajectory recipe, which the per-task reference follows
    feature_noise: float = 0.0

    @classmethod
    def stack(cls, tasks: Sequence[HeadTask], pool: bool = False) -> EpisodeBatch:
        """Stack episodes; ``pool=True`` puts each episode's training pool in the support slot (meta-training)."""
        shapes = {(t.num_ways, (t.pool_x if pool else t.support_x).shape[0], t.query_x.shape[0]) for t in tasks}
        if len(shapes) != 1:
            raise ValueError(f"episodes of one batch must share (N, N·K, N·Q); got {sorted(shapes)}.")
        return cls(
            torch.stack([t.pool_x if pool else t.support_x for t in tasks]),
            torch.stack([t.pool_y if pool else t.support_y for t in tasks]),
            torch.stack([t.query_x for t in tasks]),
            torch.stack([t.query_y for t in tasks]),
            tasks[0].num_ways,
            tasks[0].config.steps_per_epoch,
            tasks[0].config.feature_noise,
        )

    def __getitem__(self, index: slice) -> EpisodeBatch:
        """A sub-batch of episodes."""
        return EpisodeBatch(
            self.support_x[index], self.support_y[index], self.query_x[index], self.query_y[index],
            self.num_ways, self.steps_per_epoch, self.feature_noise,
        )  # fmt: skip

    @property
    def prototypes(self) -> torch.Tensor:
        return prototypes(self.support_x, self.support_y, self.num_ways)  # (E, N, d)

    def accuracy(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-episode query accuracy of heads (E, N, d) / (E, N): (E,); each episode as :meth:`HeadTask.evaluate`
        scores it."""
        return head_accuracy(params, self.query_x, self.query_y)
