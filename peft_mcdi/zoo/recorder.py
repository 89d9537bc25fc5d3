"""Trajectory recorder: train each task from the shared θ₀ with Adam (or SGD) wrapped in SAM, keep θ₀ and the local
targets (or every epoch), and write them to a :class:`~peft_mcdi.zoo.store.ZooStore` (SPEC §3.1)."""

from __future__ import annotations

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

    def __post_init__(self) -> None:
        if self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1, got {self.num_epochs}.")
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
    keep = set(config.kept_epochs())
    checkpoints = {0: {k: v.detach().clone() for k, v in params.items()}}
    last_loss = [float("nan")]

    def end_of_epoch(epoch: int, epoch_loss: float) -> None:
        if not all(torch.isfinite(v).all() for v in params.values()) or epoch_loss != epoch_loss:
            raise FloatingPointError(
                f"task {task.task_id!r} diverged at epoch {epoch} (loss {epoch_loss}); lower RecorderConfig.lr."
            )
        if epoch in keep:
            checkpoints[epoch] = {k: v.detach().clone() for k, v in params.items()}
        last_loss[0] = epoch_loss

    adam_sam_train(task, config, params, on_epoch_end=end_of_epoch)
    return checkpoints, last_loss[0]


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
    bar = tqdm(todo, desc=f"collect [{rank}/{world_size}]", unit="task", disable=not progress or not todo)
    for task in bar:
        checkpoints, final_loss = train_task(task, config)
        store.write(
            task.task_id, checkpoints, task.condition, {"final_loss": final_loss, "num_epochs": config.num_epochs}
        )
        done.append(task.task_id)
        bar.set_postfix(loss=f"{final_loss:.3f}")
    return done
