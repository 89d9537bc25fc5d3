"""Which realisation of functional training (SPEC §3.7) makes generated MiniLM adapters work on held-out WordNet
categories? One change at a time on the LLM benchmark's seed-0 split and zoo: the task-loss term's weight λ, what the
denoiser sees in it (a noised zoo target, or the sampler's own start, pure noise), the condition scaling, the sampler
that reads the trained generator, fine-tuning through the sampling chain (DRaFT-K), and the one-pass network trained
through the task loss with the same base-model passes (t2l_sft). Every run is a pipeline run cached and resumable
under $MCDI_CACHE/runs (a rerun reads it back); fine-tuning and t2l_sft rows start from a copy of their base recipe's
meta-training checkpoints, so the base is trained once. Held-out accuracy of the generated adapters (the
benchmark's ``generated``), beside the split's nearest-task and per-task-reference rows.

    python benchmarks/studies/llm_functional_recipes.py                       # every recipe below, seed 0
    python benchmarks/studies/llm_functional_recipes.py --recipes pure_noise_l10 pure_noise_l10_ddim1
"""

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.evaluation.llm import LLMBenchConfig, functional_controls, run_variant  # noqa: E402
from peft_mcdi.generator.model import McDiGenerator  # noqa: E402
from peft_mcdi.pipeline import build_tasksets, run_pipeline  # noqa: E402
from peft_mcdi.utils import cache_root  # noqa: E402


# every setting spelled out, so that the rows stay what they are when the benchmark's defaults move
ONLY_TERM = {"chain_steps": 0, "input": "noised_target"}  # FunctionalRecipe fields
RAW = {**ONLY_TERM, "condition_normalization": "none"}
STD = {**ONLY_TERM, "condition_normalization": "standardize"}
PURE = {**STD, "input": "pure_noise"}
SL = "single_level_functional"
DDIM = {"sampler": "ddim"}
# name → (variant, LLMBenchConfig overrides, what else): x̂₀-prediction and one functional sample per slot throughout.
# "base": the recipe whose trained generator a row starts from; "sampler": evaluate it with these generate() keywords;
# "chain": fine-tune it through the chain (steps, K); "t2l_steps": train t2l_sft beside it; "controls": also measure
# the benchmark's controls on a trained row.
RECIPES = {
    "noised_target_l1": (SL, {"functional": {**RAW, "weight": 1.0}}, {}),
    "noised_target_l10_std": (SL, {"functional": {**STD, "weight": 10}}, {}),
    "pure_noise_l1": (SL, {"functional": {**PURE, "weight": 1}}, {}),
    "pure_noise_l10": (SL, {"functional": {**PURE, "weight": 10}}, {}),
    "pure_noise_l100": (SL, {"functional": {**PURE, "weight": 100}}, {}),
    "pure_noise_l10_ddim1": (None, {}, {"base": "pure_noise_l10", "sampler": {**DDIM, "num_inference_steps": 1}}),
    "pure_noise_l10_ddim5": (None, {}, {"base": "pure_noise_l10", "sampler": {**DDIM, "num_inference_steps": 5}}),
    "pure_noise_l10_chain_k1": (None, {}, {"base": "pure_noise_l10", "chain": (300, 1)}),
    "pure_noise_l10_chain_k20": (None, {}, {"base": "pure_noise_l10", "chain": (300, 20)}),
    "t2l_sft_600_std": (None, {}, {"base": "pure_noise_l10", "t2l_steps": 600}),
    # the budget of pure_noise_l10 + 300 chain steps: 600 + 300 steps of meta_batch_size base-model passes
    "t2l_sft_900_std": (None, {}, {"base": "pure_noise_l10", "t2l_steps": 900}),
    # the benchmark's mcdi_functional: Reptile (the paper's meta-learning) with the term inside its inner loops, then
    # the chain; its run also trains t2l_sft at the matched budget (2,100 steps), reported beside it
    "reptile_pure_noise_l10_chain_k1": (
        "mcdi_functional",
        {"functional": {**PURE, "weight": 10.0, "chain_steps": 300, "chain_last_steps": 1}},
        {"controls": True},
    ),
    # the same single-level recipe with a one-block trunk: what halving the denoiser's depth costs in accuracy (the
    # trunk is ~75 % of a SmolLM2 adapter's generation time, benchmarks/results/engine.md)
    "one_block_pure_noise_l10_chain_k1": (
        SL,
        {"functional": {**PURE, "weight": 10, "chain_steps": 300, "chain_last_steps": 1},
         "denoiser": {"num_layers": 1}},
        {"controls": True},
    ),
}  # fmt: skip


