"""Generators shipped inside the package, so that a user with no Hub access and no training run can adapt a model.

Each is a normal generator folder (config, scheduler config, half-precision ``model.safetensors``, card) under this
package, resolved by a stable id before the Hub is asked: ``McDiGenerator.from_pretrained("peft-mcdi/wordnet-minilm")``
and ``McDiConfig(generator_name_or_path="peft-mcdi/wordnet-minilm")`` work offline. Any other id goes to the Hub as
usual; a local folder of the same name, or an explicit ``revision``, wins over the shipped copy. They are written by
``scripts/ship_generators.py`` from the benchmark's trained runs, never by hand. Head generators also carry their
feature extractor (``McDiHeadModel.from_generator``) and a few held-out episodes to try them on
(:func:`example_episode`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file


SHIPPED_GENERATORS = {
    # id → folder under this package; the generator trained by `benchmarks/llm.py --base minilm` (mcdi_functional,
    # seed 0) on 300 WordNet categories
    "peft-mcdi/wordnet-minilm": "wordnet-minilm",
    # heads for Conv-4 on glyphs: `benchmarks/vision.py --suite fewshot`, mcdi_functional, seed 0
    "peft-mcdi/glyphs-conv4": "glyphs-conv4",
    # heads for EfficientNet-Lite0 on new image domains: `benchmarks/vision.py --suite transfer`, mcdi, seed 0
    "peft-mcdi/transfer-efficientnet-lite0": "transfer-efficientnet-lite0",
}
EXAMPLES_NAME = "examples.safetensors"  # held-out episodes of raw images beside a head generator


def shipped_generator_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The package folder of a shipped generator id, or None for every other name."""
    folder = SHIPPED_GENERATORS.get(str(name_or_path))
    return Path(__file__).parent / folder if folder is not None else None


def example_episode(name: str, index: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Held-out episode ``index`` shipped with head generator ``name``, as raw images: ``(support_images,
    support_labels, query_images, query_labels)``, images uint8 (n, H, W), labels in 0..N−1. Its classes were never
    among the generator's training classes; the generator's card records its accuracy on each."""
    folder = shipped_generator_folder(name)
    if folder is None or not (folder / EXAMPLES_NAME).is_file():
        with_examples = sorted(
            n for n in SHIPPED_GENERATORS if (shipped_generator_folder(n) / EXAMPLES_NAME).is_file()
        )
        raise ValueError(f"{name!r} ships no example episodes; these do: {with_examples}.")
    episodes = load_file(folder / EXAMPLES_NAME)
    count = episodes["support_images"].shape[0]
    if not 0 <= index < count:
        raise ValueError(f"{name!r} ships {count} example episodes; index must be in [0, {count}), got {index}.")
    keys = ("support_images", "support_labels", "query_images", "query_labels")
    return tuple(episodes[k][index] for k in keys)
