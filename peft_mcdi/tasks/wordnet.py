"""Many real text tasks from WordNet 3.0 (Debian ``wordnet-base``): "does the word name a kind of X?".

Each task is a noun category X with 50–3,000 single-word hyponym lemmas. Positives are those lemmas; negatives are
single-word nouns outside X's subtree, drawn to match each positive's word length and its frequency band (SemCor
tag counts of ``cntlist.rev``), so that neither length nor familiarity gives the label away. Its description is built
from WordNet itself: "Does the word name a kind of fish — any of various mostly cold-blooded aquatic vertebrates …?";
a second wording of the same category (another lemma, its hypernym, another template) is kept as ``paraphrase``:
new descriptions of seen categories, an easier split than held-out categories, reported under its own name.

Held-out categories are chosen first; every training category that is an ancestor or a descendant of a held-out one
is then dropped, so no held-out task is a sub- or super-task of a training task (SPEC §4).
"""

from __future__ import annotations

import functools
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
    match_frequency: bool = field(
        default=True, metadata={"help": "Match negatives to positives by frequency band as well as by length."}
    )
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
    paraphrase: str = ""  # the same category in other words (SPEC §4's "new descriptions of seen categories")

    def __post_init__(self):
        # JSON turns the pairs into lists; keep one type whether the task was built or read from the cache.
        for split in ("train", "val", "test"):
            setattr(self, split, [(str(word), int(label)) for word, label in getattr(self, split)])

    def to_dataset(self):
        """The task as a ``datasets.DatasetDict`` (train / validation / test; columns ``word`` and ``label``, a
        ``ClassLabel`` no/yes), its description in the dataset info."""
        from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Value

        features = Features({"word": Value("string"), "label": ClassLabel(names=["no", "yes"])})
        info = DatasetInfo(description=self.description, features=features)
        return DatasetDict(
            {
                name: Dataset.from_dict(
                    {"word": [w for w, _ in pairs], "label": [y for _, y in pairs]}, features=features, info=info
                )
                for name, pairs in (("train", self.train), ("validation", self.val), ("test", self.test))
            }
        )


SENSE_TYPES = {"noun": ("1",), "verb": ("2",), "adj": ("3", "5"), "adv": ("4",)}  # adj: head and satellite


def lemma_frequencies(pos: str = "noun") -> dict[str, int]:
    """SemCor tag count of every lemma of part of speech ``pos`` (summed over its senses), read from WordNet's
    ``cntlist.rev``: how familiar a word is."""
    if pos not in SENSE_TYPES:
        raise ValueError(f"pos must be one of {sorted(SENSE_TYPES)}, got {pos!r}.")
    counts: dict[str, int] = {}
    for line in (WORDNET_DIR / "cntlist.rev").read_text(encoding="utf-8").splitlines():
        key, _, count = line.split()
        lemma, sense = key.split("%", 1)
        if sense.startswith(SENSE_TYPES[pos]):
            counts[lemma.lower()] = counts.get(lemma.lower(), 0) + int(count)
    return counts


def frequency_band(count: int) -> int:
    """0 for unseen words, then log₂ bands (1, 2–3, 4–7, …) capped at 5: coarse enough that most bands are
    populated at every word length."""
    return min(count.bit_length(), 5)


def _matched_negatives(
    positives: list[str], pools: dict[tuple[int, int], list[str]], band: dict[str, int], exclude: set[str], rng
) -> list[str]:
    """One negative per positive: a word of the same length and frequency band when there is one, else of the
    nearest length in that band (within 2 characters), else of the nearest length in any band. ``pools`` maps
    (length, band) to words, ``band`` a word to its band; ``exclude`` holds the category's own members."""

    def draw(groups: list[list[str]]) -> str | None:
        total = sum(len(g) for g in groups)
        for _ in range(20):  # rejection sampling: the excluded words are few next to the pools
            i = rng.randrange(total)
            for group in groups:
                if i < len(group):
                    break
                i -= len(group)
            if group[i] not in exclude:
                return group[i]
        allowed = [c for g in groups for c in g if c not in exclude]
        return rng.choice(allowed) if allowed else None

    bands = sorted({b for _, b in pools})
    out = []
    for word in positives:
        searches = [(d, [band.get(word, 0)]) for d in range(3)] + [(d, bands) for d in range(30)]
        for delta, allowed_bands in searches:
            groups = [pools[key] for b in allowed_bands for n in sorted({len(word) - delta, len(word) + delta})
                      if (key := (n, b)) in pools]  # fmt: skip
            choice = draw(groups) if groups else None
            if choice is not None:
                out.append(choice)
                break
    return out


