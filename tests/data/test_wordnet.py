"""WordNet concept tasks: real data from the Debian package, held-out split without relatives."""

import pytest

from peft_mcdi.data.wordnet import WordNetTaskConfig, build_concept_tasks, load_wordnet, nltk_data_root


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


def test_tasks_are_deterministic_and_cached(tasks):
    again = build_concept_tasks(WordNetTaskConfig(num_heldout=6, max_train=20, num_test=20, seed=3))
    assert [t.__dict__ for t in again["test"]] == [t.__dict__ for t in tasks["test"]]
