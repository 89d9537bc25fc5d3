"""The full-scale task family (binary tasks from ``datasets``) and the example config that uses it: parsed as shipped,
then dry-run through the whole pipeline on a tiny random Llama with local CSV tasks (no network)."""

import csv
import inspect
import random
from pathlib import Path

import pytest

from peft_mcdi.pipeline import run_pipeline
from peft_mcdi.tasks.hub import HubTaskSpec, hub_binary_tasksets, load_hub_task
from peft_mcdi.train import load_config


CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "llm_qwen2.5_glue_4bit.yaml"
ANIMALS = ["cat", "dog", "horse", "cow", "sheep", "goat", "mouse", "tiger", "lion", "bear"]
THINGS = ["table", "chair", "lamp", "spoon", "door", "wall", "book", "pen", "cup", "plate"]


def write_task(folder: Path, name: str, positive_words: list[str], seed: int) -> dict:
    """A CSV task: 24 sentences per class, positive when one of ``positive_words`` occurs."""
    rng = random.Random(seed)
    others = [w for w in ANIMALS + THINGS if w not in positive_words]
    rows = [(f"the {rng.choice(positive_words)} is near the {rng.choice(others)}", 1) for _ in range(24)]
    rows += [(f"the {rng.choice(others)} is near the {rng.choice(others)}", 0) for _ in range(24)]
    path = folder / f"{name}.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("sentence", "label"), *rows])
    return {"name": name, "path": "csv", "data_files": str(path), "description": f"Is a {name} mentioned?"}


def test_the_full_scale_config_parses_with_valid_tasks():
    config, _ = load_config(CONFIG)
    assert config.taskset == "hub-binary"
    inspect.signature(hub_binary_tasksets).bind(**config.taskset_kwargs)  # every keyword is one the family takes
    specs = [HubTaskSpec(**t) for t in config.taskset_kwargs["tasks"]]
    assert len({s.name for s in specs}) == len(specs) >= 12
    assert {s.name for s in specs if s.heldout} == {"mrpc", "qnli", "rte"}
    assert config.taskset_kwargs["load_in_4bit"] and "{word}" in config.taskset_kwargs["template"]


def test_tasks_are_balanced_and_errors_name_the_task(tmp_path):
    spec = HubTaskSpec(**write_task(tmp_path, "cat", ["cat"], seed=0))
    task = load_hub_task(spec, num_train=8, num_val=4, num_test=100, seed=0)
    assert [sum(y for _, y in split) for split in (task.train, task.val, task.test)] == [8, 4, 12]
    assert task.task_id == "train-cat" and len(task.test) == 24 and task.description == "Is a cat mentioned?"
    with pytest.raises(ValueError, match=r"task 'cat': columns \['text'\] not in csv"):
        load_hub_task(HubTaskSpec(**{**spec.to_dict(), "text_columns": ["text"]}), 8, 4, 100, 0)
    with pytest.raises(ValueError, match="needs at least 31 examples per class"):
        load_hub_task(spec, num_train=20, num_val=10, num_test=10, seed=0)
    with pytest.raises(ValueError, match="both training and held-out tasks"):
        hub_binary_tasksets("unused", [spec.to_dict()])


def test_dry_run_of_the_full_scale_config_on_a_tiny_model(tiny_llama_dir, tmp_path):
    """The shipped config end to end — 4-bit base included where bitsandbytes is installed — with the base and the
    task list swapped for local stand-ins and the budgets cut to a few steps."""
    config, _ = load_config(CONFIG)
    tasks = [write_task(tmp_path, name, words, seed=i)
             for i, (name, words) in enumerate([("cat", ["cat", "tiger", "lion"]), ("dog", ["dog"]),
                                                ("cup", ["cup", "plate"]), ("horse", ["horse", "cow"])])]  # fmt: skip
    tasks[-1]["heldout"] = True
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        config.taskset_kwargs["load_in_4bit"] = False
    config.taskset_kwargs.update(base=tiny_llama_dir, tasks=tasks, examples_per_class=4, batch_size=8, max_length=32)
    config.recorder.num_epochs = 2
    config.denoiser.hidden_dim, config.denoiser.num_layers, config.denoiser.num_heads = 32, 1, 2
    config.meta.num_outer_steps, config.meta.meta_batch_size, config.meta.checkpoint_every = 2, 2, 0
    config.hypernetwork_steps = 2
    config.output_dir = str(tmp_path / "run")
    results = run_pipeline(config, progress=False, log=lambda *a: None)
    assert results["num_test_tasks"] == 1 and set(results["heldout_metric"]) >= {"generated", "per_task_reference"}
    assert all(0 <= v <= 1 for v in results["heldout_metric"].values())
    assert (Path(config.output_dir) / "generator" / "README.md").is_file()
