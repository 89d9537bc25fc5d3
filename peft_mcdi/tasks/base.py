"""The task abstraction and its registry, which know no family. Tasks as objects (learn2learn style): a ``Task``
knows its condition, its shared initialisation, its loss, its training batches and its held-out metric; a
``TaskSet`` is a list of tasks that can be sampled; ``get_tasksets`` builds the registered families by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


class Task(ABC):
    """One task of a family. Subclasses set ``task_id`` and ``condition`` and implement the abstract methods."""

    task_id: str
    condition: torch.Tensor  # (C,), or (N, C) for per-class conditions
    metric: str = "loss"  # what evaluate() returns
    # True when the parameters are a set of class rows sharing a free leading class axis (classifier heads, with
    # one condition per class): generators then use the codec's rows layout (SPEC §3.2).
    class_rows: bool = False
    higher_is_better: bool = False

    @abstractmethod
    def init_params(self) -> dict[str, torch.Tensor]:
        """θ₀, shared by all tasks of the family (SPEC §3.1)."""

    @abstractmethod
    def loss(self, params: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
        """Training loss of ``params`` on one batch (differentiable)."""

    @abstractmethod
    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterable[Any]:
        """The batches of one training epoch, shuffled with ``generator``."""

    @abstractmethod
    def evaluate(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Held-out metric on the task's test data; params may carry leading batch dims, the result has them."""

    @classmethod
    def grouped_loss(
        cls, tasks: Sequence[Task], params: dict[str, torch.Tensor], batches: Sequence[Any]
    ) -> torch.Tensor:
        """(G,) losses of ``params[g]`` (a leading group axis) on ``batches[g]`` under ``tasks[g]``, differentiable:
        how meta-training's functional term scores many generated weights at once. This default calls ``loss`` once
        per group; families whose tasks share a model override it with one vectorised pass."""
        return torch.stack(
            [t.loss({k: v[g] for k, v in params.items()}, b) for g, (t, b) in enumerate(zip(tasks, batches))]
        )

    @classmethod
    @torch.no_grad()
    def evaluate_group(cls, tasks: Sequence[Task], params: Sequence[dict[str, torch.Tensor]]) -> list[float]:
        """``tasks[g].evaluate(params[g])`` for every g. This default evaluates one task at a time; families whose
        evaluation is a pass of a shared model override it with one batched pass (generated answers: one decode)."""
        return [float(t.evaluate(p)) for t, p in zip(tasks, params, strict=True)]

    def augment(self, batch: Any, generator: torch.Generator) -> Any:
        """Data augmentation hook applied to every training batch; identity unless the data allows more."""
        return batch


class TaskSet(Sequence[Task]):
    """An ordered collection of tasks with seeded sampling."""

    def __init__(self, tasks: Sequence[Task], name: str = "") -> None:
        ids = [t.task_id for t in tasks]
        if len(set(ids)) != len(ids):
            raise ValueError(f"task ids in task set {name!r} are not unique.")
        self.tasks = list(tasks)
        self.name = name

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index):
        return self.tasks[index]

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def sample(self, n: int, generator: torch.Generator) -> list[Task]:
        """n tasks drawn uniformly with replacement."""
        idx = torch.randint(len(self.tasks), (n,), generator=generator)
        return [self.tasks[i] for i in idx.tolist()]

    def conditions(self) -> torch.Tensor:
        return torch.stack([t.condition for t in self.tasks])


# Two classes tie when their scores differ by less than this fraction of the size of the terms they were summed from
# (when that is not known, of the row's largest |score|). Classes with identical head rows (the mean-of-zoo baseline, a
# zero head) get scores that differ only by float rounding, and which one rounds higher depends on the summation
# order, i.e. on the CPU's kernels (AVX2 or AVX-512, Intel or AMD, blocked or not): a plain argmax then picks a class
# at the kernels' whim and the accuracy moves with the machine. A float32 dot product, however it is summed, lands
# within a few 1e-7 of its terms' total size (measured ≤ 2.2e-7 for d = 128…1280 through mv, mm, blocked and
# sequential sums); real margins between classes are orders of magnitude larger, so this only merges classes that
# are equal up to rounding, and a real near-tie it merged would only be scored at its expected value under a random
# tie-break. The size must be the terms', not the score's: a score that nearly cancels (x·w ≈ 0 with large terms)
# carries a rounding error far larger than itself.
TIE_RTOL = 1e-5


def accuracy(
    scores: torch.Tensor, labels: torch.Tensor, magnitude: torch.Tensor | None = None, rtol: float = TIE_RTOL
) -> torch.Tensor:
    """Classification accuracy with ties broken at random, in expectation: scores (…, n, C), labels (…, n) → (…).

    An example scores 1/k when its label is among the k classes whose score is within ``rtol`` × size of the row's
    maximum, else 0; a row with a NaN scores 0. The size is the largest of the row's ``magnitude`` (broadcastable to
    ``scores``: the summed size of each score's terms, e.g. |x|·|w| + |b| for a linear head), by default the row's
    largest |score|; a row of exact zeros ties fully. Without ties this is the fraction of argmax predictions that
    are right; with them it does not depend on the CPU's kernels (see ``TIE_RTOL``)."""
    size = (scores if magnitude is None else torch.broadcast_to(magnitude, scores.shape)).abs().amax(-1, keepdim=True)
    top = scores.max(-1, keepdim=True).values
    tied = (scores == top) | (scores >= top - rtol * size)  # the first term keeps ±inf maxima (inf − inf is nan)
    hit = tied.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return (hit.float() / tied.sum(-1).clamp(min=1)).mean(-1)


@dataclass
class TaskSets:
    """Task-level splits. ``test`` tasks must never feed the generator's training (SPEC §4); ``extra`` holds further
    held-out splits reported under their own names (e.g. tasks of a type no training task has)."""

    train: TaskSet
    test: TaskSet
    extra: dict[str, TaskSet] = field(default_factory=dict)


_REGISTRY: dict[str, Callable[..., TaskSets]] = {}


def register_tasksets(name: str) -> Callable:
    def wrap(fn: Callable[..., TaskSets]) -> Callable[..., TaskSets]:
        _REGISTRY[name] = fn
        return fn

    return wrap


def get_tasksets(name: str, **kwargs) -> TaskSets:
    """Build a registered task family's train/test split, e.g. ``get_tasksets("logistic", num_train_tasks=400)``.
    The built-in families register themselves when ``peft_mcdi.tasks`` is imported, which Python does before it
    runs this module; a family of your own registers with ``@register_tasksets(name)`` before it is asked for."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task set {name!r}; valid names: {sorted(_REGISTRY)}.")
    return _REGISTRY[name](**kwargs)
