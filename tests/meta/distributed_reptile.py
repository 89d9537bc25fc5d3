"""Run a few Reptile outer steps under accelerate and save the generator's parameters (used by test_distributed).

    python tests/meta/distributed_reptile.py OUT.safetensors
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \
        tests/meta/distributed_reptile.py OUT.safetensors
"""

import sys

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from peft_mcdi.generator.denoisers import DenoiserConfig
from peft_mcdi.generator.model import GeneratorConfig, McDiGenerator
from peft_mcdi.generator.schedulers import SchedulerConfig
from peft_mcdi.meta.data import ZooTensors
from peft_mcdi.meta.trainer import MetaTrainConfig, MetaTrainer


def main(out: str, algorithm: str) -> None:
    torch.set_num_threads(1)  # same thread count in every layout: identical kernels
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    gen = McDiGenerator(
        GeneratorConfig(
            codec={"shapes": {"w": [7]}},
            condition_dropout=0.2,
            denoiser=DenoiserConfig(condition_dim=3, hidden_dim=16, num_layers=2),
        ),
        SchedulerConfig(num_train_timesteps=10, num_segments=3),
    )
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    g = torch.Generator().manual_seed(1)
    data = ZooTensors(
        [f"t{i}" for i in range(10)], torch.randn(10, 3, 7, generator=g), torch.randn(10, 3, generator=g)
    )
    config = MetaTrainConfig(
        algorithm=algorithm, num_outer_steps=4, meta_batch_size=4, inner_steps=3, samples_per_task=8, outer_lr=1e-2
    )
    MetaTrainer(gen, data, config, accelerator=accelerator).train(progress=False)
    if accelerator.is_main_process:
        save_file({n: p.detach().contiguous() for n, p in gen.named_parameters()}, out)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "reptile")
