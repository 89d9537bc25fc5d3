"""Export a generated adapter as a plain LoRA adapter: vanilla peft (and vLLM) load it without ``peft_mcdi``."""

from __future__ import annotations

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
    """Write ``adapter_name`` to ``save_directory`` as ``adapter_config.json`` (``peft_type: LORA``) and
    ``adapter_model.safetensors`` with the LoRA keys peft itself would write, and a model card that keeps the
    provenance. Returns the folder."""
    config = model.peft_config.get(adapter_name)
    if config is None:
        raise ValueError(f"no adapter named {adapter_name!r}; the model has {list(model.peft_config)}.")
    if config.peft_type != PeftType.MCDI:
        raise ValueError(f"adapter {adapter_name!r} is {config.peft_type}, not MCDI: save it with save_pretrained().")
    mcdi_only = {f.name for f in fields(McDiConfig)} - {f.name for f in fields(LoraConfig)}
    lora_fields = {f.name for f in fields(LoraConfig) if f.init and f.name != "peft_type"}
    lora_config = LoraConfig(**{k: getattr(config, k) for k in lora_fields if k not in mcdi_only})
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    lora_config.save_pretrained(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(folder / "adapter_model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_adapter_card(folder, config, exported_as_lora=True)
    return folder
