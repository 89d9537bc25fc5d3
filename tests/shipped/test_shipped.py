"""The generators shipped in the package: found offline by their ids, small, in float32 once loaded, and
reproducing their cards — the held-out numbers on a few tasks, and the usage snippet as written."""

import ast
import re
import statistics

import pytest
import torch

from peft_mcdi import AutoMcDiModel, McDiGenerator
from peft_mcdi.shipped import SHIPPED_GENERATORS, shipped_generator_folder
from peft_mcdi.tasks.wordnet import WordNetTaskConfig, build_concept_tasks


MINILM = "peft-mcdi/wordnet-minilm"
TASKS_CHECKED = 3  # held-out tasks whose card numbers are reproduced (each is one adapt() and 100 words)


@pytest.mark.parametrize("name", sorted(SHIPPED_GENERATORS))
def test_a_shipped_generator_loads_by_id_offline_in_float32(name):
    folder = shipped_generator_folder(name)
    assert (folder / "model.safetensors").stat().st_size <= 5 * 2**20  # the ceiling for package data
    generator = McDiGenerator.from_pretrained(name)
    assert all(v.dtype == torch.float32 for v in generator.state_dict().values() if v.is_floating_point())
    meta = generator.config.metadata
    assert meta["name"] == name and meta["licenses"] and meta["results"]
    assert generator.train_conditions.shape[0] == len(meta["train_tasks"]) == meta["num_train_tasks"]
    assert not set(meta["heldout"]["accuracy"]) & set(meta["train_tasks"])  # held-out means not trained on


def test_a_local_folder_or_a_hub_revision_wins_over_the_shipped_copy(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="Hub lookup of it failed"):  # a revision asks the Hub (none here)
        McDiGenerator.from_pretrained(MINILM, revision="main")
    monkeypatch.chdir(tmp_path)
    (tmp_path / MINILM).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="is not a McDiGenerator folder"):
        McDiGenerator.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def minilm():
    return AutoMcDiModel.from_generator(MINILM)


def test_wordnet_minilm_reproduces_its_card_on_held_out_tasks(minilm):
    meta = McDiGenerator.from_pretrained(MINILM).config.metadata
    heldout = meta["heldout"]
    card = (shipped_generator_folder(MINILM) / "README.md").read_text(encoding="utf-8")
    mean = statistics.fmean(heldout["accuracy"].values())
    assert f"| held-out accuracy, {len(heldout['accuracy'])} categories: this generator | {mean:.3f} |" in card

    tasks = {t.synset: t for t in build_concept_tasks(WordNetTaskConfig(**heldout["wordnet"]))["test"]}
    assert sorted(tasks) == sorted(heldout["accuracy"])  # the recorded split rebuilds
    for synset in list(heldout["accuracy"])[:TASKS_CHECKED]:
        task = tasks[synset]
        minilm.adapt(task.description)
        words, labels = zip(*task.test)
        texts = [minilm.input_template.format(input=w) for w in words]
        with torch.no_grad():
            logits = minilm(**minilm.tokenizer(texts, padding=True, return_tensors="pt")).logits
        accuracy = float((logits.argmax(-1) == torch.tensor(labels)).float().mean())
        # one word either way: the batch here is not the benchmark's, and CPU kernels differ in the last bits
        assert abs(accuracy - heldout["accuracy"][synset]) <= 1 / len(words) + 1e-6, synset


def test_wordnet_minilm_card_snippet_runs_as_written(capsys):
    card = (shipped_generator_folder(MINILM) / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert f'AutoMcDiModel.from_generator("{MINILM}")' in snippet
    exec(compile(snippet, "card snippet", "exec"), {})
    answers = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])
    example = McDiGenerator.from_pretrained(MINILM).config.metadata["example"]
    assert list(answers) == example["inputs"] and set(answers.values()) <= {"no", "yes"}
