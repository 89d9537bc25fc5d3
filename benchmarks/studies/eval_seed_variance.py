"""How much of a run's held-out "generated" number is one noise draw.

The pipeline evaluates every held-out task with the same ``eval_seed``, so all tasks share one noise stream: the
task average does not average the sampling noise out, and a second seed can move the whole number. This script
re-evaluates a finished run's generator (``examples/train.py`` / ``mcdi train`` output) with ``--draws`` shared
seeds, then with as many sets of distinct per-task seeds, and reports the spread of the task-averaged metric for
each. Nothing is retrained; the zoo and tasks come from the run's own config.

    python examples/train.py output_dir=runs/logistic      # the quick configuration (~1 min)
    python benchmarks/studies/eval_seed_variance.py runs/logistic
    # → benchmarks/studies/results/eval_seed_variance_logistic.json
"""

import argparse
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.cli.common import load_generator  # noqa: E402
from peft_mcdi.pipeline import build_tasksets, evaluate_heldout, prepare_zoo  # noqa: E402
from peft_mcdi.train import load_config  # noqa: E402
from peft_mcdi.utils import atomic_write_text  # noqa: E402


def spread(values: list[float]) -> dict:
    return {"values": values, "mean": statistics.fmean(values), "std": statistics.stdev(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run (train_config.yaml and generator/ inside)")
    parser.add_argument("--draws", type=int, default=12, help="seeds (or per-task seed sets) to evaluate")
    parser.add_argument(
        "--out", type=Path, help="JSON path (default: benchmarks/results/eval_seed_variance_<taskset>)"
    )
    args = parser.parse_args()
    if args.draws < 2:
        parser.error(f"--draws must be at least 2 (a spread needs two values), got {args.draws}")
    config_path = args.run_dir / "train_config.yaml"
    if not config_path.is_file():
        parser.error(f"run_dir: {config_path} not found; pass the output_dir of a finished training run")
    config, _ = load_config(str(config_path), [])
    generator = load_generator(str(args.run_dir / "generator"))
    tasksets = build_tasksets(config)
    store, _ = prepare_zoo(config, tasksets, progress=False)
    n = len(tasksets.test)

    def generated(eval_seed) -> float:
        return evaluate_heldout(generator, store, tasksets, replace(config, eval_seed=eval_seed))["heldout_metric"][
            "generated"
        ]

    record = {
        "command": "python benchmarks/studies/eval_seed_variance.py " + " ".join(sys.argv[1:]),
        "taskset": config.taskset,
        "num_test_tasks": n,
        "shared_seed": spread([generated(s) for s in range(args.draws)]),
        # draw r gives task j the seed 1000·(r+1) + j: distinct per task, disjoint from the shared seeds above
        "per_task_seeds": spread([generated([1000 * (r + 1) + j for j in range(n)]) for r in range(args.draws)]),
    }
    out = args.out or Path(__file__).with_name("results") / f"eval_seed_variance_{config.taskset}.json"
    atomic_write_text(out, json.dumps(record, indent=2))
    for name in ("shared_seed", "per_task_seeds"):
        s = record[name]
        print(
            f"{name:15s} mean {s['mean']:.4f}  std {s['std']:.4f}  range {min(s['values']):.4f}–{max(s['values']):.4f}"
        )
    print(f"written: {out}")


if __name__ == "__main__":
    main()
