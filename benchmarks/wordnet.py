"""Real-model run of the whole pipeline: WordNet concept tasks, LoRA (+ head) trajectories on all-MiniLM-L6-v2,
Reptile meta-training, generation for held-out categories, beside the baselines. One seed reruns everything.

Then the user's path on the same held-out tasks: a fresh MiniLM classifier, ``get_peft_model(base, McDiConfig(...,
generator_name_or_path=<the trained generator>))``, ``model.adapt(descriptions, adapter_names=...)``, and the test
accuracy with and without the generated adapter (and a zero-shot baseline that uses the description: cosine
similarity of word and description embeddings, thresholded at the median score — no labels used).

    python benchmarks/wordnet.py --base minilm --seeds 0 1 2     # ≈ 5 min per seed on 2 CPU cores
    python benchmarks/wordnet.py --base smollm2 --seeds 0 1 2
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft_mcdi.data.text_lora import build_peft_model  # noqa: E402
from peft_mcdi.generator.denoisers import DenoiserConfig  # noqa: E402
from peft_mcdi.generator.model import McDiGenerator  # noqa: E402
from peft_mcdi.meta.tasks import get_tasksets  # noqa: E402
from peft_mcdi.meta.trainer import MetaTrainConfig  # noqa: E402
from peft_mcdi.pipeline import PipelineConfig, format_results, run_pipeline  # noqa: E402
from peft_mcdi.utils import cache_root, stable_hash  # noqa: E402
from peft_mcdi.zoo.recorder import RecorderConfig  # noqa: E402


# Per base: its task family (whose defaults fix r and the target modules) and the recorder's learning rate.
BASES = {
    "minilm": {
        "taskset": "wordnet-minilm",
        "r": 4,
        "target_modules": ["query", "value"],
        "tasks": (48, 8),
        "lr": 5e-3,
    },
    "smollm2": {
        "taskset": "wordnet-smollm2",
        "r": 8,
        "target_modules": ["q_proj", "v_proj"],
        "tasks": (24, 6),
        "lr": 1e-2,
    },
}


def config(seed: int, args) -> PipelineConfig:
    return PipelineConfig(
        taskset=BASES[args.base]["taskset"],
        taskset_kwargs={"num_train_tasks": args.num_train_tasks, "num_test_tasks": args.num_test_tasks, "seed": seed},
        recorder=RecorderConfig(num_epochs=args.epochs, lr=args.lr, rho=0.05),
        denoiser=DenoiserConfig(
            type="tokens",
            condition_dim=384,
            hidden_dim=args.hidden_dim,
            num_layers=args.num_layers,
            num_heads=4,
            lora_factor_dim=args.lora_factor_dim,
        ),
        meta=MetaTrainConfig(
            algorithm=args.algorithm,
            num_outer_steps=args.outer_steps,
            samples_per_task=8,
            outer_lr=args.outer_lr,
            seed=seed,
        ),
        hypernetwork_steps=args.outer_steps,
        codec_normalization=args.codec_normalization,
    )


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample std over seeds (std 0 for a single seed)."""
    t = torch.tensor(values)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0}


def run_dir(config: PipelineConfig) -> Path:
    """Generator and checkpoints of one configuration live in the cache, so a rerun resumes instead of retraining."""
    return cache_root() / "runs" / f"{config.taskset}-{stable_hash(config.to_dict())}"


@torch.no_grad()
def fit_on_training_tasks(generator_dir: Path, tasks, num_tasks: int = 12) -> dict:
    """Weights generated for *training* descriptions, evaluated on those tasks' test words, beside the tasks' own
    trained adapters: tells an under-fitted generator (both low) from one that fits but does not generalise."""
    generator = McDiGenerator.from_pretrained(generator_dir)
    tasks = list(tasks)[:num_tasks]
    weights = generator.generate(torch.stack([t.condition for t in tasks]), seed=0)
    generated = [float(t.evaluate({k: v[j] for k, v in weights.items()})) for j, t in enumerate(tasks)]
    return {"generated_on_training_tasks": sum(generated) / len(generated), "per_task": generated}


