"""One-pass hypernetwork (Text-to-LoRA style): condition → weights in a single forward pass. It shares the generator's
codec and denoiser architecture (same width and depth), fed a zero sample at step 0, so "diffusion vs one pass"
compares like with like. Two ways to train it (SPEC §4): by regression on the zoo's final weights (``hypernetwork``),
or end to end through the training tasks' own loss (Text-to-LoRA's SFT: ``t2l_sft`` / ``hypernetwork_sft``), the
one-pass functional baseline a functionally trained diffusion generator has to beat."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from peft_mcdi.generator.anchor import ANCHORS, AnchoredDecoding
from peft_mcdi.generator.codec import WeightCodec
from peft_mcdi.generator.model import GeneratorConfig, McDiGenerator, denoiser_for_codec
from peft_mcdi.meta.data import ZooTensors
from peft_mcdi.meta.resumable import train_resumable
from peft_mcdi.tasks.base import Task
from peft_mcdi.utils import stable_hash


class OnePassHypernetwork(AnchoredDecoding, nn.Module):
    """The one-pass network of a generator's config: its codec, denoiser architecture and anchor (:meth:`like`
    also copies a generator's codec statistics and anchor scale)."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.codec = WeightCodec.from_config(config.codec)
        self.net = denoiser_for_codec(config.denoiser, self.codec, num_train_timesteps=1)
        self.anchor = ANCHORS[config.anchor]() if config.anchor else None

    @classmethod
    def like(cls, generator: McDiGenerator) -> OnePassHypernetwork:
        """An untrained one-pass network with ``generator``'s architecture, codec statistics, anchor and device."""
        network = cls(generator.config)
        network.codec.load_state_dict(generator.codec.state_dict())
        if generator.anchor is not None:
            network.anchor.load_state_dict(generator.anchor.state_dict())
        return network.to(generator.device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        """Conditions (B, C) [(B, N, C)] → normalised weight vectors (B, D)."""
        num_rows = condition.shape[-2] if self.codec.row_tokens else None
        layout = None if self.config.denoiser.type == "mlp" else self.codec.token_layout(num_rows)
        B = condition.shape[0]
        zeros = condition.new_zeros(B, self.codec.dim(num_rows))
        return self.net(zeros, torch.zeros(B, dtype=torch.long, device=condition.device), condition, layout=layout)

    @torch.inference_mode()
    def generate(self, condition: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weights for conditions on any device, on the network's device (as ``McDiGenerator.generate``)."""
        condition = condition.to(self.device, torch.float32)
        return self.decode(self(condition), condition)

    def fit(
        self,
        data: ZooTensors,
        num_steps: int = 2000,
        batch_size: int = 32,
        lr: float = 1e-3,
        seed: int = 0,
        progress: bool = True,
    ) -> list[float]:
        """Regress the final local target θ⁽ᵏ⁾ (codec space) from the condition with Adam; returns the loss curve."""

        def loss(rows: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            return (self(data.conditions[rows].to(self.device)) - data.targets[rows, -1].to(self.device)).pow(2).mean()

        return self._train(data, loss, num_steps, batch_size, lr, seed, progress, "hypernetwork")

    def fit_functional(
        self,
        data: ZooTensors,
        tasks: Sequence[Task],
        num_steps: int = 2000,
        batch_size: int = 8,
        lr: float = 1e-3,
        seed: int = 0,
        progress: bool = True,
        checkpoint_dir: str | Path | None = None,
    ) -> list[float]:
        """Train through the task loss: per step, ``batch_size`` training tasks (``tasks`` in the order of
        ``data.task_ids``), each scored on one batch of its examples by the weights decoded from its condition —
        ``num_steps × batch_size`` base-model passes. The zoo gives only the conditions and the codec's scale.
        With ``checkpoint_dir``, the state is saved every hundred steps and a rerun resumes it
        (on a real base model this baseline takes about an hour on a CPU core)."""
        if [t.task_id for t in tasks] != list(data.task_ids):
            raise ValueError("tasks must be the zoo's training tasks in the order of data.task_ids.")

        def loss(rows: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            chosen = [tasks[i] for i in rows.tolist()]
            batches = [next(iter(t.train_batches(0, g))) for t in chosen]
            conditions = data.conditions[rows].to(self.device)
            return type(chosen[0]).grouped_loss(chosen, self.decode(self(conditions), conditions), batches).mean()

        return self._train(
            data, loss, num_steps, batch_size, lr, seed, progress, "hypernetwork (task loss)", checkpoint_dir
        )

    def _train(
        self, data, loss_of_rows, num_steps, batch_size, lr, seed, progress, desc, checkpoint_dir=None
    ) -> list[float]:
        self.net.fit_condition_statistics(data.conditions)  # the same condition scaling as the generator's
        identity = stable_hash([desc, batch_size, lr, seed, list(data.task_ids)])
        return train_resumable(
            self.net, loss_of_rows, len(data), num_steps, batch_size, lr, seed, identity, desc, progress,
            checkpoint_dir,
        )  # fmt: skip
