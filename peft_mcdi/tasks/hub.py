"""Binary text tasks from ``datasets`` (the Hub, or local CSV/JSON files): the full-scale task family.

Each task is one dataset (GLUE/SuperGLUE-style, or a Super-NaturalInstructions task exported to files) with a
natural-language instruction as its description; examples are rendered into the base model's fixed template and
answered " yes" / " no" (causal LM) or by the generated 2-way head (encoder). Tasks are listed in the config, each
marked training or held-out, so the split is the user's to state and the benchmark never mixes them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from peft_mcdi.tasks.base import TaskSets, register_tasksets
from peft_mcdi.tasks.text_lora import build_peft_model, shared_model, text_tasksets
from peft_mcdi.tasks.wordnet import ConceptTask
from peft_mcdi.utils import DictConfigMixin


@dataclass
class HubTaskSpec(DictConfigMixin):
    """Where one task's examples come from and what it asks."""

    name: str = field(metadata={"help": "Task id (unique)."})
    description: str = field(metadata={"help": "The instruction the generator is conditioned on."})
    path: str = field(metadata={"help": "load_dataset path: a Hub dataset ('nyu-mll/glue') or 'csv' / 'json'."})
    config_name: str | None = field(default=None, metadata={"help": "Dataset configuration ('mrpc')."})
    data_files: dict | str | None = field(default=None, metadata={"help": "Files for 'csv' / 'json' datasets."})
    split: str = field(default="train", metadata={"help": "Split the examples are drawn from."})
    text_columns: list[str] = field(default_factory=lambda: ["sentence"], metadata={"help": "Input columns."})
    label_column: str = field(default="label", metadata={"help": "Label column."})
    positive_label: int | str = field(default=1, metadata={"help": "Label value answered ' yes'."})
    heldout: bool = field(default=False, metadata={"help": "A held-out task: never in the generator's zoo."})

    def __post_init__(self) -> None:
        if not self.text_columns:
            raise ValueError(f"task {self.name!r}: text_columns must name at least one column.")


def load_hub_task(spec: HubTaskSpec, num_train: int, num_val: int, num_test: int, seed: int) -> ConceptTask:
    """Balanced train/validation/test examples of one task (per class: ``num_train``, ``num_val``, up to
    ``num_test``), the input columns joined by newlines."""
    from datasets import load_dataset

    data = load_dataset(spec.path, spec.config_name, data_files=spec.data_files, split=spec.split)
    missing = [c for c in [*spec.text_columns, spec.label_column] if c not in data.column_names]
    if missing:
        raise ValueError(f"task {spec.name!r}: columns {missing} not in {spec.path} (has {data.column_names}).")
    rng = random.Random(f"{seed}-{spec.name}")
    by_class: dict[int, list[str]] = {0: [], 1: []}
    for row in data:
        text = "\n".join(str(row[c]) for c in spec.text_columns)
        by_class[int(row[spec.label_column] == spec.positive_label)].append(text)
    need = num_train + num_val + 1
    if min(len(v) for v in by_class.values()) < need:
        raise ValueError(
            f"task {spec.name!r} needs at least {need} examples per class, has "
            f"{ {k: len(v) for k, v in by_class.items()} } (positive_label={spec.positive_label!r})."
        )
    for examples in by_class.values():
        rng.shuffle(examples)
    n_test = min(num_test, *(len(v) - num_train - num_val for v in by_class.values()))
    cuts = [(0, num_train), (num_train, num_train + num_val), (num_train + num_val, num_train + num_val + n_test)]
    splits = []
    for a, b in cuts:
        pairs = [(text, label) for label in (1, 0) for text in by_class[label][a:b]]
        rng.shuffle(pairs)
        splits.append(pairs)
    source = "/".join(p for p in (spec.path, spec.config_name) if p)
    return ConceptTask(f"{'test' if spec.heldout else 'train'}-{spec.name}", source, spec.description, *splits)


@register_tasksets("hub-binary")
def hub_binary_tasksets(
    base: str,
    tasks: list[dict],
    r: int = 8,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    task_type: str | None = None,
    load_in_4bit: bool = False,
    template: str = "Input: {word}\nAnswer:",
    max_length: int = 256,
    examples_per_class: int = 64,
    batch_size: int = 16,
    seed: int = 0,
) -> TaskSets:
    """Binary tasks from ``datasets`` on any base (a Hub id or folder; causal LMs answer " yes"/" no"), one LoRA
    (r, target_modules) per task. ``tasks``: ``HubTaskSpec`` fields per task, at least one training and one
    held-out task."""
    specs = [HubTaskSpec(**t) for t in tasks]
    names = [s.name for s in specs]
    if len(set(names)) != len(names) or not any(s.heldout for s in specs) or all(s.heldout for s in specs):
        raise ValueError(f"tasks need unique names and both training and held-out tasks (heldout: true), got {names}.")
    peft_model, tokenizer = build_peft_model(base, r, target_modules, seed, load_in_4bit, task_type)
    shared = shared_model(peft_model, tokenizer, init_seed=seed, max_length=max_length, template=template)
    loaded = {s.name: load_hub_task(s, examples_per_class, min(16, examples_per_class), 100, seed) for s in specs}
    concepts = {
        "train": [loaded[s.name] for s in specs if not s.heldout],
        "test": [loaded[s.name] for s in specs if s.heldout],
    }
    return text_tasksets(shared, concepts, batch_size, "hub-binary")