@torch.no_grad()
def with_and_without_adapter(args, generator_dir: Path, tasks, seed: int) -> dict:
    """The README path on the held-out tasks: a fresh base model, ``get_peft_model(base, McDiConfig(...,
    generator_name_or_path=...))``, every task's adapter generated from its description in one ``adapt()`` call;
    then the test accuracy with each adapter, without any (B = 0), of the base model told the task in words, and
    with the best of 8 samples on the task's validation examples (``adapt(num_samples=8, examples=...)``)."""
    model, _ = build_peft_model(
        args.base, args.r, args.target_modules, seed, generator_name_or_path=str(generator_dir)
    )
    names = [t.task_id for t in tasks]
    descriptions = [t.concept.description for t in tasks]
    info = model.adapt(descriptions, adapter_names=names, seed=0)

    def written(name: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.base_model.lora_parameters(name).items()}

    rows = {"with_adapter": [], "without_adapter": [], "base_told_the_task": [], "with_adapter_best_of_8": []}
    for name, task in zip(names, tasks):
        rows["with_adapter"].append(float(task.evaluate(written(name))))
        rows["without_adapter"].append(float(task.evaluate(task.init_params())))
        rows["base_told_the_task"].append(task.zero_shot_accuracy())
    # Few-shot selection: 8 samples per task, keep the one with the lowest loss on the task's validation examples.
    examples = [t.shared.selection_examples(t.concept.val) for t in tasks]
    model.adapt(descriptions, adapter_names=names, seed=0, num_samples=8, examples=examples)
    for name, task in zip(names, tasks):
        rows["with_adapter_best_of_8"].append(float(task.evaluate(written(name))))
    single = [model.adapt(descriptions[0], adapter_names=names[0], seed=0) for _ in range(21)]
    return {
        "per_task": rows,
        "mean": {k: sum(v) / len(v) for k, v in rows.items()},
        "batched_adapt_ms": {"encoder": info.encoder_ms, "generator": info.generator_ms, "tasks": len(names)},
        "adapt_ms_median": {  # first call excluded (lazy loading of the encoder)
            "encoder": float(torch.tensor([i.encoder_ms for i in single[1:]]).median()),
            "generator": float(torch.tensor([i.generator_ms for i in single[1:]]).median()),
        },
        "nearest_training_distance": info.nearest_training_distance,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base", choices=sorted(BASES), default="minilm")
    parser.add_argument("--num-train-tasks", type=int, help="default: 48 (minilm), 24 (smollm2)")
    parser.add_argument("--num-test-tasks", type=int, help="default: 8 (minilm), 6 (smollm2)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, help="recorder learning rate; default: 5e-3 (minilm), 1e-2 (smollm2)")
    parser.add_argument("--outer-steps", type=int, default=600)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--outer-lr", type=float, default=1e-3)
    parser.add_argument("--lora-factor-dim", type=int, default=32, help="0: dense token projections")
    parser.add_argument("--codec-normalization", choices=["tensor", "element"], default="tensor")
    parser.add_argument("--algorithm", choices=["reptile", "single_level"], default="reptile")
    parser.add_argument("--out", help="default: benchmarks/results/wordnet_<base>.json")
    args = parser.parse_args()
    defaults = BASES[args.base]
    args.num_train_tasks = args.num_train_tasks or defaults["tasks"][0]
    args.num_test_tasks = args.num_test_tasks or defaults["tasks"][1]
    args.lr = args.lr or defaults["lr"]
    args.r, args.target_modules = defaults["r"], defaults["target_modules"]
    args.out = args.out or str(Path(__file__).with_name("results") / f"wordnet_{args.base}.json")
    rows, adapt_rows = [], []
    for seed in args.seeds:
        start = time.perf_counter()
        cfg = config(seed, args)
        cfg.output_dir = str(run_dir(cfg))
        results = run_pipeline(cfg, progress=False)
        print(format_results(results), flush=True)
        seconds = time.perf_counter() - start
        tasksets = get_tasksets(cfg.taskset, **cfg.taskset_kwargs)
        adapted = with_and_without_adapter(args, Path(cfg.output_dir) / "generator", tasksets.test, seed)
        adapted["fit"] = fit_on_training_tasks(Path(cfg.output_dir) / "generator", tasksets.train)
        print("fit on training tasks:", round(adapted["fit"]["generated_on_training_tasks"], 4), flush=True)
        print(json.dumps(adapted["mean"]), adapted["adapt_ms_median"], flush=True)
        # the README path writes exactly the weights the pipeline evaluated (same generator, same seed)
        adapted["max_abs_diff_vs_pipeline"] = max(
            abs(a - b) for a, b in zip(adapted["per_task"]["with_adapter"], results["per_task"]["generated"])
        )
        rows.append(
            {
                "seed": seed,
                **results["heldout_metric"],
                "generation_ms": results["generation_ms_median"],
                "seconds": seconds,
            }
        )
        adapt_rows.append({"seed": seed, **adapted})
    methods = [k for k in rows[0] if k not in ("seed", "generation_ms", "seconds")]
    summary = {m: mean_std([r[m] for r in rows]) for m in methods}
    record = {
        "command": "python benchmarks/wordnet.py " + " ".join(sys.argv[1:]),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "metric": "held-out test accuracy",
        "rows": rows,
        "summary": summary,
        "adapt": adapt_rows,
        "adapt_summary": {m: mean_std([r["mean"][m] for r in adapt_rows]) for m in adapt_rows[0]["mean"]},
    }
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
