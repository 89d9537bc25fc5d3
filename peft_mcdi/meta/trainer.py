"""Meta-training of the generator: Reptile (bi-level, SPEC §3.4) and the single-level baseline, under accelerate.

One outer step, both algorithms:

1. The meta-batch has ``meta_batch_size`` slots. Slot j of outer step s draws its task and all its noise from a
   generator seeded by (seed, s, j), so the numbers do not depend on how slots are spread over processes.
2. Each process evaluates its slots (j ≡ rank mod world) at once with ``torch.func.vmap``:
   - Reptile: ``inner_steps`` SGD steps at ``inner_lr`` from φ on the slot's task → the delta φ_j − φ.
   - single-level: the gradient of the slot's loss at φ.
   With ``functional_weight`` λ > 0 each slot's loss gains λ·(task loss of its decoded clean estimate), SPEC §3.7
   (:mod:`peft_mcdi.meta.functional`): it runs through the task's own model, outside the vmapped diffusion loss,
   for all slots in one pass.
3. The per-slot results are summed over processes (one all-reduce of a flat vector) and averaged, giving the outer
   pseudo-gradient: Reptile ``φ − mean_j φ_j``, single-level ``mean_j ∇L_j(φ)``. It is written to ``.grad`` and an
   ordinary optimizer steps: plain SGD at ζ reproduces φ ← φ + ζ·mean_j(φ_j − φ); Adam converges in small budgets.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file
from torch.func import functional_call, grad_and_value, vmap
from tqdm.auto import tqdm

from peft_mcdi.generator.model import CONFIG_NAME, WEIGHTS_NAME, GeneratorConfig, McDiGenerator, upgrade_state
from peft_mcdi.meta.data import ZooTensors
from peft_mcdi.meta.functional import FunctionalDraw, draw_functional, functional_losses
from peft_mcdi.meta.losses import LossNoise, draw_loss_noise
from peft_mcdi.tasks.base import Task
from peft_mcdi.utils import DictConfigMixin, atomic_write, atomic_write_text, stable_hash


ALGORITHMS = ("reptile", "single_level")
FUNCTIONAL_INPUTS = ("noised_target", "pure_noise")
LATEST_NAME = "latest"
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"


@dataclass
class MetaTrainConfig(DictConfigMixin):
    """Outer/inner loop settings; names follow SPEC §3 (paper values in the help strings)."""

    algorithm: Literal["reptile", "single_level"] = field(
        default="reptile", metadata={"help": f"One of {ALGORITHMS}: bi-level Reptile or plain multi-task training."}
    )
    num_outer_steps: int = field(default=2000, metadata={"help": "Outer (meta) steps."})
    meta_batch_size: int = field(default=8, metadata={"help": "Tasks per outer step."})
    inner_steps: int = field(default=3, metadata={"help": "Reptile inner SGD steps per task (paper: 3)."})
    inner_lr: float = field(default=0.005, metadata={"help": "η, Reptile inner learning rate (paper: 0.005)."})
    outer_optimizer: Literal["sgd", "adam"] = field(
        default="adam", metadata={"help": "Optimizer fed the pseudo-gradient; 'sgd' reproduces the paper's update."}
    )
    outer_lr: float = field(default=1e-3, metadata={"help": "ζ, outer learning rate (paper: 0.001 with SGD)."})
    samples_per_task: int = field(
        default=32, metadata={"help": "(segment, step, noise) draws per task per loss evaluation."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of task sampling and diffusion noise."})
    functional_weight: float = field(
        default=0.0,
        metadata={
            "help": "λ of the functional term (SPEC §3.7): the task loss of the weights decoded from the denoiser's "
            "clean estimate, on one batch of the task's examples, added to the diffusion loss. 0: the paper's Mc-Di.",
            "omit_default": True,
        },
    )
    functional_samples: int = field(
        default=4,
        metadata={
            "help": "Noise draws per task whose clean estimates the functional term scores.",
            "omit_default": True,
        },
    )
    functional_input: Literal["noised_target", "pure_noise"] = field(
        default="noised_target",
        metadata={
            "help": "What the denoiser sees in the functional term: 'noised_target', x_t ~ q(x_t | θ⁽ᵏ⁾) at t uniform "
            "in 1..T (as in the diffusion loss); 'pure_noise', ε at t = T, the sampler's first step, so that the "
            "weights can only come from the condition (noised targets let it read them back from x_t).",
            "omit_default": True,
        },
    )
    checkpoint_every: int = field(default=0, metadata={"help": "Checkpoint every N outer steps (0: only at the end)."})
    log_every: int = field(default=50, metadata={"help": "Average and log the loss every N outer steps."})

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}.")
        if self.outer_optimizer not in ("sgd", "adam"):
            raise ValueError(f"outer_optimizer must be 'sgd' or 'adam', got {self.outer_optimizer!r}.")
        for name in ("num_outer_steps", "meta_batch_size", "inner_steps", "samples_per_task", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not self.functional_weight >= 0:
            raise ValueError(f"functional_weight must be >= 0 (0: off), got {self.functional_weight!r}.")
        if self.functional_samples < 1:
            raise ValueError(f"functional_samples must be >= 1, got {self.functional_samples}.")
        if self.functional_input not in FUNCTIONAL_INPUTS:
            raise ValueError(f"functional_input must be one of {FUNCTIONAL_INPUTS}, got {self.functional_input!r}.")


def slot_generator(seed: int, step: int, slot: int) -> torch.Generator:
    """The RNG of one (outer step, meta-batch slot): identical in every process layout."""
    return torch.Generator().manual_seed(int(stable_hash([seed, step, slot]), 16) % (2**63))


class MetaTrainer:
    """Trains ``generator`` on ``data`` (the zoo in codec space). Pass an ``accelerate.Accelerator`` to spread the
    meta-batch over its processes; ``output_dir`` enables checkpoints and resume; ``tasks`` (the training tasks, in
    the order of ``data.task_ids``) feed the functional term when ``config.functional_weight > 0``."""

    def __init__(
        self,
        generator: McDiGenerator,
        data: ZooTensors,
        config: MetaTrainConfig,
        accelerator=None,
        output_dir: str | Path | None = None,
        tasks: list[Task] | None = None,
    ) -> None:
        if len(data) == 0:
            raise ValueError("the zoo holds no tasks to train on.")
        if config.functional_weight > 0:
            if tasks is None:
                raise ValueError("functional_weight > 0 scores generated weights on the training tasks: pass tasks=.")
            if [t.task_id for t in tasks] != list(data.task_ids):
                raise ValueError("tasks= must be the zoo's training tasks in the order of data.task_ids.")
            kinds = sorted({type(t).__name__ for t in tasks})
            if len(kinds) > 1:
                raise ValueError(f"tasks= must be of one family (one grouped_loss scores them all), got {kinds}.")
        self.tasks = tasks
        self._pure_noise = config.functional_input == "pure_noise"
        if data.targets.shape[1] != generator.scheduler.num_segments:
            raise ValueError(
                f"zoo targets carry {data.targets.shape[1]} local targets per task, the generator's scheduler "
                f"has num_segments={generator.scheduler.num_segments}."
            )
        self.generator = generator
        self.data = data
        self.config = config
        self.accelerator = accelerator
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world_size = accelerator.num_processes if accelerator is not None else 1
        self.device = accelerator.device if accelerator is not None else generator.device
        self.generator.to(self.device)
        self.params = dict(self.generator.named_parameters())
        opt_cls = torch.optim.SGD if config.outer_optimizer == "sgd" else torch.optim.Adam
        self.optimizer = opt_cls(self.params.values(), lr=config.outer_lr)
        self.step = 0
        self.history: list[dict] = []
        # Seconds spent in outer steps, over every session of a resumed run (saved with each checkpoint): a
        # re-evaluation or a run stopped and resumed still reports what the generator cost to train.
        self.train_seconds = 0.0
        num_rows = data.conditions.shape[1] if generator.codec.row_tokens else None
        self.layout = generator.layout(num_rows)
        self._grad_fn = grad_and_value(self._slot_loss)

    # ------------------------------------------------------------- the loss
    def _slot_loss(self, params, buffers, targets, condition, segments, timesteps, noise, drop) -> torch.Tensor:
        loss_noise = LossNoise(segments, timesteps, noise, drop)
        return functional_call(self.generator, (params, buffers), (targets, condition, loss_noise, self.layout))

    def _draw_slots(self, step: int):
        """This process's slots of outer step ``step``: targets (m, k, D), conditions (m, ...), per inner step a
        tuple of stacked noise tensors (m, n, ...), and per inner step the slots' functional draws (each slot's
        task index and :class:`FunctionalDraw`; none when the term is off, so that λ = 0 draws exactly as before)."""
        cfg, gen = self.config, self.generator
        draws = 1 if cfg.algorithm == "single_level" else cfg.inner_steps
        dim = self.data.targets.shape[-1]
        idx, noise, functional = [], [], [[] for _ in range(draws)]
        for slot in range(self.rank, cfg.meta_batch_size, self.world_size):
            g = slot_generator(cfg.seed, step, slot)
            idx.append(int(torch.randint(len(self.data), (1,), generator=g)))
            noise.append(
                [
                    draw_loss_noise(
                        gen.scheduler,
                        cfg.samples_per_task,
                        dim,
                        g,
                        gen.config.loss_variant,
                        gen.config.condition_dropout,
                    ).as_tuple()
                    for _ in range(draws)
                ]
            )
            if cfg.functional_weight > 0:
                for s in range(draws):
                    draw = draw_functional(gen, self.tasks[idx[-1]], cfg.functional_samples, dim, g, self._pure_noise)
                    functional[s].append((idx[-1], draw))
        stacked = [
            tuple(torch.stack(parts).to(self.device) for parts in zip(*(n[s] for n in noise))) for s in range(draws)
        ]
        rows = torch.tensor(idx)
        return self.data.targets[rows].to(self.device), self.data.conditions[rows].to(self.device), stacked, functional

    def _add_functional(self, grads, losses, params, per_slot: bool, draws: list[tuple[int, FunctionalDraw]]):
        """Add λ·∇(task loss of the decoded clean estimate) and λ·(that loss) to each slot's gradient and loss, at the
        slot's own parameters (``per_slot``: Reptile's fast weights, (m, *shape)) or at the shared φ. One backward
        pass gives every slot's gradient: slot j's loss depends on its own copy of the parameters only."""
        prefix, m = "denoiser.", len(draws)
        own = {
            n[len(prefix) :]: (p if per_slot else p.expand(m, *p.shape)).detach().clone().requires_grad_()
            for n, p in params.items()
            if n.startswith(prefix)
        }
        index = torch.tensor([i for i, _ in draws])
        batches = [FunctionalDraw(d.timesteps.to(self.device), d.noise.to(self.device), d.batch) for _, d in draws]
        with torch.enable_grad():
            values = functional_losses(
                self.generator,
                own,
                self.data.targets[index, -1].to(self.device),
                self.data.conditions[index].to(self.device),
                batches,
                [self.tasks[i] for i in index.tolist()],
                self.layout,
                self._pure_noise,
            )
            term = torch.autograd.grad(values.sum(), list(own.values()), allow_unused=True)
        weight = self.config.functional_weight
        for name, g in zip(own, term):
            if g is not None:
                grads[prefix + name] = grads[prefix + name] + weight * g
        return grads, losses + weight * values.detach()

    # -------------------------------------------------------- one outer step
    def _local_sums(self, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Sum over this process's slots of the Reptile deltas φ_j − φ, or of ∇L_j(φ) (single-level), and of the loss
        at φ. Deltas are accumulated directly rather than as φ_j: φ_j − φ would cancel catastrophically in float32,
        and Adam would amplify that rounding noise (and make N processes disagree with one)."""
        targets, conditions, noise, functional = self._draw_slots(step)
        params = {n: p.detach() for n, p in self.params.items()}
        buffers = dict(self.generator.named_buffers())
        if self.config.algorithm == "single_level":
            grads, losses = vmap(self._grad_fn, in_dims=(None, None, 0, 0, 0, 0, 0, 0))(
                params, buffers, targets, conditions, *noise[0]
            )
            if functional[0]:
                grads, losses = self._add_functional(grads, losses, params, False, functional[0])
            return {n: g.sum(0) for n, g in grads.items()}, losses.sum()
        m = targets.shape[0]
        delta = {n: p.new_zeros(m, *p.shape) for n, p in params.items()}  # φ_j − φ, (m, *shape)
        first_loss = None
        for inner in range(self.config.inner_steps):  # the inner loop, for all slots at once
            fast = {n: params[n] + delta[n] for n in params}
            grads, losses = vmap(self._grad_fn, in_dims=(0, None, 0, 0, 0, 0, 0, 0))(
                fast, buffers, targets, conditions, *noise[inner]
            )
            if functional[inner]:
                grads, losses = self._add_functional(grads, losses, fast, True, functional[inner])
            delta = {n: delta[n] - self.config.inner_lr * grads[n] for n in delta}
            first_loss = losses.sum() if first_loss is None else first_loss
        return {n: d.sum(0) for n, d in delta.items()}, first_loss

    def _all_reduce(self, sums: dict[str, torch.Tensor], loss: torch.Tensor):
        if self.world_size == 1:
            return sums, loss
        flat = torch.cat([v.reshape(-1) for v in sums.values()] + [loss.reshape(1)])
        flat = self.accelerator.reduce(flat, reduction="sum")
        pieces = flat[:-1].split([v.numel() for v in sums.values()])
        return {n: p.view_as(v) for (n, v), p in zip(sums.items(), pieces)}, flat[-1]

    def outer_step(self) -> float:
        """One meta-update; returns the meta-batch's mean loss at φ (before adaptation)."""
        sums, loss = self._all_reduce(*self._local_sums(self.step))
        mb = self.config.meta_batch_size
        with torch.no_grad():
            for name, p in self.params.items():
                mean = sums[name] / mb
                # Reptile pseudo-gradient φ − mean φ_j = −mean(φ_j − φ) (so SGD gives φ + ζ·mean(φ_j − φ));
                # single-level: mean ∇L_j(φ).
                p.grad = -mean if self.config.algorithm == "reptile" else mean
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(loss) / mb

    # ------------------------------------------------------------------ loop
    def train(self, progress: bool = True) -> list[dict]:
        """Run (or resume) until ``num_outer_steps``; returns the logged history."""
        cfg = self.config
        self.maybe_resume()
        bar = tqdm(
            total=cfg.num_outer_steps,
            initial=self.step,
            desc=f"meta-train ({cfg.algorithm})",
            unit="step",
            disable=not progress or self.rank != 0,
        )
        window = []
        while self.step < cfg.num_outer_steps:
            start = time.perf_counter()
            window.append(self.outer_step())
            self.train_seconds += time.perf_counter() - start
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.num_outer_steps:
                record = {"step": self.step, "loss": sum(window) / len(window)}
                window = []
                self.history.append(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if self.accelerator is not None and self.accelerator.trackers:
                    self.accelerator.log({"train/loss": record["loss"]}, step=self.step)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        return self.history

    # ------------------------------------------------------- checkpoint/resume
    def _identity(self, format_version: int | None = None) -> str:
        """What a checkpoint must match to be resumed: the training config (minus the step budget), the generator
        and its noise schedule, and the data. ``format_version``: the generator's, as a checkpoint written by an
        older peft_mcdi recorded it (the same run, saved under older names)."""
        cfg = {k: v for k, v in self.config.to_dict().items() if k not in ("num_outer_steps", "checkpoint_every")}
        generator = self.generator.config.to_dict()
        if format_version is not None:
            generator["format_version"] = format_version
        schedule = self.generator.scheduler.config.to_dict()
        return stable_hash([cfg, generator, schedule, self.data.task_ids])

    def save_checkpoint(self) -> Path | None:
        """Write checkpoint-<step>/ (generator, optimizer, state), then point ``latest`` at it, then prune."""
        if self.output_dir is None:
            return None
        folder = self.output_dir / f"checkpoint-{self.step}"
        if self.rank == 0:
            self.generator.save_pretrained(folder)
            state = self.optimizer.state_dict()
            atomic_write(folder / OPTIMIZER_NAME, lambda tmp: torch.save(state, tmp))
            meta = {
                "step": self.step,
                "identity": self._identity(),
                "history": self.history,
                "train_seconds": self.train_seconds,
            }
            atomic_write_text(folder / STATE_NAME, json.dumps(meta, indent=2))
            atomic_write_text(self.output_dir / LATEST_NAME, folder.name)
            for old in self.output_dir.glob("checkpoint-*"):
                if old != folder:
                    shutil.rmtree(old, ignore_errors=True)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return folder

    def maybe_resume(self) -> bool:
        """Continue from ``output_dir/latest`` if it exists and was made by the same configuration."""
        if self.output_dir is None or not (self.output_dir / LATEST_NAME).is_file():
            return False
        folder = self.output_dir / (self.output_dir / LATEST_NAME).read_text(encoding="utf-8").strip()
        meta = json.loads((folder / STATE_NAME).read_text(encoding="utf-8"))
        written = GeneratorConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")))
        if meta["identity"] != self._identity(written.format_version):
            raise ValueError(
                f"{self.output_dir} holds a checkpoint of a different training run (other config or zoo); "
                "use another output_dir or delete it."
            )
        state = upgrade_state(load_file(folder / WEIGHTS_NAME, device=str(self.device)), written)
        self.generator.load_state_dict(state, strict=True)
        self.optimizer.load_state_dict(
            torch.load(folder / OPTIMIZER_NAME, map_location=self.device, weights_only=True)
        )
        self.step, self.history = meta["step"], meta["history"]
        self.train_seconds = meta.get("train_seconds", 0.0)  # checkpoints written before it was recorded: 0
        return True
