"""The whole Mc-Di pipeline from one YAML file: collect the trajectory zoo → meta-train the generator → generate for
the held-out tasks and evaluate → save the generator (with its model card) and results.json.

    python examples/train.py                                     # examples/configs/logistic.yaml, ~1 min on 2 cores
    python examples/train.py --config examples/configs/wordnet_minilm.yaml output_dir=runs/wordnet
    python examples/train.py meta.num_outer_steps=300 output_dir=runs/quick     # dotted KEY=VALUE overrides
    accelerate launch examples/train.py                          # one process, as configured by `accelerate config`
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        examples/train.py                                        # two CPU processes over gloo (or two GPUs)
    python examples/train.py --help                              # every config key, its meaning and default

Rerun the same command after an interruption (even SIGKILL) and it continues: finished zoo tasks are not
recollected, meta-training resumes from the last checkpoint in <output_dir>/train. This script is `mcdi train` with
examples/configs/logistic.yaml as its default config.
"""

import sys
from pathlib import Path

from peft_mcdi.cli import main


DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "logistic.yaml"


def run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", str(DEFAULT_CONFIG), *argv]
    return main(argv, prog="train.py", command="train")


if __name__ == "__main__":
    sys.exit(run())
