"""Many real text tasks from WordNet 3.0 (Debian ``wordnet-base``): "does the word name a kind of X?".

Each task is a noun category X with 50–3,000 single-word hyponym lemmas. Positives are those lemmas; negatives are
single-word nouns outside X's subtree, drawn to match the positives' word lengths. Its description is built from
WordNet itself: "Does the word name a kind of fish — any of various mostly cold-blooded aquatic vertebrates …?".

Held-out categories are chosen first; every training category that is an ancestor or a descendant of a held-out one
is then dropped, so no held-out task is a sub- or super-task of a training task (SPEC §4).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from peft_mcdi.utils import DictConfigMixin, atomic_write_text, cache_root, stable_hash


WORDNET_DIR = Path("/usr/share/wordnet")
LEXNAMES_MAN = Path("/usr/share/man/man5/lexnames.5WN.gz")
POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def nltk_data_root() -> Path:
    """An NLTK data folder holding Debian's WordNet files plus the ``lexnames`` file Debian does not ship (rebuilt
    from the lexnames(5WN) man page). nltk only reads corpora inside its data roots, hence the copy."""
    root = cache_root() / "nltk_data"
    target = root / "corpora" / "wordnet"
    if (target / "lexnames").is_file():
        return root
    if not (WORDNET_DIR / "data.noun").is_file():
        raise FileNotFoundError(
            f"WordNet 3.0 is not installed ({WORDNET_DIR}/data.noun missing): run scripts/setup.sh, which installs "
            "the Debian packages wordnet-base and wordnet-sense-index."
        )
    target.mkdir(parents=True, exist_ok=True)
    for path in WORDNET_DIR.iterdir():
        shutil.copy(path, target / path.name)
    with gzip.open(LEXNAMES_MAN, "rt") as f:
        names = re.findall(r"^(\d\d)\t(\S+)", f.read(), re.M)
    if len(names) != 45:
        raise ValueError(f"{LEXNAMES_MAN} lists {len(names)} lexicographer files, WordNet 3.0 has 45.")
    lines = "".join(f"{number}\t{name}\t{POS_NUMBER[name.split('.')[0]]}\n" for number, name in names)
    atomic_write_text(target / "lexnames", lines)  # written last: its presence marks a complete copy
    return root


def load_wordnet():
    """nltk's WordNet reader over the offline copy (≈3 s)."""
    import nltk

    root = str(nltk_data_root())
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)
    from nltk.corpus import wordnet

    wordnet.ensure_loaded()
    return wordnet


def _single_word_lemmas(synsets) -> set[str]:
    return {lemma.name().lower() for s in synsets for lemma in s.lemmas() if lemma.name().isalpha()}


@dataclass
class WordNetTaskConfig(DictConfigMixin):
    num_heldout: int = field(default=40, metadata={"help": "Held-out categories (chosen before training ones)."})
    max_train: int = field(default=300, metadata={"help": "Training categories kept after removing relatives."})
    min_hyponyms: int = field(default=50, metadata={"help": "Fewest single-word hyponym lemmas of a category."})
    max_hyponyms: int = field(default=3000, metadata={"help": "Most single-word hyponym lemmas of a category."})
    num_train: int = field(default=32, metadata={"help": "Training examples per class (positive / negative)."})
    num_val: int = field(default=16, metadata={"help": "Validation examples per class."})
    num_test: int = field(default=50, metadata={"help": "Test examples per class (fewer if the category is small)."})
    seed: int = field(default=0, metadata={"help": "Seed of the split and of example sampling."})


@dataclass
class ConceptTask:
    """One category: examples are (word, label) pairs, label 1 when the word names a kind of the category."""

    task_id: str
    synset: str
    description: str
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]

    def __post_init__(self):
        # JSON turns the pairs into lists; keep one type whether the task was built or read from the cache.
        for split in ("train", "val", "test"):
            setattr(self, split, [(str(word), int(label)) for word, label in getattr(self, split)])


def _matched_negatives(
    positives: list[str], pool_by_length: dict[int, list[str]], exclude: set[str], rng
) -> list[str]:
    """One negative per positive, of the same length when possible (the nearest length otherwise)."""
    out = []
    for word in positives:
        for delta in range(0, 30):
            candidates = pool_by_length.get(len(word) + delta, []) + pool_by_length.get(len(word) - delta, [])
            candidates = [c for c in candidates if c not in exclude]
            if candidates:
                out.append(rng.choice(candidates))
                break
    return out


def build_concept_tasks(config: WordNetTaskConfig) -> dict[str, list[ConceptTask]]:
    """{"train": [...], "test": [...]} — deterministic given the config; cached as JSON under the cache root."""
    path = cache_root() / "wordnet_tasks" / f"{stable_hash(config.to_dict())}.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        return {split: [ConceptTask(**t) for t in tasks] for split, tasks in data.items()}
    wn = load_wordnet()
    rng = random.Random(config.seed)
    categories = {}
    for synset in wn.all_synsets("n"):
        if not synset.hyponyms():
            continue
        members = _single_word_lemmas(synset.closure(lambda s: s.hyponyms()))
        if config.min_hyponyms <= len(members) <= config.max_hyponyms:
            categories[synset.name()] = members
    all_nouns = sorted(_single_word_lemmas(wn.all_synsets("n")))
    pool_by_length: dict[int, list[str]] = {}
    for word in all_nouns:
        pool_by_length.setdefault(len(word), []).append(word)

    names = sorted(categories)
    rng.shuffle(names)
    heldout = names[: config.num_heldout]
    related = set()  # every ancestor and descendant of a held-out category
    for name in heldout:
        synset = wn.synset(name)
        related |= {s.name() for s in synset.closure(lambda s: s.hyponyms())}
        related |= {s.name() for s in synset.closure(lambda s: s.hypernyms())}
    train = [n for n in names[config.num_heldout :] if n not in related][: config.max_train]

    def make(name: str, split: str) -> ConceptTask:
        synset = wn.synset(name)
        members = sorted(categories[name])
        rng.shuffle(members)
        n_train, n_val = config.num_train, config.num_val
        n_test = min(config.num_test, len(members) - n_train - n_val)
        pos = members[: n_train + n_val + n_test]
        neg = _matched_negatives(pos, pool_by_length, categories[name], rng)
        pairs = [(w, 1) for w in pos], [(w, 0) for w in neg]
        cut = [(0, n_train), (n_train, n_train + n_val), (n_train + n_val, len(pos))]
        splits = [pairs[0][a:b] + pairs[1][a:b] for a, b in cut]
        for s in splits:
            rng.shuffle(s)
        lemma = synset.lemmas()[0].name().replace("_", " ")
        description = f"Does the word name a kind of {lemma} — {synset.definition()}?"
        return ConceptTask(f"{split}-{name}", name, description, *splits)

    tasks = {"train": [make(n, "train") for n in train], "test": [make(n, "test") for n in heldout]}
    payload = {split: [t.__dict__ for t in items] for split, items in tasks.items()}
    atomic_write_text(path, json.dumps(payload))
    return tasks
