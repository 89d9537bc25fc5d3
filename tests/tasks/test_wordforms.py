"""Word-form tasks: rule-governed answers checked against WordNet, a split decided before any model runs."""

import json

import pytest

from peft_mcdi.tasks.wordforms import (
    FORMATS,
    TRANSFORMS,
    WordFormTaskConfig,
    add_ed,
    add_ing,
    add_s,
    build_wordform_tasks,
    description,
    transform_pairs,
)
from peft_mcdi.tasks.wordnet import load_wordnet
from peft_mcdi.utils import cache_root


pytestmark = pytest.mark.skipif(
    not __import__("pathlib").Path("/usr/share/wordnet/data.noun").is_file(), reason="wordnet-base not installed"
)
TINY = {
    "transforms": ("plural", "past", "adverb", "negation"),
    "unseen_transforms": ("negation",),
    "formats": ("plain", "brackets", "double_quotes", "exclamation"),
    "num_heldout": 3,
    "max_train": 8,
    "num_train": 8,
    "num_val": 2,
    "num_test": 6,
    "seed": 1,
}


@pytest.fixture(scope="module")
def tasks():
    return build_wordform_tasks(WordFormTaskConfig(**TINY))


def test_inflection_rules():
    assert [add_s(w) for w in ("cat", "box", "church", "city", "day", "glass", "potato", "leaf", "clothes")] == [
        "cats", "boxes", "churches", "cities", "days", "glasses", None, None, None]  # fmt: skip
    assert [add_ed(w) for w in ("walk", "hope", "carry", "play", "stop", "panic")] == [
        "walked", "hoped", "carried", "played", None, None]  # fmt: skip
    assert [add_ing(w) for w in ("walk", "hope", "tie", "see", "stop")] == [
        "walking", "hoping", "tying", "seeing", None]  # fmt: skip


def test_pairs_follow_wordnet():
    """Inflections reduce to their word under WordNet's morphology and avoid its exception lists; derived forms are
    WordNet links (an adverb's pertainym is its adjective, an un- form is the adjective's antonym)."""
    wn = load_wordnet()
    plural = dict(transform_pairs("plural"))
    assert plural["city"] == "cities" and "child" not in plural and "letters" not in plural  # irregular, plural-only
    assert "dog" in plural and "disarray" not in plural and "chrome" not in plural  # count nouns only
    for word, form in list(plural.items())[::200]:
        assert word in wn._morphy(form, "n", check_exceptions=False)  # "stalls" is also a lemma of its own
    adverbs = transform_pairs("adverb")
    for adjective, adverb in adverbs[::100]:
        links = {p.name() for s in wn.synsets(adverb, "r") for lemma in s.lemmas() for p in lemma.pertainyms()}
        assert adjective in links
    negation = dict(transform_pairs("negation"))
    assert negation["able"] == "unable" and all(f == "un" + w for w, f in negation.items())


def test_build_is_deterministic_and_cached(tasks):
    config = WordFormTaskConfig(**TINY)
    [cached] = (cache_root() / "wordform_tasks").glob("*.json")
    first = json.loads(cached.read_text())
    cached.unlink()
    again = build_wordform_tasks(config)
    assert json.loads(cached.read_text()) == first
    assert [t.test for t in again["test"]] == [t.test for t in tasks["test"]]
    other = build_wordform_tasks(WordFormTaskConfig(**{**TINY, "seed": 2}))
    assert [t.train for t in other["train"]] != [t.train for t in tasks["train"]]


def test_split_shares_no_instance_with_training(tasks):
    """Held-out combinations are new while their transform and format each appear in training; a held-out task's
    words never meet its transform in a training task; unseen-type tasks' transform is absent from training."""
    train_combos = {(t.transform, t.format) for t in tasks["train"]}
    assert len(tasks["train"]) == 8 and len(tasks["test"]) == 3 and len(tasks["test_unseen_type"]) == 4
    for task in tasks["test"]:
        assert (task.transform, task.format) not in train_combos
        assert sum(t.transform == task.transform for t in tasks["train"]) >= 2
        assert sum(t.format == task.format for t in tasks["train"]) >= 2
        trained = {w for t in tasks["train"] if t.transform == task.transform for w, _ in t.train + t.val + t.test}
        assert not trained & {w for w, _ in task.train + task.val + task.test}
    assert {t.transform for t in tasks["test_unseen_type"]} == {"negation"}
    assert "negation" not in {t.transform for t in tasks["train"]}


def test_answers_are_the_formatted_forms(tasks):
    task = next(t for t in tasks["train"] + tasks["test"] if t.transform == "past" and t.format != "plain")
    fmt = FORMATS[task.format]
    for word, answer in task.train + task.val + task.test:
        assert answer == fmt.apply(add_ed(word))
    assert len({w for w, _ in task.train + task.val + task.test}) == 16  # no word twice in a task


def test_descriptions_name_both_parts():
    assert description("plural", "brackets") == "Write the plural of the noun, in square brackets."
    wordings = {description("past", "exclamation", v) for v in range(4)}
    assert len(wordings) == 4 and all("past" in w and ("!" in w or "exclamation" in w) for w in wordings)
    assert len({description(t, f) for t in TRANSFORMS for f in FORMATS}) == len(TRANSFORMS) * len(FORMATS)


def test_bad_configs_say_what_is_wrong():
    with pytest.raises(ValueError, match="transforms has unknown entries \\['plurals'\\]"):
        WordFormTaskConfig(transforms=("plurals",))
    with pytest.raises(ValueError, match="unseen_transforms .* must be among transforms"):
        WordFormTaskConfig(transforms=("plural", "past"), unseen_transforms=("negation",))
    with pytest.raises(ValueError, match="cannot hold out 9 combinations"):
        build_wordform_tasks(WordFormTaskConfig(**{**TINY, "num_heldout": 9}))
    with pytest.raises(ValueError, match=r"transform '\w+' has \d+ \w+ words, fewer than a task's 1000 examples"):
        build_wordform_tasks(WordFormTaskConfig(**{**TINY, "num_test": 990}))