def _paraphrase(synset) -> str:
    """The category in other words: its second lemma when it has one, its hypernym, and a different template."""
    lemmas = [lemma.name().replace("_", " ") for lemma in synset.lemmas()]
    hypernyms = synset.hypernyms() or synset.instance_hypernyms()
    parent = hypernyms[0].lemmas()[0].name().replace("_", " ") if hypernyms else "thing"
    name = lemmas[1] if len(lemmas) > 1 else lemmas[0]
    return f"Answer yes if the word is a type of {name}, a kind of {parent} ({synset.definition()}); otherwise no."


def _hyponym_lemmas(wn, max_size: int) -> dict[str, frozenset[str]]:
    """Every noun synset's single-word hyponym lemmas (its ``closure(hyponyms)``'s, itself excluded) when there are
    at most ``max_size`` of them. Bottom-up: a synset's set is the union of its hyponyms' own lemmas and sets, and
    a synset above a set too large has one too large itself, so no set beyond ``max_size`` is ever built (a walk
    per synset, each through its whole subtree, was most of a WordNet benchmark's start-up)."""
    memo: dict[str, frozenset[str] | None] = {}  # None: more than max_size

    def below(synset) -> frozenset[str] | None:
        name = synset.name()
        if name not in memo:
            members: set[str] | None = set()
            for child in synset.hyponyms():
                under = below(child)
                if under is None:
                    members = None
                    break
                members |= under | _single_word_lemmas([child])
                if len(members) > max_size:
                    members = None
                    break
            memo[name] = None if members is None else frozenset(members)
        return memo[name]

    for synset in wn.all_synsets("n"):
        below(synset)
    return {name: members for name, members in memo.items() if members is not None}


@functools.lru_cache(maxsize=2)
def _categories_and_pools(min_hyponyms: int, max_hyponyms: int, match_frequency: bool):
    """What every split with these category bounds shares, kept for the process (≈15 s to walk WordNet): the
    categories {synset name: its single-word hyponym lemmas}, each noun's frequency band, and the negative pools
    {(length, band): nouns}. Read only."""
    wn = load_wordnet()
    categories = {
        name: members
        for name, members in _hyponym_lemmas(wn, max_hyponyms).items()
        if members and min_hyponyms <= len(members) <= max_hyponyms
    }
    all_nouns = sorted(_single_word_lemmas(wn.all_synsets("n")))
    counts = lemma_frequencies("noun") if match_frequency else {}
    band = {word: frequency_band(counts.get(word, 0)) for word in all_nouns}
    pools: dict[tuple[int, int], list[str]] = {}
    for word in all_nouns:
        pools.setdefault((len(word), band[word]), []).append(word)
    return categories, band, pools


def build_concept_tasks(config: WordNetTaskConfig) -> dict[str, list[ConceptTask]]:
    """{"train": [...], "test": [...]} — deterministic given the config; cached as JSON under the cache root."""
    path = cache_root() / "wordnet_tasks" / f"{stable_hash(config.to_dict())}.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        return {split: [ConceptTask(**t) for t in tasks] for split, tasks in data.items()}
    wn = load_wordnet()
    rng = random.Random(config.seed)
    categories, band, pools = _categories_and_pools(config.min_hyponyms, config.max_hyponyms, config.match_frequency)

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
        neg = _matched_negatives(pos, pools, band, categories[name], rng)
        pairs = [(w, 1) for w in pos], [(w, 0) for w in neg]
        cut = [(0, n_train), (n_train, n_train + n_val), (n_train + n_val, len(pos))]
        splits = [pairs[0][a:b] + pairs[1][a:b] for a, b in cut]
        for s in splits:
            rng.shuffle(s)
        lemma = synset.lemmas()[0].name().replace("_", " ")
        description = f"Does the word name a kind of {lemma} — {synset.definition()}?"
        return ConceptTask(f"{split}-{name}", name, description, *splits, paraphrase=_paraphrase(synset))

    tasks = {"train": [make(n, "train") for n in train], "test": [make(n, "test") for n in heldout]}
    payload = {split: [t.__dict__ for t in items] for split, items in tasks.items()}
    atomic_write_text(path, json.dumps(payload))
    return tasks
