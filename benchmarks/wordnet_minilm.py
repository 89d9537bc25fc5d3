"""Real-model run of the whole pipeline: WordNet concept tasks, LoRA (+ head) trajectories on all-MiniLM-L6-v2,
Reptile meta-training, generation for held-out categories, beside the baselines. One seed reruns everything.

    python benchmarks/wordnet_minilm.py --seeds 0 1 2     # ≈ 5 min per seed on 2 CPU cores
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft_mcdi.generator.denoisers import DenoiserConfig  # noqa: E402
from peft_mcdi.meta.trainer import MetaTrainConfig  # noqa: E402
from peft_mcdi.pipeline import PipelineConfig, format_results, run_pipeline  # noqa: E402
from peft_mcdi.zoo.recorder import RecorderConfig  # noqa: E402


def config(seed: int, args) -> PipelineConfig:
    return PipelineConfig(
        taskset="wordnet-minilm",
        taskset_kwargs={"num_train_tasks": args.num_train_tasks, "num_test_tasks": args.num_test_tasks, "seed": seed},
        recorder=RecorderConfig(num_epochs=args.epochs, lr=args.lr, rho=0.05),
        denoiser=DenoiserConfig(type="tokens", condition_dim=384, hidden_dim=128, num_layers=2, num_heads=4),
        meta=MetaTrainConfig(
            algorithm=args.algorithm, num_outer_steps=args.outer_steps, samples_per_task=8, seed=seed
        ),
        hypernetwork_steps=args.outer_steps,
        codec_normalization=args.codec_normalization,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-train-tasks", type=int, default=48)
    parser.add_argument("--num-test-tasks", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--outer-steps", type=int, default=600)
    parser.add_argument("--codec-normalization", choices=["tensor", "element"], default="tensor")
    parser.add_argument("--algorithm", choices=["reptile", "single_level"], default="reptile")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "wordnet_minilm.json"))
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        results = run_pipeline(config(seed, args), progress=False)
        print(format_results(results), flush=True)
        rows.append(
            {
                "seed": seed,
                **results["heldout_metric"],
                "generation_ms": results["generation_ms_median"],
                "seconds": time.perf_counter() - start,
            }
        )
    methods = [k for k in rows[0] if k not in ("seed", "generation_ms", "seconds")]
    summary = {
        m: {
            "mean": float(torch.tensor([r[m] for r in rows]).mean()),
            "std": float(torch.tensor([r[m] for r in rows]).std()) if len(rows) > 1 else 0.0,
        }
        for m in methods
    }
    record = {
        "command": "python benchmarks/wordnet_minilm.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "metric": "held-out test accuracy",
        "rows": rows,
        "summary": summary,
    }
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
