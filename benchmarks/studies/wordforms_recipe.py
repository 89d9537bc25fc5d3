"""Is the word-form family informative on SmolLM2, and which per-task recipe fits the CPU (issue 21)?

On a few held-out tasks of the benchmark's split (seed 0): per-task LoRA (r 8, q/v of all 30 layers) trained with
the zoo's recorder from θ₀ under each recipe (training words per task, Adam steps of 16, learning rate, no SAM
ascent), scored by exact match of the greedy answers on the task's 40 test words, beside the base model told the
task (no adapter) and the same with 3 training examples in context (``zero_shot``, ``icl_3``). Each (recipe, task)
cell is cached under ``$MCDI_CACHE/studies/`` as soon as it is measured, so a stopped run resumes.

    python benchmarks/studies/wordforms_recipe.py
    python benchmarks/studies/wordforms_recipe.py --recipes 32:40:5e-3 --tasks past-braces ness-braces
"""

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from peft_mcdi.tasks.text_generation import wordform_tasksets  # noqa: E402
from peft_mcdi.utils import atomic_write_text, cache_root, stable_hash  # noqa: E402
from peft_mcdi.zoo.recorder import RecorderConfig, train_task  # noqa: E402


RESULTS = Path(__file__).with_name("results")
# glued formats (the wrapper's first character joins the word's first token) and bare ones, four transforms
TASKS = ["past-braces", "plural-parentheses", "adverb-exclamation", "gerund-exclamation", "ness-braces"]
BATCH = 16


def cached(key: dict, compute) -> dict:
    path = cache_root() / "studies" / "wordforms_recipe" / f"{stable_hash(key)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    atomic_write_text(path, json.dumps(value))
    return value


def held_out(examples: int, names: list[str], seed: int) -> list:
    """The named held-out tasks of the benchmark's split with ``examples`` training words each (the split itself
    does not depend on that number)."""
    tasks = {t.task_id[len("test-") :]: t for t in wordform_tasksets("smollm2", 48, 12, 8, ("q_proj", "v_proj"), seed,
                                                                     examples).test}  # fmt: skip
    missing = sorted(set(names) - set(tasks))
    if missing:
        raise ValueError(f"--tasks {missing} are not held-out tasks of seed {seed}; they are {sorted(tasks)}.")
    return [tasks[n] for n in names]


def recipe_cell(task, examples: int, steps: int, lr: float) -> dict:
    """Exact match of the task's LoRA after ``steps`` Adam steps of 16 (whole epochs: the recorder's unit)."""
    batches = -(-examples // BATCH)
    recorder = RecorderConfig(num_epochs=max(1, round(steps / batches)), lr=lr, rho=0.0)
    start = time.perf_counter()
    checkpoints, loss = train_task(task, recorder)
    seconds = time.perf_counter() - start
    return {
        "exact_match": float(task.evaluate(checkpoints[max(checkpoints)])),
        "final_train_loss": loss,
        "steps": recorder.num_epochs * batches,
        "seconds_per_step": seconds / (recorder.num_epochs * batches),
    }


def prompted(task) -> dict:
    """The base model told the task, alone and with 3 training examples in context."""
    return {"zero_shot": task.zero_shot_accuracy(), "icl_3": task.zero_shot_accuracy(shots=3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["128:40:5e-3", "128:64:5e-3"],
                        help="examples:steps:lr per recipe")  # fmt: skip
    parser.add_argument("--tasks", nargs="+", default=TASKS, help="held-out tasks, transform-format")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "wordforms_recipe_smollm2.json"))
    args = parser.parse_args()
    record = {"command": "python benchmarks/studies/wordforms_recipe.py " + " ".join(sys.argv[1:]), "seed": args.seed}
    record["recipes"] = {}
    for recipe in args.recipes:
        examples, steps, lr = recipe.split(":")
        examples, steps, lr = int(examples), int(steps), float(lr)
        cells = {}
        for task in held_out(examples, args.tasks, args.seed):
            key = {"task": task.concept.__dict__, "steps": steps, "lr": lr, "batch": BATCH}
            cells[task.concept.task_id] = {
                **cached(key, functools.partial(recipe_cell, task, examples, steps, lr)),
                **cached({"prompted": task.concept.__dict__}, functools.partial(prompted, task)),
            }
            print(recipe, task.concept.task_id, cells[task.concept.task_id], flush=True)
        record["recipes"][recipe] = {
            k: statistics.fmean(c[k] for c in cells.values()) for k in ("exact_match", "zero_shot", "icl_3")
        }
        record["recipes"][recipe]["per_task"] = cells
    atomic_write_text(Path(args.out), json.dumps(record, indent=1))
    print(
        json.dumps({k: {m: v[m] for m in ("exact_match", "zero_shot", "icl_3")} for k, v in record["recipes"].items()})
    )


if __name__ == "__main__":
    main()
