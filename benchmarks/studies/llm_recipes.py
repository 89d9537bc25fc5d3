"""What was tried to make the generated WordNet adapters work: one change of the generator's recipe at a time, on the
zoo and held-out tasks of one seed of ``benchmarks/llm.py``, Mc-Di and the one-pass hypernetwork side by side.

Each recipe is a ``--config`` override of the benchmark (so every stage is cached and shared with it: the zoo is
collected once, the baselines that do not depend on the generator are read back). Columns: held-out accuracy and ROC
AUC of Mc-Di, its accuracy on *training* categories (does it even reproduce the tasks it was trained on?), how much
its output depends on the description at all, the hypernetwork and the nearest training task's LoRA, and the
diffusion loss at the end of meta-training.

    python benchmarks/studies/llm_recipes.py --base minilm --seed 0
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.evaluation.llm import LLMBenchConfig, run_llm_benchmark  # noqa: E402
from peft_mcdi.generator.model import McDiGenerator  # noqa: E402
from peft_mcdi.utils import atomic_write_text, merged  # noqa: E402


RESULTS = Path(__file__).with_name("results")
LONG = {"meta": {"num_outer_steps": 2400, "outer_lr": 3e-3}, "hypernetwork_steps": 2400}
STANDARDIZE = {"denoiser": {"condition_normalization": "standardize"}}
CONDITION_EFFECT_NOTE = (
    "*Condition effect*: distance between generations for different training tasks under the same noise, over the "
    "distance between two noise draws for one task (40 training descriptions). Near 0, the generator ignores the "
    "description and samples an unconditional model of the zoo."
)
# name → override of the benchmark configuration (the default recipe is the benchmark's own, all variants).
RECIPES = {
    "benchmark recipe (600 outer steps, outer lr 1e-3)": {},
    "head ×48 in the diffusion loss (half the loss on the head)": {"loss_tensor_weights": {"classifier.*": 48.0}},
    "conditions standardised (training mean, unit RMS)": STANDARDIZE,
    "4× meta-training at 3× outer lr (hypernetwork 4× too)": LONG,
    "standardised + 4× meta-training at 3× outer lr": merged(STANDARDIZE, LONG),
    "min-SNR-5 loss weighting": {"min_snr_gamma": 5.0},
    "min-SNR-5 + standardised": merged(STANDARDIZE, {"min_snr_gamma": 5.0}),
}


@torch.no_grad()
def condition_effect(generator_dir: Path, num_tasks: int = 40) -> float:
    """How much the generated weights depend on the description: the mean distance between generations for different
    training tasks under the *same* noise, over the mean distance between two noise draws for the same task. Near 0:
    the condition is ignored (an unconditional model of the zoo); the zoo's own adapters differ between tasks."""
    generator = McDiGenerator.from_pretrained(generator_dir)
    conditions = generator.train_conditions[:num_tasks]
    same_noise = generator.generate_vectors(conditions, seed=0)
    other_noise = generator.generate_vectors(conditions, seed=1)
    across_tasks = torch.pdist(same_noise).mean()
    across_noise = (same_noise - other_noise).norm(dim=1).mean()
    return float(across_tasks / across_noise)


def row(record: dict, generator_dir: Path) -> dict:
    accuracy = record["accuracy"]
    return {
        "condition_effect": condition_effect(generator_dir),
        "mcdi": accuracy["mcdi"],
        "mcdi_auc": statistics.fmean(record["roc_auc"]["mcdi"]),
        "mcdi_training_categories": record["seen_categories"]["training_descriptions"],
        "own_adapters_training_categories": record["seen_categories"]["own_adapter"],
        "hypernetwork": accuracy["hypernetwork"],
        "nearest_task": accuracy["nearest_task"],
        "final_loss": record["final_loss"]["mcdi"],
        "meta_train_seconds": record["meta_train_seconds"]["mcdi"],
    }


def markdown(rows: dict, base: str, seed: int, command: str) -> str:
    lines = [
        f"# Generator recipes on the {base} WordNet benchmark, seed {seed}",
        "",
        f"Produced by `{command}`; test accuracy / ROC AUC in % on the benchmark's held-out categories (one seed: "
        "differences of a point or two are within seed noise — the benchmark's own std over seeds is the scale).",
        "",
        "| recipe | Mc-Di | Mc-Di AUC | Mc-Di on training categories | condition effect | hypernetwork | nearest "
        "task | final loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {100 * r['mcdi']:.1f} | {100 * r['mcdi_auc']:.1f} | "
            f"{100 * r['mcdi_training_categories']:.1f} (own {100 * r['own_adapters_training_categories']:.1f}) | "
            f"{r['condition_effect']:.3f} | "
            f"{100 * r['hypernetwork']:.1f} | {100 * r['nearest_task']:.1f} | {r['final_loss']:.3f} |"
        )
    return "\n".join([*lines, "", CONDITION_EFFECT_NOTE]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="minilm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", nargs="+", type=int, help="indices into RECIPES (default: all)")
    parser.add_argument("--out-dir", default=str(RESULTS))
    args = parser.parse_args()
    names = [list(RECIPES)[i] for i in args.recipes] if args.recipes else list(RECIPES)
    rows = {}
    for name in names:
        override = RECIPES[name] and merged(RECIPES[name], {"variants": ["mcdi"]})  # the default has all variants
        config = LLMBenchConfig.for_base(args.base, override)
        generator_dir = Path(config.pipeline(args.seed, "mcdi").output_dir) / "generator"
        rows[name] = row(run_llm_benchmark(config, args.seed), generator_dir)
        print(f"{name}: {json.dumps({k: round(v, 4) for k, v in rows[name].items()})}", flush=True)
    command = "python benchmarks/studies/llm_recipes.py " + " ".join(sys.argv[1:])
    stem = Path(args.out_dir) / f"llm_{args.base}_recipes"
    record = {"command": command, "seed": args.seed, "overrides": {n: RECIPES[n] for n in names}, "rows": rows}
    atomic_write_text(stem.with_suffix(".json"), json.dumps(record, indent=1))
    atomic_write_text(stem.with_suffix(".md"), markdown(rows, args.base, args.seed, command))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
