"""Write the generators shipped inside the package (``peft_mcdi/shipped``) from the benchmark's trained runs.

    python scripts/ship_generators.py            # after `python benchmarks/llm.py --base minilm --seeds 0`

For each shipped id: the benchmark's product generator of seed 0 (trained on that seed's training tasks only), its
held-out accuracy evaluated here in float32 and again after a float16 round trip of its file, stored in float16 when
that changes the mean held-out accuracy by at most ``FP16_TOLERANCE`` (else float32), with the metadata its card and
``AutoMcDiModel`` read: the record's numbers for the same seed and tasks, the training categories, licences, the input
template and class names, a usage example, and the per-task held-out accuracies that the package's tests reproduce.
The comparison goes to ``benchmarks/results/shipped_generators.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft_mcdi.evaluation.llm import LLMBenchConfig, product_variant  # noqa: E402
from peft_mcdi.generator.model import McDiGenerator  # noqa: E402
from peft_mcdi.pipeline import adapter_metadata, build_tasksets  # noqa: E402
from peft_mcdi.shipped import SHIPPED_GENERATORS, shipped_generator_folder  # noqa: E402
from peft_mcdi.tasks.wordnet import WordNetTaskConfig, build_concept_tasks  # noqa: E402
from peft_mcdi.utils import atomic_write_text  # noqa: E402


FP16_TOLERANCE = 0.005  # mean held-out accuracy may move by at most half a point in half precision
SEED = 0  # the seed whose training tasks the shipped generator saw (its held-out tasks are the card's numbers)
LICENSES = {
    "this generator": "Apache-2.0",
    "sentence-transformers/all-MiniLM-L6-v2 (base model and task encoder)": "Apache-2.0",
    "WordNet 3.0 (task categories and words)": "WordNet 3.0 license (Princeton University), BSD-style",
}
EXAMPLE = {  # the card's usage snippet, run as written by the tests
    "prompt": "Does the word name a kind of fish — any of various mostly cold-blooded aquatic vertebrates?",
    "inputs": ["salmon", "trout", "violin", "hammer"],
}


@torch.no_grad()
def heldout_accuracy(generator: McDiGenerator, tasks, temperature: float) -> list[float]:
    """Per-task accuracy of the adapters generated from the tasks' descriptions with seed 0 (what ``adapt()``
    writes by default)."""
    weights = generator.generate(torch.stack([t.condition for t in tasks]), seed=0, temperature=temperature)
    return [float(t.evaluate({k: v[j] for k, v in weights.items()})) for j, t in enumerate(tasks)]


def record_run(base: str, seed: int) -> dict:
    record = json.loads((ROOT / "benchmarks" / "results" / f"llm_{base}.json").read_text(encoding="utf-8"))
    runs = [r for r in record["runs"] if r["seed"] == seed]
    if not runs:
        raise SystemExit(f"benchmarks/results/llm_{base}.json has no seed {seed}: run benchmarks/llm.py first.")
    return runs[0]


def ship_minilm(out: Path) -> dict:
    config = LLMBenchConfig.for_base("minilm")
    product = product_variant(config.variants)
    source = Path(config.pipeline(SEED, product).output_dir) / "generator"
    if not source.is_dir():
        raise SystemExit(f"no trained generator at {source}: run `python benchmarks/llm.py --base minilm --seeds 0`.")
    tasksets = build_tasksets(config.pipeline(SEED, "mcdi"))
    tasks = list(tasksets.test)
    run = record_run("minilm", SEED)
    if run["task_ids"] != [t.task_id for t in tasks]:
        raise SystemExit("the record's held-out tasks are not this split's: rerun benchmarks/llm.py for seed 0.")

    split = WordNetTaskConfig(num_heldout=len(tasks), max_train=len(tasksets.train), seed=SEED)
    if [t.synset for t in build_concept_tasks(split)["test"]] != [t.concept.synset for t in tasks]:
        raise SystemExit(f"{split} does not rebuild the benchmark's held-out split: record the split it used.")

    generator = McDiGenerator.from_pretrained(source)
    fp32 = heldout_accuracy(generator, tasks, config.temperature)
    with tempfile.TemporaryDirectory() as folder:
        generator.save_pretrained(folder, dtype=torch.float16)
        fp16 = heldout_accuracy(McDiGenerator.from_pretrained(folder), tasks, config.temperature)
    half = abs(statistics.fmean(fp16) - statistics.fmean(fp32)) <= FP16_TOLERANCE
    shipped = fp16 if half else fp32
    if abs(statistics.fmean(fp32) - run["accuracy"][product]) > 1e-6:
        raise SystemExit(f"float32 held-out accuracy {statistics.fmean(fp32):.4f} is not the record's: stale cache?")

    meta = generator.config.metadata
    meta.update(adapter_metadata(tasks[0]))  # the input template and class names (generators before they existed)
    meta.update(
        name="peft-mcdi/wordnet-minilm",
        train_tasks=[t.concept.synset for t in tasksets.train],
        licenses=LICENSES,
        example=EXAMPLE,
        heldout={
            "split": f"{len(tasks)} WordNet categories with no ancestor or descendant among the training ones "
            f"(benchmarks/llm.py --base minilm, seed {SEED})",
            "wordnet": split.to_dict(),  # WordNetTaskConfig(**this) rebuilds the split (the tests do)
            "accuracy": dict(zip([t.concept.synset for t in tasks], shipped)),
        },
        results={
            f"held-out accuracy, {len(tasks)} categories: this generator": f"{statistics.fmean(shipped):.3f}",
            **{
                f"held-out accuracy: {row} (benchmark record, same tasks)": f"{run['accuracy'][row]:.3f}"
                for row in ("prompted_base", "multitask_lora", "t2l_sft", "per_task_reference")
            },
        },
        latency_ms=run["users_path"]["adapt_ms_median"]["generator"],
    )
    generator.save_pretrained(out, dtype=torch.float16 if half else None)
    return {
        "source": str(source.relative_to(source.parents[2])),
        "float32": statistics.fmean(fp32),
        "float16": statistics.fmean(fp16),
        "max_task_difference": max(abs(a - b) for a, b in zip(fp16, fp32)),
        "stored": "float16" if half else "float32",
        "bytes": (out / "model.safetensors").stat().st_size,
    }


SHIPPERS = {"peft-mcdi/wordnet-minilm": ship_minilm}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", nargs="+", default=sorted(SHIPPERS), choices=sorted(SHIPPED_GENERATORS))
    args = parser.parse_args(argv)
    results_path = ROOT / "benchmarks" / "results" / "shipped_generators.json"
    shipped = json.loads(results_path.read_text(encoding="utf-8"))["generators"] if results_path.is_file() else {}
    for name in args.ids:
        shipped[name] = SHIPPERS[name](shipped_generator_folder(name))
        print(name, json.dumps(shipped[name]), flush=True)
    record = {
        "command": "python scripts/ship_generators.py",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "generators": shipped,
    }
    atomic_write_text(results_path, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
