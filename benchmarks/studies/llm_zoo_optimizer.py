"""Does a zoo trained with SGD instead of Adam give adapters that differ less at random between tasks?

The WordNet generators fail because the description explains little of a trained adapter: Adam moves every LoRA
coordinate by about lr per step whatever its gradient, so most of each task's delta is per-coordinate noise, nearly
orthogonal between tasks (``llm_adapter_anatomy.py``). SGD (momentum 0.9, still inside SAM) moves each coordinate in
proportion to its gradient. On a few categories of the benchmark's task split this trains each task from θ₀ with the
zoo's recipe (``recorder``) and with SGD at several learning rates, and reports each task's own accuracy and the
structure of the deltas: energy shared by all tasks and mean |cos| of the centred deltas (higher: more common
structure for a generator to learn). For n deltas with nothing in common both are about 1/n, the level the report
prints beside them.

    python benchmarks/studies/llm_zoo_optimizer.py --base minilm --seed 0
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.studies.llm_adapter_anatomy import delta_structure  # noqa: E402
from peft_mcdi.evaluation.llm import LLMBenchConfig  # noqa: E402
from peft_mcdi.pipeline import build_tasksets  # noqa: E402
from peft_mcdi.utils import atomic_write_text  # noqa: E402
from peft_mcdi.zoo.recorder import RecorderConfig, train_task  # noqa: E402


RESULTS = Path(__file__).with_name("results")


def optimizer_row(tasks: list, recorder: RecorderConfig) -> dict:
    """Train every task from θ₀ with ``recorder``; own test accuracy and the structure of the final deltas."""
    start = time.perf_counter()
    accuracies, deltas = [], []
    for task in tasks:
        checkpoints, _ = train_task(task, recorder)
        theta0, last = checkpoints[0], checkpoints[max(checkpoints)]
        accuracies.append(float(task.evaluate(last)))
        deltas.append(torch.cat([(last[n] - theta0[n]).flatten() for n in sorted(last)]))
    deltas = torch.stack(deltas)
    return {
        "accuracy": statistics.fmean(accuracies),
        "per_task_accuracy": accuracies,
        "delta_rms": float(deltas.pow(2).mean().sqrt()),
        **delta_structure(deltas),
        "seconds": time.perf_counter() - start,
    }


def markdown(record: dict) -> str:
    lines = [
        f"# Zoo optimizer on {record['base']} (seed {record['seed']}, {record['num_tasks']} categories)",
        "",
        f"`{record['command']}`. Each category trained from θ₀ for the zoo's {record['recorder']['num_epochs']} "
        "epochs, SAM ρ = " + f"{record['recorder']['rho']}; accuracy on the category's own test words.",
        "",
        f"Deltas with nothing in common: energy shared ≈ 1/n = {1 / record['num_tasks']:.3f}, mean |cos| of the "
        f"centred deltas ≈ 1/(n − 1) = {1 / (record['num_tasks'] - 1):.3f}.",
        "",
        "| optimizer | lr | own accuracy | delta rms | energy shared | mean abs cos (centred) | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        lines.append(
            f"| {row['optimizer']} | {row['lr']} | {100 * row['accuracy']:.1f} | {row['delta_rms']:.4f} | "
            f"{row['delta_energy_shared_across_tasks']:.3f} | {row['mean_abs_cos_centred_deltas']:.3f} | "
            f"{row['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="minilm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", type=int, default=24, help="categories: half held-out, half training")
    parser.add_argument("--sgd-lrs", type=float, nargs="+", default=[0.03, 0.1, 0.3])
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()
    pipeline = LLMBenchConfig.for_base(args.base).pipeline(args.seed, "mcdi")
    tasksets = build_tasksets(pipeline)
    half = args.tasks // 2
    tasks = list(tasksets.test)[:half] + list(tasksets.train)[: args.tasks - half]
    zoo = pipeline.recorder.to_dict()
    settings = [(pipeline.recorder.optimizer, pipeline.recorder.lr)] + [("sgd", lr) for lr in args.sgd_lrs]
    record = {
        "command": "python benchmarks/studies/llm_zoo_optimizer.py " + " ".join(sys.argv[1:]),
        "base": args.base,
        "seed": args.seed,
        "num_tasks": len(tasks),
        "task_ids": [t.task_id for t in tasks],
        "recorder": zoo,
        "rows": [],
    }
    for optimizer, lr in settings:
        row = optimizer_row(tasks, RecorderConfig.from_dict({**zoo, "optimizer": optimizer, "lr": lr}))
        record["rows"].append({"optimizer": optimizer, "lr": lr, **row})
        print(json.dumps({k: v for k, v in record["rows"][-1].items() if k != "per_task_accuracy"}), flush=True)
    stem = Path(args.out_dir) / f"llm_{args.base}_zoo_optimizer"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(record, indent=1))
    atomic_write_text(stem.with_suffix(".md"), markdown(record))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
