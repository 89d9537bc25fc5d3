"""Trajectory recorder: train each task from the shared θ₀ with Adam (or SGD) wrapped in SAM, keep θ₀ and the local
targets (or every epoch), and write them to a :class:`~peft_mcdi.zoo.store.ZooStore` (SPEC §3.1)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch

import torch
from tqdm.auto import tqdm

from peft_mcdi.generator.schedulers import local_target_epochs
from peft_mcdi.tasks.base import Task
from peft_mcdi.utils import DictConfigMixin, stable_hash
from peft_mcdi.zoo.sam import SAM
from peft_mcdi.zoo.store import ZooStore


# name → (torch optimizer, its arguments besides lr and weight decay)
BASE_OPTIMIZERS = {"adam": (torch.optim.Adam, {}), "sgd": (torch.optim.SGD, {"momentum": 0.9})}


@dataclass
class RecorderConfig(DictConfigMixin):
    """How each task's trajectory is trained and what is kept. Part of the zoo's cache key."""

    num_epochs: int = field(default=10, metadata={"help": "M, training epochs per task."})
    lr: float = field(default=0.05, metadata={"help": "Learning rate of the base optimizer."})
    rho: float = field(default=0.05, metadata={"help": "SAM radius ρ (0 disables the ascent step)."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the base optimizer."})
    keep_every_epoch: bool = field(
        default=True,
        metadata={"help": "Keep all M+1 checkpoints (any k can be trained later) instead of θ₀ and k targets only."},
    )
    num_segments: int = field(
        default=3, metadata={"help": "k, used to pick the targets when not keeping every epoch."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of batch order and augmentation (mixed with the task id)."})
    frozen: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Glob patterns of parameters kept at θ₀, e.g. ['*lora_A*'] for LoRA-FA (A frozen, only B and "
            "the head trained): every trajectory then moves in the span of one fixed A, so task deltas share a basis.",
            "omit_default": True,
        },
    )
    optimizer: str = field(
        default="adam",
        metadata={
            "help": "Base optimizer inside SAM: 'adam', or 'sgd' (momentum 0.9). Adam moves every coordinate by about "
            "lr per step whatever its gradient, so coordinates the task barely touches drift at random; SGD moves "
            "them in proportion to the gradient, which keeps task deltas closer to the (low-rank) task signal.",
            "omit_default": True,
        },
    )

    tasks_per_pass: int = field(
        default=1,
        metadata={
            "help": "Tasks trained side by side, one grouped pass of the shared base model per step "
            "(Task.grouped_loss): the same trajectories up to float rounding, G times fewer passes, which a GPU "
            "needs (one task's small batches leave it idle). Needs rho = 0: SAM's radius is per task.",
            "omit_default": True,
        },
    )

    def __post_init__(self) -> None:
        if self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {self.num_epochs}.")
        if self.tasks_per_pass < 1 or (self.tasks_per_pass > 1 and self.rho > 0):
            raise ValueError(
                f"tasks_per_pass must be >= 1, and 1 when rho > 0 (SAM's ascent is per task); got tasks_per_pass="
                f"{self.tasks_per_pass}, rho={self.rho}."
            )
        if not self.keep_every_epoch and not 1 <= self.num_segments <= self.num_epochs:
            raise ValueError(f"num_segments must be in [1, num_epochs={self.num_epochs}], got {self.num_segments}.")

        if self.optimizer not in BASE_OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(BASE_OPTIMIZERS)}, got {self.optimizer!r}.")
        if self.frozen and not isinstance(self.frozen, list):
            raise ValueError(f"frozen must be a list of glob patterns, got {self.frozen!r}.")

    def kept_epochs(self) -> list[int]:
        if self.keep_every_epoch:
            return list(range(self.num_epochs + 1))
        return [0, *local_target_epochs(self.num_epochs, self.num_segments)]


def batch_order_generator(task: Task, config: RecorderConfig) -> torch.Generator:
    """The RNG of a task's batch order and augmentation, seeded by (recorder seed, task id): retraining a task with
    the same recorder config retraces its zoo trajectory exactly."""
    return torch.Generator().manual_seed(int(stable_hash([config.seed, task.task_id]), 16) % (2**63))


def adam_sam_train(
    task: Task,
    config: RecorderConfig,
    params: dict[str, torch.Tensor],
    on_step: Callable[[int, float], None] | None = None,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> None:
    """Train ``params`` (leaf tensors, updated in place) on ``task`` the way every zoo trajectory is trained: the
    base optimizer (Adam by default) wrapped in SAM, ``config.num_epochs`` epochs in the task's seeded batch order.
    ``on_step(epoch, loss)`` runs after every step, ``on_epoch_end(epoch, mean loss)`` after every epoch."""
    generator = batch_order_generator(task, config)
    trainable = []
    for name, value in params.items():
        frozen = any(fnmatch(name, pattern) for pattern in config.frozen)
        value.requires_grad_(not frozen)
        if not frozen:
            trainable.append(value)
    base, arguments = BASE_OPTIMIZERS[config.optimizer]
    optimizer = SAM(trainable, base, rho=config.rho, lr=config.lr, weight_decay=config.weight_decay, **arguments)
    for epoch in range(1, config.num_epochs + 1):
        losses = []
        for batch in task.train_batches(epoch, generator):
            batch = task.augment(batch, generator)

            def closure(batch=batch):
                optimizer.zero_grad()
                loss = task.loss(params, batch)
                loss.backward()
                return loss

            losses.append(float(optimizer.step(closure).detach()))
            if on_step is not None:
                on_step(epoch, losses[-1])
        if on_epoch_end is not None:
            on_epoch_end(epoch, sum(losses) / max(len(losses), 1))


def train_task(task: Task, config: RecorderConfig) -> tuple[dict[int, dict[str, torch.Tensor]], float]:
    """Train one task with SAM around the base optimizer; returns {epoch: params} for the kept epochs and the last
    epoch's mean loss."""
    params = {k: v.clone().requires_grad_(True) for k, v in task.init_params().items()}
    record = _TrajectoryRecord(task.task_id, config, params)
    adam_sam_train(task, config, params, on_epoch_end=lambda epoch, loss: record.end_of_epoch(epoch, loss, params))
    return record.checkpoints, record.last_loss


