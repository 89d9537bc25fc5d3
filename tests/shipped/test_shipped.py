"""The generators shipped in the package: found offline by their ids, small, in float32 once loaded, and
reproducing their cards — the held-out numbers on a few tasks (raw images of held-out episodes for the head
generators, through the backbone shipped with them), and the usage snippet as written."""

import ast
import re
import statistics

import pytest
import torch

from peft_mcdi import AutoMcDiModel, McDiGenerator
from peft_mcdi.shipped import EXAMPLES_NAME, SHIPPED_GENERATORS, example_episode, shipped_generator_folder
from peft_mcdi.tasks.wordnet import WordNetTaskConfig, build_concept_tasks
from peft_mcdi.tuners.head import McDiHeadModel


MINILM = "peft-mcdi/wordnet-minilm"
TASKS_CHECKED = 3  # held-out tasks whose card numbers are reproduced (each is one adapt() and 100 words)


HEADS = sorted(n for n in SHIPPED_GENERATORS if (shipped_generator_folder(n) / EXAMPLES_NAME).is_file())


@pytest.mark.parametrize("name", sorted(SHIPPED_GENERATORS))
def test_a_shipped_generator_loads_by_id_offline_in_float32(name):
    folder = shipped_generator_folder(name)
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 5 * 2**20  # the ceiling for package data
    generator = McDiGenerator.from_pretrained(name)
    assert all(v.dtype == torch.float32 for v in generator.state_dict().values() if v.is_floating_point())
    meta = generator.config.metadata
    assert meta["name"] == name and meta["licenses"] and meta["results"] and meta["heldout"]["split"]
    assert generator.train_conditions.shape[0] == meta["num_train_tasks"]
    if "train_tasks" in meta:  # description-conditioned: the training tasks are named
        assert len(meta["train_tasks"]) == meta["num_train_tasks"]
        assert not set(meta["heldout"]["accuracy"]) & set(meta["train_tasks"])  # held-out means not trained on


def test_the_head_generators_are_shipped():
    assert HEADS == ["peft-mcdi/glyphs-conv4", "peft-mcdi/transfer-efficientnet-lite0"]


@pytest.mark.parametrize("name", HEADS)
def test_a_shipped_head_generator_reproduces_its_example_episodes_from_raw_images(name):
    model = McDiHeadModel.from_generator(name)
    expected = model.generator.generator.config.metadata["example_accuracy"]
    for index, accuracy in enumerate(expected):
        support_images, support_labels, query_images, query_labels = example_episode(name, index)
        assert support_images.dtype == torch.uint8 and support_images.dim() == 3  # raw images, as a user has them
        model.adapt(support_images, support_labels)
        measured = float((model(query_images).argmax(-1) == query_labels).float().mean())
        # one query either way: CPU kernels differ in the last bits, and near-ties may flip
        assert abs(measured - accuracy) <= 1 / len(query_labels) + 1e-6, (name, index)
    with pytest.raises(ValueError, match=f"ships {len(expected)} example episodes"):
        example_episode(name, len(expected))
    with pytest.raises(ValueError, match="ships no example episodes"):
        example_episode(MINILM)


@pytest.mark.parametrize("name", HEADS)
def test_a_shipped_head_generator_card_snippet_runs_as_written(name, capsys):
    card = (shipped_generator_folder(name) / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert f'McDiHeadModel.from_generator("{name}")' in snippet
    exec(compile(snippet, "card snippet", "exec"), {})
    printed = float(capsys.readouterr().out.strip().splitlines()[-1].split()[-1])
    expected = McDiGenerator.from_pretrained(name).config.metadata["example_accuracy"][0]
    assert abs(printed - expected) <= 1 / 75 + 1e-3


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
