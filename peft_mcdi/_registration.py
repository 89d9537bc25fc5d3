"""Register the MCDI method with peft, idempotently (importing or reloading twice is harmless).

peft's ``register_peft_method`` accepts only names already in the ``PeftType`` enum, so the enum is extended first.
It also insists that every method has its own parameter prefix, but MCDI's layers *are* LoRA layers (prefix
``lora_``: that is what keeps merging, mixed batches and quantized bases working), so the mappings that
``register_peft_method`` would fill are filled here directly, with the same effect.
"""

from __future__ import annotations

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import PeftType


MCDI = "MCDI"


def extend_peft_type_enum(name: str = MCDI) -> PeftType:
    """Add ``PeftType.<name>`` (value ``name``) unless it exists; returns the member."""
    if name in PeftType._member_map_:
        return PeftType._member_map_[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member


def register() -> None:
    from peft_mcdi.tuners.mcdi import McDiConfig, McDiModel

    peft_type = extend_peft_type_enum()
    PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = McDiConfig
    PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = McDiModel
    PEFT_TYPE_TO_PREFIX_MAPPING[peft_type] = McDiModel.prefix
