"""The main job on its embedded defaults: collect a trajectory zoo, meta-train a Mc-Di generator with Reptile,
generate weights for held-out tasks and compare them with the memorisation baselines.

    python examples/quickstart.py                      # logistic family of SPEC §3.3, a few minutes on 2 cores
    python examples/quickstart.py --outer-steps 300 --num-train-tasks 100   # a quicker look

Every stage resumes: the zoo is cached under $MCDI_CACHE (default ~/.cache/peft_mcdi) keyed by a hash of what
determines it, and meta-training checkpoints into --output-dir.
"""

from __future__ import annotations

import argparse

from peft_mcdi.meta.trainer import MetaTrainConfig
from peft_mcdi.pipeline import PipelineConfig, format_results, run_pipeline


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--num-train-tasks", type=int, default=400, help="training tasks in the zoo (default 400)")
    parser.add_argument("--num-test-tasks", type=int, default=100, help="held-out tasks (default 100)")
    parser.add_argument("--outer-steps", type=int, default=2000, help="Reptile outer steps (default 2000)")
    parser.add_argument("--hypernetwork-steps", type=int, default=2000, help="one-pass baseline's steps (0: skip)")
    parser.add_argument("--algorithm", choices=["reptile", "single_level"], default="reptile")
    parser.add_argument("--seed", type=int, default=0, help="seed of tasks, zoo order and meta-training")
    parser.add_argument("--output-dir", default="runs/quickstart", help="generator, checkpoints and results.json")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = PipelineConfig(
        taskset_kwargs={
            "num_train_tasks": args.num_train_tasks,
            "num_test_tasks": args.num_test_tasks,
            "seed": args.seed,
        },
        meta=MetaTrainConfig(
            algorithm=args.algorithm,
            num_outer_steps=args.outer_steps,
            samples_per_task=16,
            seed=args.seed,
            checkpoint_every=250,
        ),
        hypernetwork_steps=args.hypernetwork_steps,
        output_dir=args.output_dir,
    )
    results = run_pipeline(config, progress=not args.no_progress)
    print(f"\nheld-out test loss on {results['num_test_tasks']} unseen tasks (lower is better):")
    print(format_results(results))
    print(f"results: {args.output_dir}/results.json")
    return results


if __name__ == "__main__":
    main()
