"""The LLM benchmark on a family whose answers are written: the word-form tasks of the SmolLM2 setting end to end on
a tiny random Llama (the same code path: LoRA on q/v, greedy answers scored by exact match). ``-m slow``: the
default suite checks the family and its scoring (tests/tasks/test_wordforms.py, test_text_generation.py)."""

from pathlib import Path

import pytest

from peft_mcdi.evaluation.llm import BASES, LLMBenchConfig, run_llm_benchmark
from peft_mcdi.evaluation.llm_report import markdown, summarize
from peft_mcdi.tasks.base import _REGISTRY as task_registry
from peft_mcdi.tasks.text_generation import wordform_tasksets
from peft_mcdi.tasks.text_lora import KNOWN_BASES


pytestmark = [
    pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(), reason="wordnet-base not installed"),
    pytest.mark.slow,  # about a minute on two cores: every stage of the benchmark, answers decoded token by token
]
TINY_LLAMA = "tiny-llama"
FAMILY = {  # 3 seen transforms × 4 formats, negation held out as a type
    "transforms": ("plural", "past", "adverb", "negation"),
    "unseen_transforms": ("negation",),
    "formats": ("plain", "brackets", "double_quotes", "exclamation"),
    "num_val": 2,
    "num_test": 4,
}
TINY = {
    "num_train_tasks": 6,
    "num_test_tasks": 2,
    "variants": ["mcdi", "mcdi_functional"],
    "recorder": {"num_epochs": 1},
    "meta": {"num_outer_steps": 3, "meta_batch_size": 2, "samples_per_task": 2},
    "hypernetwork_steps": 3,
    "functional": {"chain_steps": 2},
    "fewshot_steps": 1,
    "finetune_steps": 2,
    "multitask": {"num_epochs": 0.1},
    "seen_tasks": 2,
    "latency_repeats": 2,
}


@pytest.fixture(scope="module")
def record(tiny_llama_dir):
    def tasksets(num_train_tasks: int, num_test_tasks: int, seed: int = 0):
        return wordform_tasksets(TINY_LLAMA, num_train_tasks, num_test_tasks, 2, ("q_proj", "v_proj"), seed, 8,
                                 **FAMILY)  # fmt: skip

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(KNOWN_BASES, TINY_LLAMA, (tiny_llama_dir, "CAUSAL_LM"))
        spec = {**BASES["smollm2"], "model": TINY_LLAMA, "taskset": "wordforms-tiny-llama", "r": 2}
        patch.setitem(BASES, TINY_LLAMA, spec)
        patch.setitem(task_registry, "wordforms-tiny-llama", tasksets)
        yield run_llm_benchmark(LLMBenchConfig.for_base(TINY_LLAMA, TINY), seed=0)


def test_every_method_writes_answers_for_the_same_heldout_tasks(record):
    expected = {"mcdi", "mcdi_functional", "hypernetwork", "t2l_sft", "prompted_base", "prompted_base_icl",
                "mcdi_functional_sibling", "mcdi_functional_prompted", "multitask_lora", "nearest_task", "mean_of_zoo",
                "init", "per_task_reference", "mcdi_functional_fewshot", "zero_fewshot"}  # fmt: skip
    assert set(record["per_task"]) == expected  # no anchor: a causal LM's LoRA has no zero but θ₀ (`init`)
    assert all(len(v) == 2 and all(0 <= a <= 1 for a in v) for v in record["per_task"].values())
    assert record["task_ids"] == ["test-adverb-plain", "test-plural-brackets"]


def test_the_unseen_type_is_its_own_split(record):
    """Tasks of a transform no training task has are scored apart, with every method that needs no training of its
    own on them; their per-task references come from the zoo, beside the held-out ones."""
    split = record["other_splits"]["test_unseen_type"]
    assert [i.split("-")[1] for i in split["task_ids"]] == ["negation"] * 4
    assert set(split["per_task"]) == {"mcdi", "mcdi_functional", "nearest_task", "init", "per_task_reference",
                                      "prompted_base", "prompted_base_icl", "multitask_lora"}  # fmt: skip
    assert all(len(v) == 4 and all(0 <= a <= 1 for a in v) for v in split["per_task"].values())


def test_written_answers_have_no_roc_auc_and_the_report_renders(record):
    assert "roc_auc" not in record and "with_adapter_auc" not in record["users_path"]
    assert record["users_path"]["with_adapter"] == record["per_task"]["mcdi_functional"]
    text = markdown(summarize([record]), "tiny", "python benchmarks/llm.py --base smollm2")
    assert "ROC AUC" not in text and "| base model prompted with the description |" in text
    assert "test exact match in % on 2 held-out (transform, format) tasks" in text
    assert "Held-out split `test_unseen_type`" in text and "the zoo's Adam recipe" in text


def test_a_functional_only_run_scores_every_row_the_issue_compares(tiny_llama_dir, tmp_path, monkeypatch):
    """Without the paper's generator (its Reptile meta-training is the costliest stage on SmolLM2), the functional
    run scores the rows that need no generator, t2l_sft and the controls; only the zoo-fitted hypernetwork is gone."""
    monkeypatch.setenv("MCDI_CACHE", str(tmp_path))

    def tasksets(num_train_tasks: int, num_test_tasks: int, seed: int = 0):
        return wordform_tasksets(TINY_LLAMA, num_train_tasks, num_test_tasks, 2, ("q_proj", "v_proj"), seed, 8,
                                 **FAMILY)  # fmt: skip

    monkeypatch.setitem(KNOWN_BASES, TINY_LLAMA, (tiny_llama_dir, "CAUSAL_LM"))
    monkeypatch.setitem(BASES, TINY_LLAMA, {**BASES["smollm2"], "model": TINY_LLAMA, "taskset": "wordforms-tiny-llama",
                                            "r": 2})  # fmt: skip
    monkeypatch.setitem(task_registry, "wordforms-tiny-llama", tasksets)
    record = run_llm_benchmark(LLMBenchConfig.for_base(TINY_LLAMA, {**TINY, "variants": ["mcdi_functional"]}), 0)
    assert record["product"] == "mcdi_functional" and record["device"] == "cpu"
    assert {"nearest_task", "mean_of_zoo", "init", "per_task_reference", "t2l_sft", "mcdi_functional_sibling",
            "multitask_lora", "prompted_base_icl"} <= set(record["per_task"])  # fmt: skip
    assert "hypernetwork" not in record["per_task"] and "mcdi" not in record["per_task"]
    assert "Held-out split `test_unseen_type`" in markdown(summarize([record]), "tiny", "cmd")