class _TrajectoryRecord:
    """One task's kept checkpoints (θ₀ first) and last epoch loss; a diverged epoch is an error naming the task."""

    def __init__(self, task_id: str, config: RecorderConfig, params: dict[str, torch.Tensor]) -> None:
        self.task_id, self.keep = task_id, set(config.kept_epochs())
        self.checkpoints = {0: {k: v.detach().clone() for k, v in params.items()}}
        self.last_loss = float("nan")

    def end_of_epoch(self, epoch: int, epoch_loss: float, params: dict[str, torch.Tensor]) -> None:
        if not all(torch.isfinite(v).all() for v in params.values()) or epoch_loss != epoch_loss:
            raise FloatingPointError(
                f"task {self.task_id!r} diverged at epoch {epoch} (loss {epoch_loss}); lower RecorderConfig.lr."
            )
        if epoch in self.keep:
            self.checkpoints[epoch] = {k: v.detach().clone() for k, v in params.items()}
        self.last_loss = epoch_loss


def train_task_group(
    tasks: Sequence[Task], config: RecorderConfig
) -> list[tuple[dict[int, dict[str, torch.Tensor]], float]]:
    """:func:`train_task` for several tasks of one family at once: their parameters stacked on a leading group
    axis, each step one grouped pass (:meth:`~peft_mcdi.tasks.base.Task.grouped_loss`) on every task's own next
    batch, in its own seeded order. Adam and SGD act elementwise and every task steps together, so each trajectory
    is its single-task one up to float rounding. Needs ``config.rho == 0`` and tasks with as many batches per
    epoch (the family's fixed training-set size)."""
    if config.rho > 0:
        raise ValueError(
            f"train_task_group trains without SAM's ascent (its radius is per task), got rho={config.rho}."
        )
    starts = [t.init_params() for t in tasks]
    params = {k: torch.stack([p[k] for p in starts]) for k in starts[0]}
    trainable = [v.requires_grad_() for k, v in params.items() if not any(fnmatch(k, f) for f in config.frozen)]
    base, arguments = BASE_OPTIMIZERS[config.optimizer]
    optimizer = base(trainable, lr=config.lr, weight_decay=config.weight_decay, **arguments)
    generators = [batch_order_generator(t, config) for t in tasks]
    records = [_TrajectoryRecord(t.task_id, config, s) for t, s in zip(tasks, starts)]
    for epoch in range(1, config.num_epochs + 1):
        losses = []
        epochs = [t.train_batches(epoch, g) for t, g in zip(tasks, generators)]
        for batches in itertools.zip_longest(*epochs):
            if any(b is None for b in batches):
                raise ValueError("train_task_group needs tasks with as many training batches per epoch.")
            batches = [t.augment(b, g) for t, b, g in zip(tasks, batches, generators)]
            optimizer.zero_grad()
            loss = type(tasks[0]).grouped_loss(tasks, params, batches)
            loss.sum().backward()  # task g's loss depends on params[g] only: one backward, every gradient
            optimizer.step()
            losses.append(loss.detach())
        mean = torch.stack(losses).mean(0).tolist()
        for g, record in enumerate(records):
            record.end_of_epoch(epoch, mean[g], {k: v[g] for k, v in params.items()})
    return [(r.checkpoints, r.last_loss) for r in records]


def collect(
    tasks: Sequence[Task],
    store: ZooStore,
    config: RecorderConfig,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> list[str]:
    """Record every task not yet in ``store``; with several processes, process ``rank`` takes tasks rank::world_size.

    Finished tasks are skipped, so rerunning after an interruption continues where it stopped. Returns the ids
    recorded by this call.
    """
    mine = list(tasks)[rank::world_size]
    todo = [t for t in mine if not store.has(t.task_id)]
    done = []
    bar = tqdm(total=len(todo), desc=f"collect [{rank}/{world_size}]", unit="task", disable=not progress or not todo)
    size = config.tasks_per_pass
    for start in range(0, len(todo), size):
        group = todo[start : start + size]
        trained = train_task_group(group, config) if size > 1 else [train_task(group[0], config)]
        for task, (checkpoints, final_loss) in zip(group, trained):
            store.write(
                task.task_id, checkpoints, task.condition, {"final_loss": final_loss, "num_epochs": config.num_epochs}
            )
            done.append(task.task_id)
            bar.update()
            bar.set_postfix(loss=f"{final_loss:.3f}")
    bar.close()
    return done