def trained(name: str, seed: int):
    """The pipeline config of a training recipe."""
    variant, overrides, _ = RECIPES[name]
    return LLMBenchConfig.for_base("minilm", overrides).pipeline(seed, variant)


def run_from_base(name: str, seed: int) -> dict:
    """A row that continues its base recipe's generator (chain fine-tuning or t2l_sft beside it), in its own folder
    seeded with a copy of the base's meta-training checkpoints."""
    extra = RECIPES[name][2]
    _, overrides, _ = RECIPES[extra["base"]]
    base = trained(extra["base"], seed)
    if "chain" in extra:
        steps, k = extra["chain"]
        more = {"functional": {**overrides["functional"], "chain_steps": steps, "chain_last_steps": k}}
        run = LLMBenchConfig.for_base("minilm", {**overrides, **more}).pipeline(seed, RECIPES[extra["base"]][0])
        run = replace(run, hypernetwork_sft_steps=0)
    else:
        run = replace(base, hypernetwork_sft_steps=extra["t2l_steps"])
    folder = cache_root() / "runs" / f"study-{name}-seed{seed}-{Path(base.output_dir).name}"
    if not (folder / "train").exists():
        shutil.copytree(Path(base.output_dir) / "train", folder / "train")
    run = replace(run, output_dir=str(folder))
    results = run_pipeline(run, progress=True, tasksets=build_tasksets(run))
    metric = dict(results["heldout_metric"])
    if "t2l_steps" in extra:
        metric["generated"] = metric.pop("hypernetwork_sft")  # the row is the one-pass network
    else:
        metric.update(controls(run))
    return {**metric, "meta_train_seconds": results["meta_train_seconds"]}


def controls(run) -> dict:
    """The specificity, prompted and few-shot controls of the benchmark (SPEC §4) on a run's generator."""
    tasks = list(build_tasksets(run).test)
    rows = functional_controls(Path(run.output_dir) / "generator", tasks, run.temperature, 5, 5e-3)
    return {k: sum(v) / len(v) for k, v in rows.items()}


@torch.no_grad()
def sampled(name: str, seed: int) -> dict:
    """A trained recipe's generator read by another sampler (seed 0 of the generation noise, as the benchmark)."""
    extra = RECIPES[name][2]
    run = trained(extra["base"], seed)
    run_variant(run, build_tasksets(run), progress=True)  # trains the base if it is not there yet
    generator = McDiGenerator.from_pretrained(Path(run.output_dir) / "generator")
    tasks = list(build_tasksets(run).test)
    weights = generator.generate(torch.stack([t.condition for t in tasks]), seed=0, **extra["sampler"])
    accuracy = [float(t.evaluate({k: v[j] for k, v in weights.items()})) for j, t in enumerate(tasks)]
    return {"generated": sum(accuracy) / len(accuracy)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    default_out = Path(__file__).with_name("results") / "llm_minilm_functional_recipes.json"
    parser.add_argument("--out", default=str(default_out))
    parser.add_argument("--force", action="store_true", help="recompute rows already in --out")
    args = parser.parse_args()
    path = Path(args.out)
    record = json.loads(path.read_text()) if path.is_file() else {"command": " ".join(["python", *sys.argv])}
    record.setdefault("held_out_accuracy", {})
    for name in args.recipes:
        if name in record["held_out_accuracy"] and not args.force:
            continue  # every stage is cached anyway, but the controls and re-evaluations take minutes
        variant, overrides, extra = RECIPES[name]
        variant = variant or RECIPES[extra["base"]][0]
        start = time.perf_counter()
        if "sampler" in extra:
            row = sampled(name, args.seed)
        elif "base" in extra:
            row = run_from_base(name, args.seed)
        else:
            run = trained(name, args.seed)
            results = run_variant(run, build_tasksets(run), progress=True)
            row = {**results["heldout_metric"], "meta_train_seconds": results["meta_train_seconds"]}
            if extra.get("controls"):
                row.update(controls(run))
        record["held_out_accuracy"][name] = {
            "variant": variant,
            "overrides": overrides,
            **extra,
            **row,
            "seconds_this_call": time.perf_counter() - start,
        }
        print(name, json.dumps(record["held_out_accuracy"][name]), flush=True)
        path.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
