"""What one SmolLM2 word-form step costs, one task at a time and side by side (issue 21: does a seed fit a CPU?).

Interleaved rounds in one process on the benchmark's base (LoRA r 8 on q/v, 30 layers), seed 0's split: a
training step of one task (16 answers, forward and backward), a grouped step of ``--tasks`` tasks (the zoo's
``RecorderConfig.tasks_per_pass``, one pass of the shared base through the per-row adapters), the exact match of one
task's test words (greedy decode) and of ``--tasks`` tasks' test words in one batched decode
(``Task.evaluate_group``). Medians over rounds; ``--device cuda`` on a GPU machine.

    python benchmarks/studies/wordforms_step_cost.py                 # one thread, about 5 minutes
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.tasks.text_generation import wordform_tasksets  # noqa: E402
from peft_mcdi.utils import atomic_write_text, compute_device  # noqa: E402


RESULTS = Path(__file__).with_name("results")


def timed(fn) -> float:
    if compute_device().type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if compute_device().type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=4, help="tasks side by side in the grouped rows")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", help="e.g. cuda (sets $MCDI_DEVICE)")
    parser.add_argument("--out", default=str(RESULTS / "wordforms_step_cost.json"))
    args = parser.parse_args()
    if args.device:
        os.environ["MCDI_DEVICE"] = args.device
    tasks = list(wordform_tasksets("smollm2", 48, 12, 8, ("q_proj", "v_proj"), 0, 128).test[: args.tasks])
    shared, g = tasks[0].shared, torch.Generator().manual_seed(0)
    batches = [next(iter(t.train_batches(1, g))) for t in tasks]
    stacked = {k: torch.stack([v] * len(tasks)).requires_grad_() for k, v in shared.theta0.items()}
    single = {k: v.clone().requires_grad_() for k, v in shared.theta0.items()}
    tasks[0].evaluate(shared.theta0)  # loads the exact-match metric, which the first evaluation would otherwise time
    cases = {
        "train_step_one_task_s": lambda: shared.loss(single, batches[0]).backward(),
        "train_step_grouped_s": lambda: type(tasks[0]).grouped_loss(tasks, stacked, batches).sum().backward(),
        "evaluate_one_task_s": lambda: tasks[0].evaluate(shared.theta0),
        "evaluate_grouped_s": lambda: type(tasks[0]).evaluate_group(tasks, [shared.theta0] * len(tasks)),
    }
    rounds = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, case in cases.items():
            rounds[name].append(timed(case))
    record = {
        "command": "python benchmarks/studies/wordforms_step_cost.py " + " ".join(sys.argv[1:]),
        "device": str(compute_device()),
        "threads": torch.get_num_threads(),
        "tasks": args.tasks,
        "answers_per_task_step": len(batches[0]["labels"]),
        "test_words_per_task": len(tasks[0].concept.test),
        **{name: statistics.median(values) for name, values in rounds.items()},
        "rounds": rounds,
    }
    atomic_write_text(Path(args.out), json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k != "rounds"}, indent=1))


if __name__ == "__main__":
    main()
