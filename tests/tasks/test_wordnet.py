"""WordNet concept tasks: real data from the Debian package, held-out split without relatives."""

import pytest

from peft_mcdi.tasks.wordnet import (
    WordNetTaskConfig,
    _categories_and_pools,
    build_concept_tasks,
    load_wordnet,
    nltk_data_root,
)


pytestmark = pytest.mark.skipif(
    not __import__("pathlib").Path("/usr/share/wordnet/data.noun").is_file(), reason="wordnet-base not installed"
)


@pytest.fixture(scope="module")
def tasks():
    return build_concept_tasks(WordNetTaskConfig(num_heldout=6, max_train=20, num_test=20, seed=3))


def test_lexnames_are_rebuilt_for_nltk():
    lines = (nltk_data_root() / "corpora" / "wordnet" / "lexnames").read_text().splitlines()
    assert len(lines) == 45 and lines[5] == "05\tnoun.animal\t1" and lines[0] == "00\tadj.all\t3"


def test_heldout_categories_have_no_relatives_in_training(tasks):
    wn = load_wordnet()
    train = {t.synset for t in tasks["train"]}
    assert len(tasks["test"]) == 6 and len(tasks["train"]) == 20
    for task in tasks["test"]:
        synset = wn.synset(task.synset)
        relatives = {s.name() for s in synset.closure(lambda s: s.hyponyms())}
        relatives |= {s.name() for s in synset.closure(lambda s: s.hypernyms())}
        assert not relatives & train and task.synset not in train


def test_examples_are_labelled_by_the_hierarchy(tasks):
    wn = load_wordnet()
    task = tasks["test"][0]
    members = {
        lemma.name().lower() for s in wn.synset(task.synset).closure(lambda s: s.hyponyms()) for lemma in s.lemmas()
    }
    for word, label in task.train + task.val + task.test:
        assert (word in members) == bool(label), (task.synset, word, label)
    assert sum(label for _, label in task.train) == 32 and len(task.train) == 64 and len(task.val) == 32
    lemma = wn.synset(task.synset).lemmas()[0].name().replace("_", " ")
    assert task.description.startswith(f"Does the word name a kind of {lemma} — ")
    assert wn.synset(task.synset).definition() in task.description


def test_categories_are_the_closures_of_their_hyponyms():
    """The bottom-up category sets equal nltk's walk of each category's subtree, and keep to the size bounds."""
    wn = load_wordnet()
    categories, _, _ = _categories_and_pools(50, 3000, True)
    assert 700 < len(categories) < 900  # WordNet 3.0: 792 noun categories of 50-3000 single-word hyponyms
    for name in sorted(categories)[::40]:
        walked = wn.synset(name).closure(lambda s: s.hyponyms())
        expected = {lemma.name().lower() for s in walked for lemma in s.lemmas() if lemma.name().isalpha()}
        assert categories[name] == expected, name
        assert 50 <= len(expected) <= 3000


def test_tasks_are_deterministic_and_cached(tasks):
    again = build_concept_tasks(WordNetTaskConfig(num_heldout=6, max_train=20, num_test=20, seed=3))
    assert [t.__dict__ for t in again["test"]] == [t.__dict__ for t in tasks["test"]]


def test_negatives_match_the_positives_frequency_bands_and_lengths(tasks):
    from collections import Counter

    from peft_mcdi.tasks.wordnet import frequency_band, lemma_frequencies

    counts = lemma_frequencies("noun")
    assert counts["dog"] > 10 and frequency_band(0) == 0 and frequency_band(1) == 1 and frequency_band(10**6) == 5
    for task in tasks["train"][:5] + tasks["test"]:
        pairs = task.train + task.val + task.test
        pos, neg = [[w for w, y in pairs if y == label] for label in (1, 0)]
        assert len(pos) == len(neg)
        histogram = [Counter(frequency_band(counts.get(w, 0)) for w in words) for words in (pos, neg)]
        mismatched = sum((histogram[0] - histogram[1]).values())  # negatives drawn from another band: rare
        assert mismatched <= 0.05 * len(pos), (task.synset, histogram)
        assert abs(sum(map(len, pos)) - sum(map(len, neg))) / len(pos) < 0.5


def test_seen_categories_have_a_second_description_and_tasks_export_as_datasets(tasks):
    wn = load_wordnet()
    task = tasks["train"][0]
    assert task.paraphrase and task.paraphrase != task.description
    assert wn.synset(task.synset).definition() in task.paraphrase and task.paraphrase.startswith("Answer yes if")
    data = task.to_dataset()
    assert {k: v.num_rows for k, v in data.items()} == {"train": 64, "validation": 32, "test": len(task.test)}
    assert data["train"].features["label"].names == ["no", "yes"]
    assert list(zip(data["test"]["word"], data["test"]["label"])) == task.test
    assert data["test"].info.description == task.description
