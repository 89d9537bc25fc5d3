"""Word-form tasks for causal LMs, built offline from WordNet 3.0: "write the plural of the noun, in brackets".

A task is a word-level **transform** (plural, past tense, ``-ly`` adverb, ``un-`` negation, …) written in an output
**format** (bare, in quotes, in brackets, followed by "!", …): ``dog`` → ``[dogs]``. Both parts are governed by rules,
so a LoRA learns a task from a few dozen examples, while a small base model told the task in words mostly does not
(issue 21: answers that no rule governs, such as irregular plurals, do not generalise from a few examples, so they
are left out). Answers are generated and scored by exact match.

Every pair comes from WordNet: inflections are the regular rule checked against WordNet's own morphology (the form
must reduce to the word, and words with a listed exception are dropped, as are endings whose rule depends on stress
or history: ``-o``, ``-f``, consonant doubling); derived forms (adverbs, ``-ness`` nouns, ``un-`` adjectives) are
WordNet's pertainym, derivation and antonym links. Words are familiar ones (tagged at least once in SemCor), and the
nouns given a plural name physical things (count nouns, not "disarray").

The split is decided before any model runs (:func:`build_wordform_tasks`):

- ``test`` (the held-out split, seen types): (transform, format) combinations that no training task has, while the
  transform and the format each appear in training; their words never occur with that transform in training tasks
  (no shared (transform, word) instance);
- ``test_unseen_type``: every task of transforms that no training task has (``unseen_transforms``), reported under
  its own name.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from peft_mcdi.tasks.wordnet import WORDNET_DIR, lemma_frequencies, load_wordnet
from peft_mcdi.utils import DictConfigMixin, atomic_write_text, cache_root, stable_hash


VOWELS = set("aeiou")


def _ends_cvc(word: str) -> bool:
    """Consonant-vowel-consonant ending (not w/x/y): the final consonant doubles or not depending on stress
    (``stop`` → ``stopped``, ``visit`` → ``visited``), which spelling alone cannot tell."""
    a, b, c = word[-3:]
    return a not in VOWELS and b in VOWELS and c not in VOWELS and c not in "wxy"


def add_s(word: str) -> str | None:
    """Regular ``-s`` form (noun plural, verb third person); None where English has no single rule."""
    if word.endswith(("o", "f", "fe", "us", "is", "man")):  # potatoes/pianos, leaves/roofs, cacti, crises, men
        return None
    if word.endswith("s") and not word.endswith("ss"):  # plural-only nouns ("clothes") and the like
        return None
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in VOWELS:
        return word[:-1] + "ies"
    return word + "s"


def add_ed(word: str) -> str | None:
    """Regular past tense; None where the final consonant may double or the verb ends in ``-c``."""
    if word.endswith("e"):
        return word + "d"
    if word.endswith("y") and word[-2] not in VOWELS:
        return word[:-1] + "ied"
    if word.endswith("c") or _ends_cvc(word):
        return None
    return word + "ed"


def add_ing(word: str) -> str | None:
    """Regular present participle; None where the final consonant may double or the verb ends in ``-c``."""
    if word.endswith("ie"):
        return word[:-2] + "ying"
    if word.endswith(("ee", "ye", "oe")):
        return word + "ing"
    if word.endswith("e"):
        return word[:-1] + "ing"
    if word.endswith("c") or _ends_cvc(word):
        return None
    return word + "ing"


@dataclass(frozen=True)
class Transform:
    """A word-level map: the part of speech it reads, its rule (for inflections, checked against WordNet) or
    WordNet link (for derivations), and ways to say what it writes."""

    pos: str  # "noun", "verb" or "adj"
    phrases: tuple[str, ...]
    rule: Callable[[str], str | None] | None = None  # inflections; None: a WordNet link gives the pairs


@dataclass(frozen=True)
class Format:
    """How the answer is written: ``prefix + form + suffix``, and ways to say so."""

    prefix: str
    suffix: str
    phrases: tuple[str, ...]

    def apply(self, form: str) -> str:
        return f"{self.prefix}{form}{self.suffix}"


TRANSFORMS = {
    "identity": Transform("noun", ("the word itself", "the same word, unchanged", "the word exactly as it is given")),
    "plural": Transform(
        "noun", ("the plural of the noun", "the noun's plural form", "the plural form of the given noun"), add_s
    ),
    "third_person": Transform(
        "verb",
        (
            "the verb's third-person singular present form",
            "the form the verb takes after 'she' in the present tense",
            "the present-tense form of the verb for 'he', 'she' or 'it'",
        ),
        add_s,
    ),
    "past": Transform(
        "verb", ("the past tense of the verb", "the verb's simple past form", "the verb put in the past tense"), add_ed
    ),
    "gerund": Transform(
        "verb",
        ("the -ing form of the verb", "the verb's present participle", "the verb with the ending -ing"),
        add_ing,
    ),
    "adverb": Transform(
        "adj",
        (
            "the adverb made from the adjective",
            "the -ly adverb of the adjective",
            "the adverb that means 'in a ... way' for the adjective",
        ),
    ),
    "ness": Transform(
        "adj",
        (
            "the noun formed from the adjective with -ness",
            "the -ness noun naming the adjective's quality",
            "the abstract noun of the adjective, ending in -ness",
        ),
    ),
    "negation": Transform(
        "adj",
        (
            "the opposite of the adjective formed with the prefix un-",
            "the adjective negated with un-",
            "the un- form of the adjective that means its opposite",
        ),
    ),
}
FORMATS = {
    "plain": Format("", "", ("with nothing around it", "as a bare word", "with no punctuation")),
    "double_quotes": Format('"', '"', ("in double quotes", "wrapped in double quotation marks", 'between "')),
    "single_quotes": Format("'", "'", ("in single quotes", "wrapped in single quotation marks", "between '")),
    "parentheses": Format("(", ")", ("in parentheses", "wrapped in round brackets", "between ( and )")),
    "brackets": Format("[", "]", ("in square brackets", "wrapped in square brackets", "between [ and ]")),
    "angle_brackets": Format("<", ">", ("in angle brackets", "wrapped in angle brackets", "between < and >")),
    "braces": Format("{", "}", ("in curly braces", "wrapped in curly brackets", "between { and }")),
    "asterisks": Format("*", "*", ("between asterisks", "wrapped in asterisks", "with a * on each side")),
    "exclamation": Format("", "!", ("followed by an exclamation mark", "with '!' after it", "ending in '!'")),
}
TEMPLATES = ("Write {t}, {f}.", "Answer with {t}, {f}.", "Given a word, reply with {t}, {f}.")


def description(transform: str, fmt: str, variant: int = 0) -> str:
    """One wording of the task; ``variant`` picks the template and phrases (0 is the task's main description)."""
    t, f = TRANSFORMS[transform].phrases, FORMATS[fmt].phrases
    return TEMPLATES[variant % len(TEMPLATES)].format(t=t[variant // 3 % len(t)], f=f[(variant + 1) // 3 % len(f)])


def _exceptions(pos: str) -> set[str]:
    """Words with an irregular form listed in WordNet's exception file for ``pos``."""
    name = {"noun": "noun", "verb": "verb", "adj": "adj"}[pos]
    return {w for line in (WORDNET_DIR / f"{name}.exc").read_text().splitlines() for w in line.split()[1:]}


def _concrete(wn, noun: str) -> bool:
    """Whether the noun's first (most frequent) sense is a physical thing other than a substance: a proxy for a
    count noun. A plural of "disarray" or "chrome" is a form no model should be asked to write (a probe's errors on
    plural tasks were mostly such mass and abstract nouns)."""
    closure = set(wn.synsets(noun, "n")[0].closure(lambda s: s.hypernyms() + s.instance_hypernyms()))
    mass = {wn.synset("substance.n.01"), wn.synset("matter.n.03")}
    return wn.synset("physical_entity.n.01") in closure and not closure & mass


@functools.lru_cache(maxsize=16)
def transform_pairs(name: str, min_count: int = 1, max_length: int = 10) -> tuple[tuple[str, str], ...]:
    """Sorted (word, form) pairs of a transform: familiar words (SemCor count ≥ ``min_count``), 3 to
    ``max_length`` letters. Kept for the process (seconds per transform)."""
    wn = load_wordnet()
    spec = TRANSFORMS[name]
    wn_pos = {"noun": "n", "verb": "v", "adj": "a"}[spec.pos]
    counts = lemma_frequencies(spec.pos)
    words = {
        w
        for w in wn.all_lemma_names(wn_pos)
        if w.isalpha() and 3 <= len(w) <= max_length and counts.get(w, 0) >= min_count
        and any(lemma.name().islower() for lemma in wn.lemmas(w, wn_pos))  # not only a proper noun ("Paris")
    }  # fmt: skip
    if name == "identity":
        return tuple(sorted((w, w) for w in words))
    if name == "plural":
        words = {w for w in words if _concrete(wn, w)}
    if spec.rule is not None:
        irregular = _exceptions(spec.pos)
        pairs = []
        for word in sorted(words - irregular):
            if set(wn._morphy(word, wn_pos, check_exceptions=False)) - {word}:
                continue  # the word itself reads as an inflected form ("letters"): its form would be a guess
            form = spec.rule(word)
            # the form must reduce to the word under WordNet's own morphology (a check on the rule)
            if form is not None and word in wn._morphy(form, wn_pos, check_exceptions=False):
                pairs.append((word, form))
        return tuple(pairs)
    links = {
        "adverb": lambda lemma: lemma.pertainyms(),
        "ness": lambda lemma: [d for d in lemma.derivationally_related_forms() if d.name().endswith("ness")],
        "negation": lambda lemma: [a for a in lemma.antonyms() if a.name() == "un" + lemma.name()],
    }[name]
    source_pos = "r" if name == "adverb" else "a"  # pertainyms point from the adverb to its adjective
    found = set()
    for synset in wn.all_synsets(source_pos):
        for lemma in synset.lemmas():
            for other in links(lemma):
                pair = (other.name(), lemma.name()) if name == "adverb" else (lemma.name(), other.name())
                if all(p.isalpha() and p.islower() for p in pair):
                    found.add(pair)
    return tuple(sorted((w, f) for w, f in found if w in words and len(f) <= max_length + 4))


@dataclass
class WordFormTaskConfig(DictConfigMixin):
    num_heldout: int = field(default=12, metadata={"help": "Held-out (transform, format) combinations of seen types."})
    max_train: int = field(default=48, metadata={"help": "Training tasks kept."})
    unseen_transforms: tuple[str, ...] = field(
        default=("negation",),
        metadata={"help": "Transforms with no training task: their tasks form the 'test_unseen_type' split."},
    )
    transforms: tuple[str, ...] = field(
        default=tuple(TRANSFORMS), metadata={"help": f"Transforms used, from {sorted(TRANSFORMS)}."}
    )
    formats: tuple[str, ...] = field(default=tuple(FORMATS), metadata={"help": f"Formats, from {sorted(FORMATS)}."})
    heldout_word_fraction: float = field(
        default=0.3, metadata={"help": "Share of each transform's words kept for held-out tasks only."}
    )
    num_train: int = field(default=128, metadata={"help": "Training examples per task."})
    num_val: int = field(default=8, metadata={"help": "Validation examples per task."})
    num_test: int = field(default=40, metadata={"help": "Test examples per task."})
    min_count: int = field(default=1, metadata={"help": "Fewest SemCor tags of a word (familiar words only)."})
    seed: int = field(default=0, metadata={"help": "Seed of the split and of example sampling."})

    def __post_init__(self) -> None:
        self.unseen_transforms, self.transforms, self.formats = (
            tuple(self.unseen_transforms),
            tuple(self.transforms),
            tuple(self.formats),
        )  # JSON gives lists
        for name, values, known in (
            ("transforms", self.transforms, TRANSFORMS),
            ("unseen_transforms", self.unseen_transforms, TRANSFORMS),
            ("formats", self.formats, FORMATS),
        ):
            unknown = sorted(set(values) - set(known))
            if unknown:
                raise ValueError(f"{name} has unknown entries {unknown}; valid: {sorted(known)}.")
        if not set(self.unseen_transforms) <= set(self.transforms):
            raise ValueError(f"unseen_transforms {self.unseen_transforms} must be among transforms {self.transforms}.")
        if not 0 < self.heldout_word_fraction < 1:
            raise ValueError(f"heldout_word_fraction must be in (0, 1), got {self.heldout_word_fraction}.")


@dataclass
class WordFormTask:
    """One task: examples are (word, answer) pairs, the answer being the formatted form of the word."""

    task_id: str
    transform: str
    format: str
    description: str
    paraphrases: list[str]
    train: list[tuple[str, str]]
    val: list[tuple[str, str]]
    test: list[tuple[str, str]]

    def __post_init__(self):
        for split in ("train", "val", "test"):  # JSON turns the pairs into lists
            setattr(self, split, [(str(w), str(a)) for w, a in getattr(self, split)])

    @property
    def paraphrase(self) -> str:
        """The task in other words (the benchmark's new descriptions of seen tasks)."""
        return self.paraphrases[0]


def _heldout_combinations(transforms: list[str], formats: list[str], n: int, rng: random.Random) -> set:
    """``n`` (transform, format) combinations to hold out, spread over transforms and formats so that every one of
    them keeps at least two training tasks."""
    combos = [(t, f) for t in transforms for f in formats]
    rng.shuffle(combos)
    per_transform, per_format = -(-n // len(transforms)), -(-n // len(formats))
    held: set = set()
    for t, f in combos:
        if len(held) == n:
            break
        left_t = sum(1 for x in formats if (t, x) not in held) - 1
        left_f = sum(1 for x in transforms if (x, f) not in held) - 1
        if (
            sum(1 for x, _ in held if x == t) < per_transform
            and sum(1 for _, y in held if y == f) < per_format
            and min(left_t, left_f) >= 2
        ):
            held.add((t, f))
    if len(held) < n:
        raise ValueError(
            f"cannot hold out {n} combinations of {len(transforms)} transforms × {len(formats)} formats while "
            "every transform and format keeps two training tasks; lower num_heldout."
        )
    return held


def build_wordform_tasks(config: WordFormTaskConfig) -> dict[str, list[WordFormTask]]:
    """{"train", "test", "test_unseen_type"} task lists — deterministic given the config; cached as JSON under the
    cache root."""
    path = cache_root() / "wordform_tasks" / f"{stable_hash(config.to_dict())}.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        return {split: [WordFormTask(**t) for t in tasks] for split, tasks in data.items()}
    rng = random.Random(config.seed)
    seen = [t for t in config.transforms if t not in config.unseen_transforms]
    held = _heldout_combinations(seen, list(config.formats), config.num_heldout, rng)
    train_combos = [(t, f) for t in seen for f in config.formats if (t, f) not in held]
    rng.shuffle(train_combos)
    splits = {
        "train": sorted(train_combos[: config.max_train]),
        "test": sorted(held),
        "test_unseen_type": [(t, f) for t in config.unseen_transforms for f in config.formats],
    }
    per_task = config.num_train + config.num_val + config.num_test
    pools = {}  # transform → {"train": pairs, "test": pairs}: held-out tasks never see a training task's words
    for name in config.transforms:
        pairs = list(transform_pairs(name, config.min_count))
        rng.shuffle(pairs)
        cut = round(len(pairs) * config.heldout_word_fraction)
        pools[name] = {"train": pairs[cut:], "test": pairs[:cut]} if name in seen else {"test": pairs}
        for part, items in pools[name].items():
            if len(items) < per_task:
                raise ValueError(
                    f"transform {name!r} has {len(items)} {part} words, fewer than a task's {per_task} examples; "
                    "lower num_train/num_val/num_test or min_count."
                )

    def make(transform: str, fmt: str, split: str) -> WordFormTask:
        pool = pools[transform]["train" if split == "train" else "test"]
        chosen = rng.sample(pool, per_task)
        examples = [(w, FORMATS[fmt].apply(form)) for w, form in chosen]
        a, b = config.num_train, config.num_train + config.num_val
        return WordFormTask(
            f"{split}-{transform}-{fmt}",
            transform,
            fmt,
            description(transform, fmt),
            [description(transform, fmt, v) for v in range(1, 4)],
            examples[:a],
            examples[a:b],
            examples[b:],
        )

    tasks = {split: [make(t, f, split) for t, f in combos] for split, combos in splits.items()}
    payload = {split: [t.__dict__ for t in items] for split, items in tasks.items()}
    atomic_write_text(path, json.dumps(payload))
    return tasks
