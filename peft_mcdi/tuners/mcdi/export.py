"""Export a generated adapter as a plain LoRA adapter: vanilla peft (and vLLM) load it without ``peft_mcdi``."""

from __future__ import annotations

import copy
import os
from dataclasses import fields
from pathlib import Path

from peft import LoraConfig, PeftModel
from peft.utils import PeftType, get_peft_model_state_dict
from safetensors.torch import save_file

from peft_mcdi.generator.card import write_adapter_card
from peft_mcdi.tuners.mcdi.config import McDiConfig
from peft_mcdi.utils import atomic_write


def export_lora(model: PeftModel, save_directory: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Write ``adapter_name`` to ``save_directory`` as peft's ``save_pretrained`` writes the same LoRA adapter:
    ``adapter_config.json`` (``peft_type: LORA``, ``inference_mode: true``, the base's ``base_model_name_or_path``
    and ``revision``, and, for an adapter without ``task_type``, the ``auto_mapping`` that lets ``AutoPeftModel``
    find the base class) and ``adapter_model.safetensors`` with the same keys, plus a model card that keeps the
    provenance. Returns the folder."""
    config = model.peft_config.get(adapter_name)
    if config is None:
        raise ValueError(f"no adapter named {adapter_name!r}; the model has {list(model.peft_config)}.")
    if config.peft_type != PeftType.MCDI:
        raise ValueError(f"adapter {adapter_name!r} is {config.peft_type}, not MCDI: save it with save_pretrained().")
    mcdi_only = {f.name for f in fields(McDiConfig)} - {f.name for f in fields(LoraConfig)}
    lora_fields = {f.name for f in fields(LoraConfig) if f.init and f.name != "peft_type"}
    lora_config = LoraConfig(**{k: getattr(config, k) for k in lora_fields if k not in mcdi_only})
    # What PeftModel.save_pretrained does to the config it writes (peft/peft_model.py).
    if lora_config.base_model_name_or_path is None:
        lora_config.base_model_name_or_path = model.base_model.model.__dict__.get("name_or_path", None) or None
    lora_config.inference_mode = True
    auto_mapping = None
    if lora_config.task_type is None:
        base_class = model._get_base_model_class(is_prompt_tuning=False)
        auto_mapping = {"base_model_class": base_class.__name__, "parent_library": base_class.__module__}
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    lora_config.save_pretrained(folder, auto_mapping_dict=auto_mapping)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(folder / "adapter_model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    card_config = copy.copy(config)  # the card names the base as the config file does
    card_config.base_model_name_or_path = lora_config.base_model_name_or_path
    write_adapter_card(folder, card_config, exported_as_lora=True)
    return folder
