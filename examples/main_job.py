"""The main job: a real model adapts to task descriptions it was never trained on, with the shipped generator.

    python examples/main_job.py             # all-MiniLM-L6-v2, 40 held-out WordNet categories, about a minute

``AutoMcDiModel.from_generator("peft-mcdi/wordnet-minilm")`` loads the base model, tokenizer and input template the
generator names. Each held-out category (none of them, nor any of their ancestors or descendants, among the
generator's training tasks) is a yes/no question about words: "Does the word name a kind of instrument — …?". For
each, the table gives the test accuracy of the base model without an adapter (its classification head untrained:
chance), with the LoRA + head that ``adapt(description)`` generates, and of the base model told the task (the cosine
rule: a word is a member when its embedding is closer to the description's than the median word's), and the adapt()
latency. The last columns are taken from the benchmark record for the same tasks and seed (`benchmarks/results/
llm_minilm.json`), not run here: the multi-task LoRA that reads the description, retrieval of the nearest training
task's adapter, and per-task fine-tuning on the task's own 64 examples.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from peft_mcdi import AutoMcDiModel
from peft_mcdi.tasks.text_lora import SharedLoRAModel
from peft_mcdi.tasks.wordnet import WordNetTaskConfig, build_concept_tasks
from peft_mcdi.utils import atomic_write_text


ROOT = Path(__file__).resolve().parents[1]
GENERATOR = "peft-mcdi/wordnet-minilm"
RECORD = ROOT / "benchmarks" / "results" / "llm_minilm.json"
FROM_RECORD = {"multitask_lora": "multi-task LoRA", "nearest_task": "retrieval", "per_task_reference": "fine-tuned"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=None, help="held-out categories to run (default: all 40)")
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "main_job.md"), help="where the table is written"
    )
    return parser.parse_args(argv)


@torch.no_grad()
def accuracy(model, template: str, pairs: list[tuple[str, int]]) -> float:
    words, labels = zip(*pairs)
    inputs = model.tokenizer([template.format(input=w) for w in words], padding=True, return_tensors="pt")
    return float((model(**inputs).logits.argmax(-1) == torch.tensor(labels)).float().mean())


def record_rows(seed: int) -> dict[str, dict[str, float]]:
    """{task id: {row: accuracy}} of the benchmark record's run for ``seed`` (empty when the record lacks it)."""
    if not RECORD.is_file():
        return {}
    runs = [r for r in json.loads(RECORD.read_text(encoding="utf-8"))["runs"] if r["seed"] == seed]
    if not runs:
        return {}
    run = runs[0]
    return {tid: {row: run["per_task"][row][i] for row in FROM_RECORD} for i, tid in enumerate(run["task_ids"])}


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    model = AutoMcDiModel.from_generator(GENERATOR)
    meta = model.base_model.get_generator().config.metadata  # the copy the model already loaded
    split = WordNetTaskConfig(**meta["heldout"]["wordnet"])
    tasks = build_concept_tasks(split)["test"][: args.tasks]
    cosine_rule = SharedLoRAModel(model, model.tokenizer)  # the base model told the task (no adapter)
    recorded = record_rows(split.seed)
    model.adapt(tasks[0].description)  # loads the task encoder: not timed

    rows = []
    for task in tasks:
        with model.disable_adapter():
            without = accuracy(model, model.input_template, task.test)
        info = model.adapt(task.description)
        rows.append(
            {
                "category": task.synset,
                "no adapter": without,
                "generated": accuracy(model, model.input_template, task.test),
                "base told the task": cosine_rule.zero_shot_accuracy(task.description, task.test),
                "adapt ms": info.encoder_ms + info.generator_ms,
                **recorded.get(task.task_id.replace(".", "_"), {}),
            }
        )
    table = format_table(rows, len(tasks), split.seed)
    print(table)
    atomic_write_text(args.out, table)
    return rows


def format_table(rows: list[dict], num_tasks: int, seed: int) -> str:
    columns = ["no adapter", "generated", "base told the task", *[c for c in FROM_RECORD if c in rows[0]]]
    names = {c: FROM_RECORD.get(c, c) for c in columns}
    header = ["category", *[names[c] for c in columns], "adapt ms"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for row in rows:
        cells = [f"{100 * row[c]:.1f}" for c in columns]
        lines.append(f"| {row['category']} | " + " | ".join(cells) + f" | {row['adapt ms']:.1f} |")
    means = [f"**{100 * statistics.fmean(r[c] for r in rows):.1f}**" for c in columns]
    latency = statistics.median(r["adapt ms"] for r in rows)
    lines.append("| **mean** | " + " | ".join(means) + f" | median {latency:.1f} |")
    recorded = ", ".join(names[c] for c in columns if c in FROM_RECORD)
    return "\n".join(
        [
            f"# Main job: {GENERATOR} on {num_tasks} held-out WordNet categories",
            "",
            "`python examples/main_job.py` (`make run`). Test accuracy in % on each category's test words (up to 50 "
            "members and as many matched non-members).",
            f"Columns run here: no adapter, generated (`adapt(description)`, seed 0), base told the task (cosine "
            f"rule). Taken from the benchmark record (`benchmarks/results/llm_minilm.json`, seed {seed}, same tasks), "
            f"not run here: {recorded or 'none (no record)'}. adapt ms: encoder + generator, one task at a time.",
            "",
            *lines,
            "",
        ]
    )


if __name__ == "__main__":
    main()
