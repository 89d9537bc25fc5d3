"""Generators shipped inside the package, so that a user with no Hub access and no training run can adapt a model.

Each is a normal generator folder (config, scheduler config, half-precision ``model.safetensors``, card) under this
package, resolved by a stable id before the Hub is asked: ``McDiGenerator.from_pretrained("peft-mcdi/wordnet-minilm")``
and ``McDiConfig(generator_name_or_path="peft-mcdi/wordnet-minilm")`` work offline. Any other id goes to the Hub as
usual; a local folder of the same name, or an explicit ``revision``, wins over the shipped copy. They are written by
``scripts/ship_generators.py`` from the benchmark's trained runs, never by hand.
"""

from __future__ import annotations

import os
from pathlib import Path


SHIPPED_GENERATORS = {
    # id → folder under this package; the generator trained by `benchmarks/llm.py --base minilm` (mcdi_functional,
    # seed 0) on 300 WordNet categories
    "peft-mcdi/wordnet-minilm": "wordnet-minilm",
}


def shipped_generator_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The package folder of a shipped generator id, or None for every other name."""
    folder = SHIPPED_GENERATORS.get(str(name_or_path))
    return Path(__file__).parent / folder if folder is not None else None
